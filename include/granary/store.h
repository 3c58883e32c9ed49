// granary/store.h: start here. The ObjectStore interface that every tier and workload stands on.
//
// An ObjectStore maps keys ("runs/exp1/step-100/rank0.bin") to immutable byte objects. It is the
// common ground of a local directory, memory and S3-compatible object storage, so it has no
// rename and no in-place update; multi-object writes are made atomic by publishing a small
// manifest last (with Put or PutIfAbsent).
//
// Atomicity promises, on every driver:
//   * Put replaces an object atomically: a concurrent or later reader sees the old bytes or the
//     new bytes, never a mix, a prefix or a temporary.
//   * A Writer's object becomes visible only at Commit(), atomically. Abort(), destroying an
//     uncommitted Writer, or the process dying leaves nothing visible under the key.
//   * PutIfAbsent creates the object only if no object has the key; of many concurrent callers
//     exactly one succeeds and the others get AlreadyExists.
//   * A successful Put/PutIfAbsent/Commit is durable (fsynced on local disks) when it returns.
//
// Keys: 1-1024 bytes of '/'-separated components; no empty component (no leading, trailing or
// double '/'), no "." or "..", no NUL byte, and no component starting with ".granary" (reserved
// for the drivers' own bookkeeping). Invalid keys get InvalidArgument naming the key, before any
// I/O, so nothing can escape a store's root.
//
// Thread safety: every ObjectStore method is thread-safe. A Writer is used by one thread at a
// time.
#ifndef GRANARY_STORE_H_
#define GRANARY_STORE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "granary/cache.h"
#include "granary/io.h"
#include "granary/status.h"

namespace granary {

// Metadata of one object.
struct ObjectInfo {
  std::string key;
  uint64_t size_bytes = 0;
  // Last modification, nanoseconds since the Unix epoch (0 if the driver cannot tell).
  int64_t mtime_ns = 0;
};

// One ranged read of a batch (GetMany). The caller owns `dest`, which must stay valid until
// GetMany returns.
struct ReadOp {
  std::string key;
  uint64_t offset = 0;
  std::span<std::byte> dest;
  // Out: bytes read into dest (fewer than dest.size() only when the object ends first).
  size_t bytes_read = 0;
  // Out: outcome of this op (NotFound, InvalidArgument, ...).
  Status status;
};

// Streams one large object into a store. Append as much as needed, then Commit() to publish.
// Data is written in parts of WriterOptions::part_bytes, several in flight in the background,
// so Append returns once the data is copied into a staging buffer. Not thread-safe.
class ObjectWriter {
 public:
  // Destroying a Writer that was not committed aborts it.
  virtual ~ObjectWriter() = default;
  // Appends bytes. Errors from earlier background parts surface here or at Commit; after an
  // error the Writer is aborted and every later call returns the same error.
  virtual Status Append(std::span<const std::byte> data) = 0;
  // Appends bytes without copying them where the driver can: the writer reads `data` in the
  // background until it calls `release` (exactly once, on any thread, also on error or abort),
  // so the caller keeps the memory valid and unchanged until then. LocalStore writes 4 KiB-aligned
  // memory at 4 KiB-aligned object offsets straight to the device with O_DIRECT; anything else is
  // copied like Append (then released at once). Errors as for Append.
  virtual Status AppendBorrowed(std::span<const std::byte> data, std::function<void()> release) {
    Status s = Append(data);
    release();
    return s;
  }
  // Makes the whole object visible atomically and durably. Errors (ResourceExhausted on a full
  // disk, ...) name the key; the previous object under the key, if any, stays intact.
  virtual Status Commit() = 0;
  // Discards everything; the previous object under the key stays. Idempotent.
  virtual Status Abort() = 0;
  // Bytes accepted by Append so far.
  virtual uint64_t bytes_appended() const = 0;
};

struct WriterOptions {
  // Size of the parts written in parallel. Default: 8 MiB (S3 needs at least 5 MiB).
  size_t part_bytes = 8u << 20;
  // Most parts staged or in flight at once; staging memory is part_bytes * max_parts_in_flight.
  // Default: 4.
  size_t max_parts_in_flight = 4;
  Status Validate() const;
};

// One page of a listing.
struct ObjectPage {
  std::vector<ObjectInfo> objects;  // sorted by key, bytewise
  // When non-empty, pass as `start_after` to get the next page.
  std::string next_start_after;
};

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // The URL this store was opened with, normalized ("file:///data/x", "mem://name").
  virtual std::string url() const = 0;

