// Reading committed checkpoints through any ObjectStore (docs/formats/checkpoint.md). Only steps
// with a valid COMMIT exist for these functions. All functions are thread-safe (they only read).
#ifndef GRANARY_CHECKPOINT_CHECKPOINT_READER_H_
#define GRANARY_CHECKPOINT_CHECKPOINT_READER_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "checkpoint/checkpoint_manifest.h"
#include "granary/store.h"

namespace granary::checkpoint {

// Steps under `root` whose COMMIT exists and decodes, ascending. Steps with a missing or
// damaged COMMIT are skipped (invisible). Store errors are returned.
Result<std::vector<uint64_t>> ListCommittedSteps(ObjectStore& store, std::string_view root);

// The decoded COMMIT of `step`. NotFound if the step is not committed; DataLoss if damaged.
Result<CommitRecord> ReadCommit(ObjectStore& store, std::string_view root, uint64_t step);

// The newest committed step: the `latest` hint if it names a step with a valid COMMIT,
// otherwise the largest ListCommittedSteps entry. NotFound if there is none.
Result<uint64_t> ReadLatestStep(ObjectStore& store, std::string_view root);

// Loads rank `rank`'s manifest of a committed step, checking its length and crc32c against the
// COMMIT record before decoding. DataLoss naming the key on any mismatch.
Result<RankManifest> ReadManifest(ObjectStore& store, std::string_view root,
                                  const CommitRecord& commit, uint32_t rank);

// One tensor to restore into caller memory of exactly entry->length bytes.
struct TensorRead {
  const TensorEntry* entry = nullptr;
  std::span<std::byte> dest;
};

// Reads every tensor of `reads` into its destination through RestoreTensors (tensor_restore.h:
// aligned O_DIRECT blocks, crc32c checked as the bytes arrive), and with `verify_hash` also each
// tensor's XXH3-128. InvalidArgument if a dest has the wrong size; DataLoss naming the tensor and the
// data file key on a mismatch or short object; the first failing read's error otherwise.
// dest contents are unspecified after an error.
Status ReadTensors(ObjectStore& store, std::string_view root, const RankManifest& manifest,
                   std::span<const TensorRead> reads, bool verify_hash = false);

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_CHECKPOINT_READER_H_
