// The driver-independent parts of granary/store.h: key rules, option checks, List/GetAll on top
// of the virtual interface, and OpenStore.
#include "granary/store.h"

#include <string>
#include <utility>

#include "granary/io.h"
#include "store/cache/cached_store.h"
#include "store/local/local_store.h"
#include "store/memory/memory_store.h"
#include "store/s3/s3_store.h"
#include "store/url.h"

namespace granary {
namespace {

constexpr size_t kMaxKeyBytes = 1024;
constexpr std::string_view kReservedPrefix = ".granary";
// Page size List asks drivers for (S3 serves at most 1000 keys per page anyway).
constexpr size_t kListPageObjects = 1000;

// The key as it appears in messages: quoted, control bytes escaped, long keys shortened.
std::string QuoteKey(std::string_view key) {
  static constexpr char kHex[] = "0123456789abcdef";
  constexpr size_t kMaxShown = 200;
  std::string out = "'";
  for (size_t i = 0; i < key.size() && i < kMaxShown; ++i) {
    unsigned char c = static_cast<unsigned char>(key[i]);
    if (c < 0x20 || c == 0x7f || c == '\\') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (key.size() > kMaxShown) out += "...";
  out += "'";
  return out;
}

Status BadKey(std::string_view key, std::string_view why) {
  return InvalidArgumentError("invalid key " + QuoteKey(key) + ": " + std::string(why));
}

}  // namespace

Status ValidateKey(std::string_view key) {
  if (key.empty()) return BadKey(key, "empty");
  if (key.size() > kMaxKeyBytes) {
    return BadKey(key, std::to_string(key.size()) + " bytes, more than the 1024 allowed");
  }
  if (key.find('\0') != std::string_view::npos) return BadKey(key, "contains a NUL byte");
  if (key.front() == '/') return BadKey(key, "starts with '/' (keys are relative)");
  if (key.back() == '/') return BadKey(key, "ends with '/'");
  size_t begin = 0;
  while (begin <= key.size()) {
    size_t end = key.find('/', begin);
    if (end == std::string_view::npos) end = key.size();
    std::string_view component = key.substr(begin, end - begin);
    if (component.empty()) return BadKey(key, "has an empty component ('//')");
    if (component == "." || component == "..") {
      return BadKey(key, "has a '.' or '..' component");
    }
    if (component.starts_with(kReservedPrefix)) {
      return BadKey(key, "has a component starting with '.granary' (reserved)");
    }
    begin = end + 1;
  }
  return Status::OK();
}

Status WriterOptions::Validate() const {
  constexpr size_t kMaxPartBytes = size_t{5} << 30;  // S3's limit, also sane for staging memory
  if (part_bytes == 0 || part_bytes > kMaxPartBytes) {
    return InvalidArgumentError("WriterOptions.part_bytes must be in [1, 5 GiB], got " +
                                std::to_string(part_bytes));
  }
  if (max_parts_in_flight == 0 || max_parts_in_flight > 1024) {
    return InvalidArgumentError("WriterOptions.max_parts_in_flight must be in [1, 1024], got " +
                                std::to_string(max_parts_in_flight));
  }
  return Status::OK();
}

Status StoreOptions::Validate() const {
  if (direct_io_min_bytes < kDirectIoAlignment) {
    return InvalidArgumentError("StoreOptions.direct_io_min_bytes must be at least " +
                                std::to_string(kDirectIoAlignment) + ", got " +
                                std::to_string(direct_io_min_bytes));
  }
  return Status::OK();
}

Result<std::vector<ObjectInfo>> ObjectStore::List(std::string_view prefix) {
  std::vector<ObjectInfo> out;
  std::string start_after;
  for (;;) {
    GRANARY_ASSIGN_OR_RETURN(ObjectPage page, ListPage(prefix, start_after, kListPageObjects));
    for (ObjectInfo& info : page.objects) out.push_back(std::move(info));
    if (page.next_start_after.empty()) break;
    start_after = std::move(page.next_start_after);
  }
  return out;
}

Result<std::string> ObjectStore::GetAll(std::string_view key) {
  // Stat, then read one byte more than its size: if the object was replaced by a larger one in
  // between, the extra byte shows it and we retry. A single Get always reads one version, so a
  // shorter or equal read is one whole version, never a prefix of a newer one.
  for (;;) {
    GRANARY_ASSIGN_OR_RETURN(ObjectInfo info, Stat(key));
    std::string out(info.size_bytes + 1, '\0');
    GRANARY_ASSIGN_OR_RETURN(
        size_t n, Get(key, 0, std::as_writable_bytes(std::span(out.data(), out.size()))));
    if (n <= info.size_bytes) {
      out.resize(n);
      return out;
    }
  }
}

Result<std::unique_ptr<ObjectStore>> OpenStore(std::string_view url,
                                               const StoreOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  GRANARY_ASSIGN_OR_RETURN(StoreUrl parsed, ParseStoreUrl(url));
  switch (parsed.scheme) {
    case UrlScheme::kFile:
      return NewLocalStore(std::move(parsed.location), options);
    case UrlScheme::kMemory:
      return OpenMemoryStore(parsed.location);
    case UrlScheme::kS3: {
      GRANARY_ASSIGN_OR_RETURN(CacheOptions cache,
                               ResolveCacheOptions(options.cache, &parsed.query));
      GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<ObjectStore> s3, s3::OpenS3Store(parsed));
      if (!cache.enabled()) return s3;
      auto* source = dynamic_cast<CacheSource*>(s3.get());
      return NewCachedStore(std::move(s3), source, cache);
    }
  }
  return InvalidArgumentError("store URL '" + std::string(url) + "': unsupported");
}

}  // namespace granary
