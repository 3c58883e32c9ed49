// granary/io.h: positional file I/O with many operations in flight, and the aligned,
// pre-faulted buffers that O_DIRECT transfers need.
//
// IoEngine runs batches of positional reads and writes. The default engine is io_uring
// (liburing); when io_uring is unavailable, or GRANARY_IO=psync is set, a pread/pwrite thread
// pool gives the same results. Both keep up to `queue_depth` operations in flight.
//
// Buffers: first writes to fresh memory are slow (page faults; on VMs also host round trips),
// so large transfers reuse AlignedBuffers from a BufferPool, pre-faulted once.
#ifndef GRANARY_IO_H_
#define GRANARY_IO_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "granary/status.h"

namespace granary {

// Alignment O_DIRECT needs for offsets, lengths and buffer addresses on every device we target.
inline constexpr size_t kDirectIoAlignment = 4096;

// ---------------------------------------------------------------------------------------------
// AlignedBuffer: an owned, page-aligned, pre-faulted block of memory. Movable, not copyable.
// Not thread-safe (like any buffer); different threads may use different buffers.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Allocates `size_bytes` (rounded up to kDirectIoAlignment) aligned to `alignment` and touches
  // every page so later writes do not fault. An alignment of 2 MiB or more also asks for
  // transparent huge pages (much faster to fault in). ResourceExhausted if memory cannot be had.
  static Result<AlignedBuffer> Allocate(size_t size_bytes,
                                        size_t alignment = kDirectIoAlignment);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<std::byte> span() const { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// BufferPool: a bounded set of equally sized AlignedBuffers, allocated lazily (pre-faulted) up to
// `max_buffers` and then reused. Acquire blocks while all are in use (backpressure).
// Thread-safe. The pool must outlive every lease.
class BufferPool {
 public:
  struct Options {
    // Size of each buffer; rounded up to kDirectIoAlignment. Default: 8 MiB.
    size_t buffer_bytes = 8u << 20;
    // Most buffers ever allocated; memory is bounded by buffer_bytes * max_buffers. Default: 16.
    size_t max_buffers = 16;
    Status Validate() const;
  };

  // A buffer on loan; returns to the pool when destroyed. Movable.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    ~Lease();
    std::byte* data() const { return buffer_ ? buffer_->data() : nullptr; }
    size_t size() const { return buffer_ ? buffer_->size() : 0; }
    std::span<std::byte> span() const { return {data(), size()}; }
    explicit operator bool() const { return buffer_ != nullptr; }

   private:
    friend class BufferPool;
    Lease(BufferPool* pool, AlignedBuffer* buffer) : pool_(pool), buffer_(buffer) {}
    BufferPool* pool_ = nullptr;
    AlignedBuffer* buffer_ = nullptr;
  };

  static Result<std::unique_ptr<BufferPool>> Create(const Options& options);
  virtual ~BufferPool() = default;

  // Returns a free buffer, allocating one if fewer than max_buffers exist, else waits.
  virtual Result<Lease> Acquire() = 0;
  // Like Acquire but returns an empty Lease instead of waiting.
  virtual Result<Lease> TryAcquire() = 0;
  virtual size_t buffer_bytes() const = 0;
  // Buffers allocated so far (for tests and stats).
  virtual size_t allocated_buffers() const = 0;

 protected:
  virtual void Release(AlignedBuffer* buffer) = 0;
  static Lease MakeLease(BufferPool* pool, AlignedBuffer* buffer) { return Lease(pool, buffer); }
};

// ---------------------------------------------------------------------------------------------
// File: an open file descriptor, closed on destruction. Movable.
class File {
 public:
  enum class Mode {
    kRead,        // O_RDONLY
    kReadWrite,   // O_RDWR, must exist
    kCreate,      // O_RDWR|O_CREAT (existing content kept)
    kTruncate,    // O_RDWR|O_CREAT|O_TRUNC
    kCreateNew,   // O_RDWR|O_CREAT|O_EXCL: AlreadyExists if present
  };
  struct OpenOptions {
    Mode mode = Mode::kRead;
    // Open with O_DIRECT (bypass the page cache). Transfers must then be aligned; the engine's
    // ReadAt/WriteAt helpers below handle unaligned heads and tails. Default: false.
    bool direct = false;
    int permissions = 0644;
  };

