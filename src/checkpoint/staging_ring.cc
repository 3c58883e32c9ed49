#include "checkpoint/staging_ring.h"

namespace granary::checkpoint {
namespace {
uint64_t AlignUp(uint64_t x) { return (x + kDirectIoAlignment - 1) & ~uint64_t{kDirectIoAlignment - 1}; }
}  // namespace

Result<std::unique_ptr<StagingRing>> StagingRing::Create(uint64_t capacity_bytes) {
  if (capacity_bytes == 0) return InvalidArgumentError("staging ring: capacity must be > 0");
  // 2 MiB alignment: huge pages fault in faster and copies into them miss the TLB less.
  Result<AlignedBuffer> buffer = AlignedBuffer::Allocate(AlignUp(capacity_bytes), 2u << 20);
  if (!buffer.ok()) return buffer.status().WithContext("checkpoint staging memory");
  return std::unique_ptr<StagingRing>(new StagingRing(std::move(buffer).value()));
}

// The live regions occupy [slots_.front().offset, end of the newest slot), possibly wrapping.
int64_t StagingRing::FindSpace(uint64_t length) const {
  const uint64_t capacity = buffer_.size();
  if (slots_.empty()) return 0;
  const uint64_t tail = slots_.front().offset;
  const uint64_t head = slots_.back().offset + slots_.back().length;
  if (head > tail) {
    if (capacity - head >= length) return static_cast<int64_t>(head);
    if (tail >= length) return 0;  // wrap; the end [head, capacity) is skipped
    return -1;
  }
  // Wrapped: free space is [head, tail).
  if (tail - head >= length) return static_cast<int64_t>(head);
  return -1;
}

Result<StagingRing::Region> StagingRing::Allocate(uint64_t length) {
  const uint64_t padded = AlignUp(length);
  if (length == 0 || padded > buffer_.size()) {
    return InvalidArgumentError("staging ring: cannot allocate " + std::to_string(length) +
                                " bytes from a ring of " + std::to_string(buffer_.size()));
  }
  std::unique_lock<std::mutex> lock(mu_);
  int64_t offset = -1;
  cv_.wait(lock, [&] { return cancelled_ || (offset = FindSpace(padded)) >= 0; });
  if (cancelled_) return CancelledError("checkpoint save cancelled while staging");
  const uint64_t id = next_id_++;
  slots_.push_back(Slot{id, static_cast<uint64_t>(offset), padded, false});
  return Region{id, std::span<std::byte>(buffer_.data() + offset, length)};
}

void StagingRing::ReclaimLocked() {
  while (!slots_.empty() && slots_.front().free) slots_.pop_front();
}

void StagingRing::Free(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Ids are consecutive in allocation order, so a live id indexes the deque directly.
    if (!slots_.empty() && id >= slots_.front().id && id - slots_.front().id < slots_.size()) {
      slots_[id - slots_.front().id].free = true;
    }
    ReclaimLocked();
  }
  cv_.notify_all();
}

void StagingRing::Cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }
  cv_.notify_all();
}

void StagingRing::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = false;
}

bool StagingRing::Idle() const {
  std::lock_guard<std::mutex> lock(mu_);
  return slots_.empty();
}

void StagingRing::WaitIdle() const {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return slots_.empty(); });
}

}  // namespace granary::checkpoint
