// What the node-local cache needs from the store behind it: an object's current version (size
// and ETag) and ranged reads pinned to a version. S3Store implements it (HEAD; GET with
// If-Match). Internal to src/store.
#ifndef GRANARY_STORE_CACHE_CACHE_SOURCE_H_
#define GRANARY_STORE_CACHE_CACHE_SOURCE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "granary/status.h"

namespace granary {

struct SourceObject {
  uint64_t size = 0;
  std::string etag;  // changes whenever the object is replaced
};

struct PinnedRead {
  std::string key;
  std::string etag;  // the version to read
  uint64_t offset = 0;
  std::span<std::byte> dest;
  size_t bytes_read = 0;  // out
  Status status;          // out: FailedPrecondition when the object is no longer `etag`
};

class CacheSource {
 public:
  virtual ~CacheSource() = default;
  // Names the store for page keys: endpoint, bucket and prefix ("http://h:7480/bucket/prefix").
  virtual std::string cache_identity() const = 0;
  // The current version of `key`; NotFound if absent.
  virtual Result<SourceObject> Head(std::string_view key) = 0;
  // The current versions of `keys`, asked for together (a store with requests in flight sends
  // them at once); one outcome per key, in order.
  virtual std::vector<Result<SourceObject>> HeadMany(std::span<const std::string> keys) {
    std::vector<Result<SourceObject>> out;
    out.reserve(keys.size());
    for (const std::string& key : keys) out.push_back(Head(key));
    return out;
  }
  // Ranged reads of pinned versions, many in flight; per-read outcomes.
  virtual Status ReadPinned(std::span<PinnedRead> reads) = 0;
};

}  // namespace granary

#endif  // GRANARY_STORE_CACHE_CACHE_SOURCE_H_
