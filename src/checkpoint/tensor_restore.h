// RestoreTensors: the checkpointer's restore path. Reads the data files in large aligned blocks
// (so a LocalStore serves them with O_DIRECT at the device's sequential speed, whatever the
// tensors' sizes and whatever the alignment of their destinations: torch allocates tensors only
// 64-byte aligned) into reusable block buffers, then scatters each block into the destination
// tensors while extending every chunk's crc32c, so checksums are checked as the bytes arrive.
// Thread-safe as long as callers use different BufferPools or the pool has room for both.
#ifndef GRANARY_CHECKPOINT_TENSOR_RESTORE_H_
#define GRANARY_CHECKPOINT_TENSOR_RESTORE_H_

#include <span>
#include <string_view>

#include "checkpoint/checkpoint_reader.h"
#include "granary/io.h"
#include "granary/store.h"

namespace granary::checkpoint {

// Size of a block read; the buffers of `blocks` must be at least this large.
inline constexpr size_t kRestoreBlockBytes = 4u << 20;
// Blocks per GetMany batch; two batches are in flight, so `blocks` should lend 2x this.
inline constexpr size_t kRestoreBlocksPerBatch = 16;

// Reads every tensor of `reads` (all of `manifest`) into its destination. Errors as ReadTensors:
// InvalidArgument for a destination of the wrong size; DataLoss naming the tensor and data file
// for a crc32c mismatch or a truncated file; the store's error (with the tensor named) for a
// failed read. `blocks` lends the block buffers (buffer_bytes >= kRestoreBlockBytes). Destination
// contents are unspecified after an error.
Status RestoreTensors(ObjectStore& store, std::string_view root, const RankManifest& manifest,
                      std::span<const TensorRead> reads, BufferPool& blocks);

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_TENSOR_RESTORE_H_
