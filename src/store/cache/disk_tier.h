// The disk tier of the node-local cache: one file per page under <dir>/pages/<hh>/, written to
// <dir>/tmp/ and renamed into place (readers see whole pages or none), with a 4 KiB header that
// names the page and carries a CRC-32C per 64 KiB chunk of its data (docs/formats/cache.md).
//
// Pages being fetched are locked (flock on <dir>/locks/<page>.lock) so that the processes sharing
// the directory fetch each page once.
//
// Opening scans every page header and drops files that are truncated, damaged or misnamed.
// Reads check the header and the CRC of every chunk they touch; a page that fails is removed and
// reported as DataLoss (the caller fetches it again). Pages written by other processes sharing
// the directory are found by name even when this process's index does not know them.
//
// Thread-safe.
#ifndef GRANARY_STORE_CACHE_DISK_TIER_H_
#define GRANARY_STORE_CACHE_DISK_TIER_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/checksum.h"
#include "granary/status.h"

namespace granary::cache {

inline constexpr uint32_t kChunkBytes = 64 * 1024;
inline constexpr uint32_t kHeaderBytes = 4096;

// One page of one version of one object.
struct PageKey {
  Hash128 object;  // XXH3-128 of identity, key and ETag
  uint64_t index = 0;
  std::string Name() const;  // "<32 hex>-<index>"
};

// What a page header records besides its key, for listings and checks.
struct PageLabel {
  std::string key;
  std::string etag;
  uint64_t object_size = 0;
};

// Counters shared by the tiers of one cached store.
struct Counters {
  std::atomic<uint64_t> ram_hits{0}, ram_hit_bytes{0}, disk_hits{0}, disk_hit_bytes{0},
      misses{0}, miss_bytes{0}, waits{0}, evictions{0}, evicted_bytes{0}, damaged{0}, stale{0};
};

class DiskTier {
 public:
  static Result<std::unique_ptr<DiskTier>> Open(std::string dir, uint64_t cap_bytes,
                                                uint64_t min_free_bytes, Counters* counters);

  // Reads [offset, offset + dest.size()) of the page's data. NotFound when absent; DataLoss
  // (and the file removed) when damaged; OutOfRange if the page holds fewer bytes.
  Status Read(const PageKey& page, uint64_t offset, std::span<std::byte> dest);
  // Whether the page's file exists (unchecked; Read checks it).
  bool Contains(const PageKey& page) const;
  // Stores a page, then evicts down to the caps. Errors (a full disk) leave no partial page.
  Status Write(const PageKey& page, const PageLabel& label, std::span<const std::byte> data);

  // Cross-process single flight: an flock(2) on <dir>/locks/<page>.lock, held by the one
  // process of the node that fetches a page while the others wait for it. Released (and the
  // file removed) by the destructor, and by the kernel when the holder dies. Whoever acquires it
  // must look for the page again before fetching: the previous holder may have written it.
  class PageLock {
   public:
    PageLock() = default;
    PageLock(PageLock&& o) noexcept
        : fd_(std::exchange(o.fd_, -1)), path_(std::move(o.path_)) {}
    PageLock& operator=(PageLock&& o) noexcept;
    ~PageLock() { Release(); }
    bool held() const { return fd_ >= 0; }
    void Release();

   private:
    friend class DiskTier;
    int fd_ = -1;
    std::string path_;
  };
  enum class LockState { kHeld, kBusy, kUnavailable };
  // Takes the page's lock: at once or kBusy (another process holds it) with wait = false;
  // blocking with wait = true. kUnavailable when the lock file cannot be made (the caller then
  // goes on without it: at worst a page is fetched twice).
  LockState LockPage(const PageKey& page, bool wait, PageLock* lock);

  uint64_t used_bytes() const;
  const std::string& dir() const { return dir_; }

  // Whole-directory operations (granary cache stat|evict|verify).
  struct Scan {
    uint64_t pages = 0, bytes = 0, objects = 0, removed = 0;
  };
  // Checks every header (and with `check_data`, every chunk CRC), removing bad pages.
  static Result<Scan> ScanDir(const std::string& dir, bool check_data);
  // Removes the oldest pages (by modification time) until at most keep_bytes remain.
  static Result<uint64_t> EvictDir(const std::string& dir, uint64_t keep_bytes);

 private:
  DiskTier(std::string dir, uint64_t cap, uint64_t min_free, Counters* counters)
      : dir_(std::move(dir)), cap_(cap), min_free_(min_free), counters_(counters) {}
  std::string PathOf(const std::string& name) const;
  void Remember(const std::string& name, uint64_t bytes);
  void Forget(const std::string& name);
  void EvictAsNeeded();

  const std::string dir_;
  const uint64_t cap_;
  const uint64_t min_free_;
  Counters* const counters_;

  mutable std::mutex mu_;
  std::list<std::string> lru_;  // front = most recent. GUARDED_BY(mu_)
  struct Entry {
    uint64_t bytes;
    std::list<std::string>::iterator lru;
  };
  std::unordered_map<std::string, Entry> index_;  // GUARDED_BY(mu_)
  uint64_t used_ = 0;                             // GUARDED_BY(mu_)
  uint64_t writes_ = 0;                           // GUARDED_BY(mu_)
  bool low_on_space_ = false;                     // below min_free_ at the last check
};

}  // namespace granary::cache

#endif  // GRANARY_STORE_CACHE_DISK_TIER_H_