  File() = default;
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~File();
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  // Errors name the path: NotFound, AlreadyExists (kCreateNew), PermissionDenied, ...
  static Result<File> Open(std::string_view path, const OpenOptions& options);

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  bool is_open() const { return fd_ >= 0; }

  Result<uint64_t> Size() const;
  Status Truncate(uint64_t size_bytes);
  Status Sync();      // fsync
  Status DataSync();  // fdatasync
  Status Close();     // reports close(2) errors; the destructor ignores them

 private:
  int fd_ = -1;
  std::string path_;
};

// Fsyncs a directory so that entries created, renamed or removed in it are durable.
Status SyncDirectory(std::string_view path);

// ---------------------------------------------------------------------------------------------
// IoEngine
enum class IoOpcode { kRead, kWrite };

// One positional transfer. The engine fills `result`: bytes transferred (a read returns fewer
// than `length` only at end of file), or -errno. Short transfers before EOF are resubmitted by
// the engine, so the caller sees either the full length, EOF, or an error.
struct IoRequest {
  IoOpcode opcode = IoOpcode::kRead;
  int fd = -1;
  uint64_t offset = 0;
  void* buffer = nullptr;
  size_t length = 0;
  // Reads only: succeed only as far as the data is already in the page cache (RWF_NOWAIT on a
  // buffered descriptor). The result is then the resident prefix (possibly short, never
  // resubmitted) or -EAGAIN when nothing is resident; the caller reads the rest another way.
  bool nowait = false;
  // Out: bytes transferred or -errno.
  int64_t result = 0;
  // Out, when IoEngineOptions::record_latency: nanoseconds from submission to completion.
  uint64_t latency_ns = 0;
};

enum class IoEngineKind {
  kAuto,    // io_uring if it works here, else psync; GRANARY_IO=uring|psync overrides.
  kUring,   // io_uring; Unavailable if the kernel refuses.
  kPsync,   // pread/pwrite on a thread pool.
};

struct IoEngineOptions {
  IoEngineKind kind = IoEngineKind::kAuto;
  // Most operations in flight per Run call. Default: 32.
  unsigned queue_depth = 32;
  // Fill IoRequest::latency_ns (costs one clock read per completion). Default: false.
  bool record_latency = false;
  Status Validate() const;
};

// Runs batches of positional I/O. Thread-safe: concurrent Run calls proceed independently (each
// uses its own ring or its own share of the worker pool).
class IoEngine {
 public:
  // Creates the engine `options.kind` asks for; kAuto consults GRANARY_IO, then probes io_uring.
  static Result<std::unique_ptr<IoEngine>> Create(const IoEngineOptions& options = {});
  // A process-wide engine with default options, created on first use. Never null.
  static IoEngine& Default();

  virtual ~IoEngine() = default;

  // "io_uring" or "psync".
  virtual std::string_view name() const = 0;
  virtual unsigned queue_depth() const = 0;

  // Executes every request, keeping up to queue_depth in flight, and returns when all have
  // completed. Per-request outcomes are in IoRequest::result; the returned Status is an error
  // only when the engine itself failed (then results are undefined).
  virtual Status Run(std::span<IoRequest> requests) = 0;

  // Convenience: reads exactly dest.size() bytes at `offset` of `file`, splitting into chunks of
  // `chunk_bytes` with many in flight. Works on O_DIRECT files for any offset, length and
  // destination alignment: aligned middles go straight into `dest`; unaligned heads and tails
  // go through a bounce buffer. Returns bytes read (less than requested only at EOF); errors
  // name the file.
  Result<size_t> ReadAt(const File& file, uint64_t offset, std::span<std::byte> dest,
                        size_t chunk_bytes = 4u << 20);
  // Writes all of `src` at `offset`, chunked and in flight like ReadAt. On an O_DIRECT file,
  // offset must be aligned (InvalidArgument otherwise); an unaligned final tail is written
  // through a bounce buffer padded to the alignment (with the file's current bytes when the file
  // extends past the tail, else zeros) and the file is then truncated to offset + src.size()
  // if the padding grew it past that. Concurrent writes sharing a 4 KiB block race.
  Status WriteAt(const File& file, uint64_t offset, std::span<const std::byte> src,
                 size_t chunk_bytes = 4u << 20);
};

// Reads the GRANARY_IO environment variable: "uring", "psync" or unset/"auto".
IoEngineKind IoEngineKindFromEnv();

}  // namespace granary

#endif  // GRANARY_IO_H_
