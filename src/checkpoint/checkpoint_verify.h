// Full verification of a committed checkpoint step: re-reads every byte of every tensor of
// every rank in bounded memory and checks each chunk's crc32c and each tensor's XXH3-128.
// Thread-safe (only reads the store).
#ifndef GRANARY_CHECKPOINT_CHECKPOINT_VERIFY_H_
#define GRANARY_CHECKPOINT_CHECKPOINT_VERIFY_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "granary/status.h"
#include "granary/store.h"

namespace granary::checkpoint {

// One damaged tensor.
struct VerifyProblem {
  uint32_t rank = 0;
  std::string tensor;    // tensor name
  std::string data_key;  // full store key of the data file holding it
  std::string message;   // what is wrong ("crc32c mismatch in chunk 3 (bytes ...)", ...)
};

struct VerifyReport {
  uint64_t step = 0;
  uint32_t world_size = 0;
  uint64_t tensors = 0;  // tensors checked, over all ranks
  uint64_t bytes = 0;    // tensor bytes read, over all ranks
  std::vector<VerifyProblem> problems;  // in rank, then manifest order; empty when clean

  bool ok() const { return problems.empty(); }
  // OK when clean; otherwise DataLoss naming the step, the number of damaged tensors and the
  // first one's tensor, data file key and message.
  Status ToStatus() const;
};

// Verifies committed `step` under `root`. Reads COMMIT, each rank's manifest (checked against
// COMMIT), then every tensor, in batches of at most `buffer_bytes` held in one reused aligned
// buffer (raised to the manifest's chunk_bytes if smaller); a tensor larger than the buffer is
// read in pieces of whole checksum chunks. Damaged tensors (crc32c or XXH3-128 mismatch, a
// truncated or missing data file) are recorded in `problems` and verification continues.
// Errors: NotFound if the step is not committed; DataLoss naming the key if COMMIT or a
// manifest is damaged; InvalidArgument if buffer_bytes is 0; other store errors (I/O,
// Unavailable) that prevent verifying.
Result<VerifyReport> VerifyStep(ObjectStore& store, std::string_view root, uint64_t step,
                                size_t buffer_bytes = size_t{64} << 20);

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_CHECKPOINT_VERIFY_H_
