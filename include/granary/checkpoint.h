// granary/checkpoint.h: asynchronous, crash-safe, verified checkpoints of tensor state.
//
// A Checkpointer saves the tensors of a training job (model weights, optimizer state) under a
// checkpoint root in any ObjectStore, in the format of docs/formats/checkpoint.md:
//
//   * Save returns once every tensor has been copied into host staging memory; a native thread
//     then checksums the bytes, writes them with large aligned O_DIRECT writes and publishes the
//     step. Changing or freeing the tensors after the last Stage call cannot change what is saved.
//   * A step becomes visible only when its COMMIT object is created, after every rank's data and
//     manifest are durable. A save killed at any moment leaves the previous step as the newest.
//   * Every 4 MiB chunk carries a crc32c and every tensor an XXH3-128; loads check them as bytes
//     arrive and fail with DataLoss naming the tensor and file.
//   * Incremental: a tensor whose bytes hash equal to the previous step's is not written again;
//     the manifest points at the earlier bytes and retention keeps them alive.
//   * Staging memory is one pre-faulted ring reused across saves, capped by budget_bytes; a state
//     larger than the budget streams through it (Stage blocks only while the ring is full).
//
// Saving is a three-call protocol so that bindings can copy tensors however they need to:
//   auto session = ckpt->BeginSave(step, specs, metadata_json);   // waits or skips if busy
//   for each tensor i, in order: session->CopyIn(i, host_bytes)   // or Reserve/Commit pieces
//   std::shared_ptr<SaveHandle> handle = session->Finish();       // returns at once
//   handle->Wait();                                               // durable and committed
//
// Thread safety: Checkpointer methods are thread-safe; a SaveSession belongs to one thread;
// SaveHandle methods are thread-safe. One save persists at a time per Checkpointer, so Finish or
// destroy a session before starting another save (IfBusy::kWait would wait for it forever) and
// before destroying the Checkpointer.
#ifndef GRANARY_CHECKPOINT_H_
#define GRANARY_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "granary/status.h"
#include "granary/store.h"

namespace granary {

// What BeginSave does while the previous save is still persisting.
enum class IfBusy {
  kWait,  // block until the previous save is durable (or failed)
  kSkip,  // return a session whose handle reports Skipped(); nothing is saved
};

struct CheckpointerOptions {
  // Committed steps to keep (the newest N); 0 keeps every step. Default: 3.
  uint32_t keep_last = 3;
  // Also keep every step divisible by this; 0: off. Default: 0.
  uint64_t keep_every = 0;
  // Staging memory cap in bytes. 0: the ring grows to hold a whole state, so Finish returns after
  // one copy (host memory then holds a second copy of the state, reused across saves). A state
  // larger than the budget streams through it. At least 16 MiB when set. Default: 0.
  uint64_t budget_bytes = 0;
  // Skip writing tensors whose content equals the previous step's. Default: true.
  bool incremental = true;
  IfBusy if_busy = IfBusy::kWait;
  // This process's rank and the number of ranks. Each rank writes its own files; rank 0 publishes
  // COMMIT once every rank's manifest of the same save_id is durable. Default: 0 of 1.
  uint32_t rank = 0;
  uint32_t world_size = 1;
  // Rank 0 waits at most this long for the other ranks' manifests. Default: 1800 s.
  uint32_t commit_timeout_s = 1800;
  // A data file is closed once it holds this many bytes. Default: 1 GiB.
  uint64_t data_file_bytes = 1ULL << 30;
  // Run retention (garbage collection) after each commit. Default: true.
  bool collect_garbage = true;
  // Nice value of the persister thread (checksums, hashing, submitting writes), so that a
  // training loop's threads win the CPU while a save persists: with busy cores a save then takes
  // longer to become durable instead of slowing the steps; on idle cores it changes nothing.
  // 0 keeps normal priority. Default: 19.
  int persist_nice = 19;
  Status Validate() const;
};

// One tensor of a save: its identity; bytes come through the SaveSession.
struct TensorSpec {
  std::string name;                      // unique within the save
  std::string dtype;                     // torch dtype name: "float32", "bfloat16", ...
  std::vector<uint64_t> shape;
  std::vector<uint64_t> global_shape;    // optional sharding: the full tensor's shape
  std::vector<uint64_t> global_offset;   // and where this rank's shard starts in it
};

struct SaveStats {
  uint64_t step = 0;
  uint64_t tensors = 0;
  uint64_t tensors_reused = 0;   // incremental: unchanged tensors pointing at earlier bytes
  uint64_t bytes_total = 0;      // logical bytes of every tensor
  uint64_t bytes_written = 0;    // tensor bytes written by this save
  double stall_s = 0;            // BeginSave .. Finish (the caller's wait)
  double persist_s = 0;          // Finish .. durable and committed
  bool skipped = false;
};

// The outcome of one save. Thread-safe; shared by the session, the persister and the caller.
class SaveHandle {
 public:
  virtual ~SaveHandle() = default;
  // Blocks until the save is committed (OK), failed (the error, naming step and file) or
  // skipped (OK, Skipped() true).
  virtual Status Wait() = 0;
  virtual bool Done() const = 0;
  virtual bool Skipped() const = 0;
  virtual uint64_t step() const = 0;
  // Meaningful once Done().
  virtual SaveStats stats() const = 0;
};

// Stages the tensors of one save, in the order of the specs given to BeginSave. Not thread-safe.
// Destroying a session before Finish abandons the save (its handle reports Cancelled).
class SaveSession {
 public:
  virtual ~SaveSession() = default;
  // The handle of this save (also valid before Finish).
  virtual std::shared_ptr<SaveHandle> handle() const = 0;
  // True when the save was skipped (IfBusy::kSkip): stage nothing, call Finish.
  virtual bool skipped() const = 0;
  // Largest piece Reserve hands out; tensors above it are staged in several pieces.
  virtual uint64_t max_piece_bytes() const = 0;
  // Copies tensor `index`'s contiguous bytes (product(shape) x element size of them) into
  // staging, blocking while the ring is full. Tensors must be staged in index order.
  // InvalidArgument for an out-of-order index or a wrong size.
  virtual Status CopyIn(size_t index, std::span<const std::byte> bytes) = 0;
  // CopyIn for consecutive tensors at once: small tensors are copied by several threads together
  // (the whole stall of a state of many small tensors). Same rules and errors as CopyIn; all
  // sources are checked before anything is staged.
  struct CopySource {
    size_t index = 0;
    std::span<const std::byte> bytes;
  };
  virtual Status CopyInMany(std::span<const CopySource> sources) = 0;
  // Piecewise staging for callers that copy themselves (strided or device tensors): returns the
  // staging memory for bytes [offset, offset + n) of tensor `index`, n = min(max_piece_bytes,
  // remaining); fill it, then call CommitPiece. Pieces go in order.
  virtual Result<std::span<std::byte>> ReservePiece(size_t index, uint64_t offset) = 0;
  virtual Status CommitPiece() = 0;
  // Ends staging; every tensor must have been staged. The save then persists in the background.
  virtual Result<std::shared_ptr<SaveHandle>> Finish() = 0;
};

// A committed step's tensors, as a loader needs them.
struct StoredTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<uint64_t> global_shape;
  std::vector<uint64_t> global_offset;
  uint64_t length = 0;            // bytes
};

