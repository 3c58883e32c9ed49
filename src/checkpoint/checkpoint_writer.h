// Writing one step of a checkpoint through any ObjectStore, following the commit protocol of
// docs/formats/checkpoint.md: every rank packs its tensors into data files (RankWriter, each file
// durable at its Commit), then writes its manifest (WriteManifest), then one process publishes
// the step's COMMIT with PutIfAbsent (PublishCommit) and optionally the `latest` hint.
// Nothing of a step is visible to readers until its COMMIT exists.
#ifndef GRANARY_CHECKPOINT_CHECKPOINT_WRITER_H_
#define GRANARY_CHECKPOINT_CHECKPOINT_WRITER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "checkpoint/checkpoint_format.h"
#include "checkpoint/checkpoint_manifest.h"
#include "granary/store.h"

namespace granary::checkpoint {

struct RankWriterOptions {
  // A data file is committed and the next begun once it holds at least this many bytes.
  // Default: kDefaultDataFileBytes (1 GiB).
  uint64_t data_file_bytes = kDefaultDataFileBytes;
  // Tensors of at least this many bytes start at a multiple of kLargeAlignBytes (4 KiB); smaller
  // ones are packed at multiples of kSmallAlignBytes. Default: 64 KiB.
  uint64_t align_threshold_bytes = kDefaultAlignThresholdBytes;
  // Checksum chunk size, 1..kMaxChunkBytes. Default: 4 MiB.
  uint64_t chunk_bytes = kDefaultChunkBytes;
  // Passed to ObjectStore::NewWriter for each data file. Default: the store's defaults.
  WriterOptions writer;
  Status Validate() const;
};

// One tensor to save: contiguous row-major bytes owned by the caller, valid during Add().
struct TensorData {
  std::string name;
  std::string dtype;  // torch dtype name ("float32", "bfloat16", ...)
  std::vector<uint64_t> shape;
  std::vector<uint64_t> global_shape;   // optional sharding info, see TensorEntry
  std::vector<uint64_t> global_offset;
  std::span<const std::byte> bytes;     // size must equal product(shape) * element bytes
};

// Packs one rank's tensors of one step into data files "<root>/step-S/rank-R.data-NNNNN" and
// builds the rank's manifest. Bytes are checksummed (crc32c per chunk, XXH3-128 per tensor) as
// they are appended. Not thread-safe: one thread drives a RankWriter.
// After any error the writer is failed and every later call returns that error; data files
// already committed stay behind as garbage for retention to collect (they are unreferenced).
class RankWriter {
 public:
  // `store` must outlive the writer. `root` is the checkpoint's key prefix ("" for the store
  // root). InvalidArgument for a bad step/rank/world_size/options.
  static Result<std::unique_ptr<RankWriter>> Create(ObjectStore* store, std::string root,
                                                    uint64_t step, uint32_t rank,
                                                    uint32_t world_size,
                                                    const RankWriterOptions& options = {});
  ~RankWriter();
  RankWriter(const RankWriter&) = delete;
  RankWriter& operator=(const RankWriter&) = delete;

  // Appends `tensor` to the current data file. InvalidArgument (naming the tensor) for a
  // duplicate name, unknown dtype or a size that does not match shape and dtype; store errors
  // name the data file.
  Status Add(const TensorData& tensor);
  // Streaming form of Add for bytes that arrive in pieces with checksums computed by the caller:
  // BeginTensor (the metadata of `tensor`, whose `bytes` is ignored, and its total length), then
  // AppendBorrowed for each piece in order (the writer reads it in the background and calls
  // `release` when done, see ObjectWriter::AppendBorrowed; a null `release` copies the piece
  // before returning), then EndTensor with the crc32c of
  // every chunk_bytes chunk and the XXH3-128 of all bytes. Errors as for Add; EndTensor fails
  // with InvalidArgument if fewer or more bytes than announced were appended.
  Status BeginTensor(const TensorData& tensor, uint64_t length);
  Status AppendBorrowed(std::span<const std::byte> piece, std::function<void()> release);
  Status EndTensor(std::vector<uint32_t> chunk_crc32c, Hash128 xxh3);
  // Records a tensor whose bytes already live in an earlier step's data file (incremental
  // save): the entry is copied into the manifest unchanged after validation.
  Status AddExisting(const TensorEntry& entry);
  // Sets the manifest's user metadata; must be a JSON object text. Default "{}".
  Status SetUserMetadata(std::string json_object);
  // Commits the open data file (durable when this returns) and returns the manifest, which the
  // caller then persists with WriteManifest. The writer accepts nothing afterwards.
  Result<RankManifest> Finish();

 private:
  RankWriter(ObjectStore* store, std::string root, const RankWriterOptions& options);
  Status OpenNextFile();
  Status Pad(uint64_t alignment);
  Status Fail(Status s);

  ObjectStore* store_;
  std::string root_;
  RankWriterOptions options_;
  RankManifest manifest_;
  std::unordered_set<std::string> names_;
  std::unique_ptr<ObjectWriter> file_;  // open data file, or null
  std::string file_key_;                // its key relative to root
  uint32_t next_file_index_ = 0;
  bool finished_ = false;
  std::optional<TensorEntry> open_tensor_;  // between BeginTensor and EndTensor
  uint64_t open_appended_ = 0;               // bytes appended to open_tensor_
  Status status_;                       // first error; sticky
};

// Encodes `manifest` and Puts it at "<root>/step-S/rank-R.manifest" (durable on return).
// Returns what COMMIT must record about it.
Result<ManifestRef> WriteManifest(ObjectStore& store, std::string_view root,
                                  const RankManifest& manifest);

// Publishes step `step` by creating "<root>/step-S/COMMIT" with PutIfAbsent. `refs` must hold
// exactly one entry per rank of `world_size` (any order). AlreadyExists (naming the key) if the
// step was already committed; InvalidArgument for malformed refs. Call only after every rank's
// data files and manifest are durable.
Status PublishCommit(ObjectStore& store, std::string_view root, uint64_t step,
                     uint32_t world_size, std::vector<ManifestRef> refs);

// Single-process convenience: WriteManifest for each of `manifests` (one per rank, all of the
// same step), then PublishCommit. Returns the published record.
Result<CommitRecord> CommitStep(ObjectStore& store, std::string_view root,
                                std::span<const RankManifest> manifests);

// Puts the `latest` hint naming `step`. Readers never trust it without checking the COMMIT.
Status WriteLatest(ObjectStore& store, std::string_view root, uint64_t step);

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_CHECKPOINT_WRITER_H_
