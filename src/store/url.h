// Parsing of store URLs for OpenStore (granary/store.h).
//
//   file:///abs/path   file://localhost/abs/path   /abs/path   ./rel/path   rel/path
//   mem://name
//   s3://bucket/prefix?key=value&...
//
// A string without "://" is a plain path. Only the URL's syntax is checked here; whether a
// driver exists for the scheme is OpenStore's business. Pure functions, thread-safe.
#ifndef GRANARY_STORE_URL_H_
#define GRANARY_STORE_URL_H_

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "granary/status.h"

namespace granary {

enum class UrlScheme { kFile, kMemory, kS3 };

struct StoreUrl {
  UrlScheme scheme = UrlScheme::kFile;
  // kFile: the absolute, lexically normalized directory ("/data/x"; "." and ".." resolved,
  // no trailing '/'). kMemory: the store name. kS3: the bucket.
  std::string location;
  // kS3 only: the key prefix after the bucket, without leading '/' ("" for the whole bucket).
  std::string path;
  // kS3 only: the query parameters in the order given, not percent-decoded.
  std::vector<std::pair<std::string, std::string>> query;

  // The normalized URL: "file:///data/x", "mem://name", "s3://bucket/prefix?k=v".
  std::string ToString() const;
};

// Parses `url`. InvalidArgument naming the URL when it is empty, has an unknown scheme
// ("http://..."), a file:// URL names a remote host or a relative path, a mem:// name is
// empty or contains '/', '?', '#' or NUL, or an s3:// URL has no bucket.
Result<StoreUrl> ParseStoreUrl(std::string_view url);

}  // namespace granary

#endif  // GRANARY_STORE_URL_H_
