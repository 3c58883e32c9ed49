// StagingRing: the checkpointer's host staging memory. One pre-faulted, 4 KiB-aligned buffer
// used as a FIFO ring of regions: the snapshot side allocates regions in order (blocking while
// the ring is full), the persist side frees them in any order once their bytes are on disk, and
// space is reclaimed from the oldest region as soon as it is free. Reused across saves, so only
// the first save pays for faulting the memory in.
//
// Thread-safe.
#ifndef GRANARY_CHECKPOINT_STAGING_RING_H_
#define GRANARY_CHECKPOINT_STAGING_RING_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>

#include "granary/io.h"
#include "granary/status.h"

namespace granary::checkpoint {

class StagingRing {
 public:
  struct Region {
    uint64_t id = 0;
    std::span<std::byte> bytes;  // 4 KiB-aligned start
  };

  // A ring of `capacity_bytes` (rounded up to 4 KiB), allocated and pre-faulted now.
  // ResourceExhausted if the memory cannot be had.
  static Result<std::unique_ptr<StagingRing>> Create(uint64_t capacity_bytes);

  uint64_t capacity_bytes() const { return buffer_.size(); }

  // A region of `length` bytes (1 <= length <= capacity), blocking until it fits contiguously.
  // Cancelled once Cancel() has been called.
  Result<Region> Allocate(uint64_t length);
  // Returns a region to the ring. Any order, any thread; each id once.
  void Free(uint64_t id);
  // Wakes and fails every blocked and future Allocate until Reset().
  void Cancel();
  void Reset();
  // True when no region is allocated.
  bool Idle() const;
  // Blocks until no region is allocated.
  void WaitIdle() const;

 private:
  explicit StagingRing(AlignedBuffer buffer) : buffer_(std::move(buffer)) {}
  // Offset where `length` bytes fit now, or -1. REQUIRES(mu_)
  int64_t FindSpace(uint64_t length) const;
  void ReclaimLocked();  // REQUIRES(mu_)

  struct Slot {
    uint64_t id;
    uint64_t offset;
    uint64_t length;  // includes alignment padding
    bool free;
  };

  AlignedBuffer buffer_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Slot> slots_;  // allocation order, oldest first. GUARDED_BY(mu_)
  uint64_t next_id_ = 1;    // GUARDED_BY(mu_)
  bool cancelled_ = false;  // GUARDED_BY(mu_)
};

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_STAGING_RING_H_
