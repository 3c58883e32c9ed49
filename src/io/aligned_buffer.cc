// AlignedBuffer and BufferPool.
#include <sys/mman.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "granary/io.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it.
#endif

namespace granary {
namespace {

constexpr size_t kPageBytes = 4096;
constexpr size_t kHugePageBytes = 2u << 20;
// Buffers at least this large come straight from mmap (zeroed by the kernel, returned to it on
// free); smaller ones come from the heap. The destructor tells them apart by size alone.
constexpr size_t kMmapThresholdBytes = 256u << 10;

size_t RoundUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Faults in every page of [p, p + n) for writing. MADV_POPULATE_WRITE does it in one syscall
// without touching the bytes; kernels without it get a memset.
void PreFault(std::byte* p, size_t n) {
  uintptr_t lo = reinterpret_cast<uintptr_t>(p) / kPageBytes * kPageBytes;
  uintptr_t hi = RoundUp(reinterpret_cast<uintptr_t>(p) + n, kPageBytes);
  if (madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_POPULATE_WRITE) != 0) {
    std::memset(p, 0, n);
  }
}

// mmap of `size` bytes aligned to `alignment` (a power of two): over-map, then unmap the slack
// so that exactly [result, result + size) stays mapped.
std::byte* MapAligned(size_t size, size_t alignment) {
  size_t extra = alignment > kPageBytes ? alignment : 0;
  void* raw = mmap(nullptr, size + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = RoundUp(start, alignment);
  if (aligned > start) munmap(raw, aligned - start);
  uintptr_t tail = aligned + size;
  uintptr_t map_end = start + size + extra;
  if (map_end > tail) munmap(reinterpret_cast<void*>(tail), map_end - tail);
  return reinterpret_cast<std::byte*>(aligned);
}

}  // namespace

Result<AlignedBuffer> AlignedBuffer::Allocate(size_t size_bytes, size_t alignment) {
  if (alignment < sizeof(void*) || (alignment & (alignment - 1)) != 0) {
    return InvalidArgumentError("AlignedBuffer: alignment " + std::to_string(alignment) +
                                " is not a power of two >= " + std::to_string(sizeof(void*)));
  }
  AlignedBuffer buffer;
  if (size_bytes == 0) return buffer;
  size_t size = RoundUp(size_bytes, kDirectIoAlignment);
  std::byte* data = nullptr;
  if (size >= kMmapThresholdBytes) {
    data = MapAligned(size, alignment);
  } else {
    void* p = nullptr;
    if (posix_memalign(&p, alignment, size) == 0) data = static_cast<std::byte*>(p);
  }
  if (data == nullptr) {
    return ResourceExhaustedError("AlignedBuffer: cannot allocate " + std::to_string(size) +
                                  " bytes");
  }
  if (size >= kMmapThresholdBytes) {
    // Huge-page-aligned buffers ask for transparent huge pages: faulting them in is several times
    // faster on VMs (one fault per 2 MiB), and copies into them miss the TLB less.
    if (alignment >= kHugePageBytes) madvise(data, size, MADV_HUGEPAGE);  // advisory only
    PreFault(data, size);  // anonymous pages are already zero
  } else {
    std::memset(data, 0, size);  // heap memory may be recycled; zero it (this also faults it)
  }
  buffer.data_ = data;
  buffer.size_ = size;
  return buffer;
}

AlignedBuffer::~AlignedBuffer() {
  if (data_ == nullptr) return;
  if (size_ >= kMmapThresholdBytes) {
    munmap(data_, size_);
  } else {
    std::free(data_);
  }
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    AlignedBuffer old(std::move(*this));  // frees the current memory on scope exit
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

// ---------------------------------------------------------------------------------------------

Status BufferPool::Options::Validate() const {
  if (buffer_bytes == 0) return InvalidArgumentError("BufferPool: buffer_bytes must be > 0");
  if (max_buffers == 0) return InvalidArgumentError("BufferPool: max_buffers must be > 0");
  return Status::OK();
}

BufferPool::Lease::Lease(Lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), buffer_(std::exchange(other.buffer_, nullptr)) {}

BufferPool::Lease& BufferPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Lease old(std::move(*this));  // returns the current buffer on scope exit
    pool_ = std::exchange(other.pool_, nullptr);
    buffer_ = std::exchange(other.buffer_, nullptr);
  }
  return *this;
}

BufferPool::Lease::~Lease() {
  if (pool_ != nullptr && buffer_ != nullptr) pool_->Release(buffer_);
}

namespace {

// Thread-safe: one mutex guards the free list and the count; allocation (and its pre-faulting,
// which may take milliseconds) runs outside the lock with its slot reserved.
class BoundedBufferPool final : public BufferPool {
 public:
  explicit BoundedBufferPool(const Options& options)
      : buffer_bytes_(RoundUp(options.buffer_bytes, kDirectIoAlignment)),
        max_buffers_(options.max_buffers) {}

  Result<Lease> Acquire() override { return Get(/*wait=*/true); }
  Result<Lease> TryAcquire() override { return Get(/*wait=*/false); }
  size_t buffer_bytes() const override { return buffer_bytes_; }
  size_t allocated_buffers() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return buffers_.size();
  }

 protected:
  void Release(AlignedBuffer* buffer) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(buffer);
    }
    cv_.notify_one();
  }

 private:
  Result<Lease> Get(bool wait) {
    std::unique_lock<std::mutex> lock(mu_);
    if (wait) {
      cv_.wait(lock, [this] { return !free_.empty() || reserved_ < max_buffers_; });
    }
    if (!free_.empty()) {
      AlignedBuffer* buffer = free_.back();  // most recently used: likely still in cache
      free_.pop_back();
      return MakeLease(this, buffer);
    }
    if (reserved_ >= max_buffers_) return Lease();  // TryAcquire on an exhausted pool
    ++reserved_;
    lock.unlock();
    Result<AlignedBuffer> allocated = AlignedBuffer::Allocate(buffer_bytes_);
    lock.lock();
    if (!allocated.ok()) {
      --reserved_;
      lock.unlock();
      cv_.notify_one();  // someone waiting may now allocate (or get a returned buffer)
      return allocated.status().WithContext("BufferPool");
    }
    buffers_.push_back(std::make_unique<AlignedBuffer>(std::move(allocated).value()));
    return MakeLease(this, buffers_.back().get());
  }

  const size_t buffer_bytes_;
  const size_t max_buffers_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<AlignedBuffer>> buffers_;  // GUARDED_BY(mu_): every allocated one
  std::vector<AlignedBuffer*> free_;                     // GUARDED_BY(mu_)
  size_t reserved_ = 0;  // GUARDED_BY(mu_): allocated plus being allocated
};

}  // namespace

Result<std::unique_ptr<BufferPool>> BufferPool::Create(const Options& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<BufferPool>(std::make_unique<BoundedBufferPool>(options));
}

}  // namespace granary
