// CachedStore: the node-local cache of granary/cache.h as an ObjectStore wrapped around a store
// that implements CacheSource (S3Store). Reads go RAM tier -> disk tier -> one pinned fetch per
// missing page (shared by concurrent readers); writes, Stat and listings go straight through.
#ifndef GRANARY_STORE_CACHE_CACHED_STORE_H_
#define GRANARY_STORE_CACHE_CACHED_STORE_H_

#include <memory>

#include "granary/cache.h"
#include "granary/store.h"
#include "store/cache/cache_source.h"

namespace granary {

// `source` is the CacheSource side of `base` (the same object). Opens (and checks) the disk tier
// when options.dir is set.
Result<std::unique_ptr<ObjectStore>> NewCachedStore(std::unique_ptr<ObjectStore> base,
                                                    CacheSource* source,
                                                    const CacheOptions& options);

// Cache options from the environment (GRANARY_CACHE_DIR, GRANARY_CACHE_BYTES,
// GRANARY_RAM_CACHE_BYTES), overridden by URL query parameters (cache_dir, cache_bytes,
// ram_cache_bytes, cache_page_bytes, cache_revalidate_seconds), which are removed from `query`.
// `base` holds options set through the API; query and environment fill only what it leaves unset.
Result<CacheOptions> ResolveCacheOptions(
    CacheOptions base, std::vector<std::pair<std::string, std::string>>* query);

}  // namespace granary

#endif  // GRANARY_STORE_CACHE_CACHED_STORE_H_