struct StepInfo {
  uint64_t step = 0;
  uint32_t world_size = 1;
  std::string user_metadata_json;  // this rank's manifest metadata
  std::vector<StoredTensor> tensors;  // this rank's tensors, in save order
};

// One tensor to restore into caller memory of exactly `length` bytes.
struct LoadTarget {
  std::string name;
  std::span<std::byte> dest;
};

class Checkpointer {
 public:
  // Opens the checkpoint root `url` (file:///dir, a path, mem://name; the store root is the
  // checkpoint root). Removes nothing at open; leftovers of crashed saves go at the next GC.
  static Result<std::unique_ptr<Checkpointer>> Open(std::string_view url,
                                                    const CheckpointerOptions& options = {});
  // Over an existing store (shared, kept alive) under key prefix `root` ("" for the store root).
  static Result<std::unique_ptr<Checkpointer>> Open(std::shared_ptr<ObjectStore> store,
                                                    std::string root,
                                                    const CheckpointerOptions& options = {});
  // Waits for the save in flight (its outcome stays on its handle) and stops the persister.
  virtual ~Checkpointer() = default;

  // Starts the save of `step` (0 .. 999999999999) with `tensors` in staging order and a JSON
  // object of user metadata stored in the manifest. With IfBusy::kWait blocks until the previous
  // save is durable. `save_id` identifies the save across ranks (world_size > 1: every rank must
  // pass the same value; default "<step>"). InvalidArgument (naming the tensor) for a duplicate
  // name, unknown dtype or bad shape; FailedPrecondition if `step` is not above every committed
  // step.
  virtual Result<std::unique_ptr<SaveSession>> BeginSave(uint64_t step,
                                                         std::vector<TensorSpec> tensors,
                                                         std::string user_metadata_json = "{}",
                                                         std::string save_id = "") = 0;
  // Waits until no save is persisting; returns the last save's outcome.
  virtual Status WaitAll() = 0;

  // Committed steps, ascending; the newest committed step (NotFound if none).
  virtual Result<std::vector<uint64_t>> Steps() = 0;
  virtual Result<uint64_t> Latest() = 0;
  // This rank's manifest of a committed step: tensors and metadata. NotFound if not committed;
  // DataLoss naming the key if COMMIT or the manifest is damaged.
  virtual Result<StepInfo> Describe(uint64_t step) = 0;
  // Reads this rank's tensors `targets` of `step` straight into their destinations (parallel,
  // O_DIRECT where aligned), checking every chunk's crc32c. NotFound naming a tensor the step
  // does not hold; InvalidArgument naming the tensor if a destination's size differs; DataLoss
  // naming the tensor and data file on a checksum mismatch or a truncated file.
  virtual Status Load(uint64_t step, std::span<const LoadTarget> targets) = 0;
  // Re-reads every tensor of every rank of `step` and checks every checksum (crc32c and
  // XXH3-128). DataLoss naming the first damaged tensor and file (and how many are damaged).
  virtual Status Verify(uint64_t step) = 0;
  // Runs retention now (see docs/formats/checkpoint.md); the save in flight is protected.
  virtual Status CollectGarbage() = 0;

  virtual std::string url() const = 0;
  virtual const CheckpointerOptions& options() const = 0;
};

}  // namespace granary

#endif  // GRANARY_CHECKPOINT_H_
