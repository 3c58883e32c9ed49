// granary/cache.h: the node-local cache in front of object storage.
//
// A store opened with cache options (OpenStore(url, {.cache = ...}), or the URL query
// `cache_dir=/nvme/granary-cache&cache_bytes=200G&ram_cache_bytes=8G`, or the environment
// GRANARY_CACHE_DIR / GRANARY_CACHE_BYTES / GRANARY_RAM_CACHE_BYTES, or the [cache] section of
// the config file $GRANARY_CONFIG or ~/.config/granary/config: `dir`, `bytes`, `ram_bytes`,
// `page_bytes`, `revalidate_seconds`; first found wins in that order) reads through a cache of
// immutable pages:
//
//   * A page is `page_bytes` (default 2 MiB) of one version of one object, named by the store,
//     the key, the object's ETag and the page number. Pages of a replaced object are never
//     served: a page is found only under the ETag the store currently reports, and misses are
//     fetched with `If-Match: <ETag>` so a page can never mix two versions.
//   * Tiers: RAM (ram_bytes, per process, LRU) and local disk (dir, disk_bytes, shared by the
//     processes of the node, LRU per process, kept across restarts). Every page on disk carries a
//     CRC-32C per 64 KiB chunk, checked on each read; a damaged or truncated page is dropped and
//     fetched again, never served. Opening a cache directory checks every page header.
//   * One fetch per page per node: concurrent readers of a missing page in one process wait for
//     a single request, and processes sharing the disk tier take a per-page file lock (flock)
//     before fetching, so the others wait and read the page from disk (a holder killed mid-fetch
//     releases it with its death). Pages missing from one batch are fetched as runs of adjacent
//     pages, many at once.
//   * Space: the disk tier stays under disk_bytes and keeps at least min_free_disk_bytes free on
//     its file system, evicting least recently used pages first.
//   * Freshness: by default every read asks the store for the object's size and ETag (one HEAD
//     per object per read call, e.g. per shard of a batch), so once a replacement has completed
//     in the bucket no page of the old version is served. `revalidate_seconds` > 0 trusts a
//     learned ETag for that long instead (no request at all on a warm hit, for objects known
//     to be immutable such as datasets and checkpoints; an object replaced in the bucket may
//     then be served from the cache that long); a miss notices a replacement at once.
//
// Writes (Put, writers, Delete) go straight to the store behind the cache; pages of the old
// version simply stop being found. Only S3 stores are cached; other stores ignore the options.
//
// Several processes may share one directory (DataLoader workers, several jobs on a node): pages
// are written to a temporary name and renamed, so readers see whole pages or none. Each process
// enforces the caps on the pages it knows of, so N processes can overshoot disk_bytes until
// they next evict (each evicts down to the cap as it writes).
#ifndef GRANARY_CACHE_H_
#define GRANARY_CACHE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "granary/status.h"

namespace granary {

class ObjectStore;

struct CacheOptions {
  // Directory of the disk tier; "" = no disk tier.
  std::string dir;
  // Cap of the disk tier. 0 = 64 GiB.
  uint64_t disk_bytes = 0;
  // Cap of the RAM tier; 0 = no RAM tier.
  uint64_t ram_bytes = 0;
  // Keep at least this much free on the disk tier's file system. Default 1 GiB.
  uint64_t min_free_disk_bytes = uint64_t{1} << 30;
  // Page size, a multiple of 64 KiB in [64 KiB, 16 MiB]. Default 2 MiB.
  uint64_t page_bytes = uint64_t{2} << 20;
  // How long an object's size and ETag are trusted before the next read checks them again;
  // 0 (default) checks on every read.
  double revalidate_seconds = 0;

  bool enabled() const { return !dir.empty() || ram_bytes > 0; }
  Status Validate() const;
};

// Counts of one cached store handle since it was opened (or of a directory, summed over the
// handles that have closed, for InspectCache).
struct CacheStats {
  uint64_t ram_hits = 0, ram_hit_bytes = 0;    // page reads served from RAM
  uint64_t disk_hits = 0, disk_hit_bytes = 0;  // page reads served from the disk tier
  uint64_t misses = 0, miss_bytes = 0;         // pages fetched from the store behind
  uint64_t waits = 0;                          // reads that waited for another reader's fetch
  uint64_t evictions = 0, evicted_bytes = 0;
  uint64_t damaged = 0;                        // pages dropped for a bad CRC or size
  uint64_t stale = 0;                          // objects found replaced (new ETag)
  uint64_t ram_bytes = 0, disk_bytes = 0;      // bytes held now (this handle's view)
};

// The stats of a store opened with cache options; FailedPrecondition for an uncached store.
Result<CacheStats> GetCacheStats(ObjectStore& store);

// A cache directory as a whole, for `granary cache stat`.
struct CacheDirInfo {
  uint64_t pages = 0, bytes = 0, objects = 0;  // objects = distinct (store, key, ETag)
  uint64_t free_disk_bytes = 0;
  CacheStats totals;  // summed over handles that closed (hits, misses, ...)
};
Result<CacheDirInfo> InspectCache(std::string_view dir);

// Evicts least recently written pages until the directory holds at most `keep_bytes`
// (0 = everything). Returns the bytes removed.
Result<uint64_t> EvictCache(std::string_view dir, uint64_t keep_bytes);

// Reads every page and checks every CRC; damaged pages are removed. Returns (pages checked,
// pages removed).
struct CacheVerifyReport {
  uint64_t pages = 0, bytes = 0, removed = 0;
};
Result<CacheVerifyReport> VerifyCache(std::string_view dir);

// "200G", "512M", "64k", "1.5T", "12345" -> bytes (binary units). InvalidArgument otherwise.
Result<uint64_t> ParseByteSize(std::string_view text);

}  // namespace granary

#endif  // GRANARY_CACHE_H_