  // Size and mtime of `key`. NotFound if absent.
  virtual Result<ObjectInfo> Stat(std::string_view key) = 0;

  // Reads up to dest.size() bytes of `key` starting at `offset` into `dest` (caller-owned).
  // Returns bytes read: dest.size(), or fewer when the object ends first (0 at or past the
  // end). NotFound if absent.
  virtual Result<size_t> Get(std::string_view key, uint64_t offset,
                             std::span<std::byte> dest) = 0;

  // Runs a batch of ranged reads with many in flight (the dataset hot path keeps the device queue
  // full through this). Each op's outcome is in op.status / op.bytes_read; the returned Status is
  // an error only if the batch itself could not run.
  virtual Status GetMany(std::span<ReadOp> ops) = 0;

  // Creates or atomically replaces `key` with `data`; durable when it returns.
  virtual Status Put(std::string_view key, std::span<const std::byte> data) = 0;

  // Creates `key` only if absent; AlreadyExists otherwise. Durable when it returns.
  virtual Status PutIfAbsent(std::string_view key, std::span<const std::byte> data) = 0;

  // A streaming writer for a large object under `key` (see ObjectWriter).
  virtual Result<std::unique_ptr<ObjectWriter>> NewWriter(std::string_view key,
                                                          const WriterOptions& options = {}) = 0;

  // Removes `key`. NotFound if absent.
  virtual Status Delete(std::string_view key) = 0;

  // Up to `max_objects` objects whose keys start with `prefix` and sort after `start_after`.
  // `prefix` is a plain string prefix ("runs/exp1/", "runs/ex"); "" lists everything.
  virtual Result<ObjectPage> ListPage(std::string_view prefix, std::string_view start_after,
                                    size_t max_objects) = 0;

  // Opens the local file that holds `key`, for drivers that keep objects as plain files
  // (LocalStore), so callers can keep descriptors of immutable objects open or memory-map them;
  // O_DIRECT when `direct_io` and the file system supports it (the buffered descriptor is
  // returned otherwise). Opened without following symlinks out of the root. Unimplemented on
  // drivers without local files; NotFound if absent. Never write through the descriptor.
  virtual Result<File> OpenLocalFile(std::string_view key, bool direct_io) {
    return UnimplementedError("no local files behind " + url());
  }
  // Every object under `prefix`, sorted by key (pages through ListPage).
  Result<std::vector<ObjectInfo>> List(std::string_view prefix);

  // The whole object (Stat + Get). NotFound if absent.
  Result<std::string> GetAll(std::string_view key);

  // Put of a string, for small objects.
  Status Put(std::string_view key, std::string_view data) {
    return Put(key, std::as_bytes(std::span(data.data(), data.size())));
  }
  Status PutIfAbsent(std::string_view key, std::string_view data) {
    return PutIfAbsent(key, std::as_bytes(std::span(data.data(), data.size())));
  }
};

// Checks a key against the rules above; InvalidArgument naming the key if it breaks one.
Status ValidateKey(std::string_view key);

// Options for OpenStore.
struct StoreOptions {
  // LocalStore: transfers at least this large use O_DIRECT through the I/O engine; smaller ones
  // use buffered I/O. Default: 1 MiB.
  size_t direct_io_min_bytes = 1u << 20;
  // LocalStore: create the root directory if missing. Default: true.
  bool create_if_missing = true;
  // S3Store: the node-local cache (granary/cache.h). Unset fields are filled from the URL query
  // (cache_dir, cache_bytes, ram_cache_bytes, cache_page_bytes, cache_revalidate_seconds) and
  // then the environment (GRANARY_CACHE_DIR, GRANARY_CACHE_BYTES, GRANARY_RAM_CACHE_BYTES).
  // Default: no cache.
  CacheOptions cache;
  Status Validate() const;
};

// Opens the store a URL names:
//   file:///abs/path, or a plain path ("/data/x", "./x")   LocalStore rooted at that directory
//   mem://name                                          MemoryStore; same name, same store,
//                                                       for the life of the process
//   s3://bucket/prefix?endpoint=http://host:port&...    S3Store: a bucket of AWS S3 or any
//                                                       S3-compatible server (endpoint, region,
//                                                       credentials: URL > AWS_* environment >
//                                                       ~/.aws profile; see docs/s3.md)
// InvalidArgument for malformed or unknown URLs.
Result<std::unique_ptr<ObjectStore>> OpenStore(std::string_view url,
                                               const StoreOptions& options = {});

}  // namespace granary

#endif  // GRANARY_STORE_H_
