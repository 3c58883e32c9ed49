#include "store/url.h"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <string>
#include <vector>

namespace granary {
namespace {

constexpr std::string_view kFileScheme = "file://";
constexpr std::string_view kMemScheme = "mem://";
constexpr std::string_view kS3Scheme = "s3://";

Status BadUrl(std::string_view url, std::string_view why) {
  std::string msg = "store URL '";
  msg += url;
  msg += "': ";
  msg += why;
  return InvalidArgumentError(std::move(msg));
}

// Joins `path` to the working directory when relative and resolves "." and ".." lexically.
Result<std::string> AbsoluteNormalPath(std::string_view url, std::string_view path) {
  if (path.empty()) return BadUrl(url, "empty path");
  if (path.find('\0') != std::string_view::npos) return BadUrl(url, "path contains a NUL byte");
  std::string joined;
  if (path.front() != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) == nullptr) {
      return ErrnoToStatus(errno, "store URL '" + std::string(url) + "': getcwd");
    }
    joined = cwd;
    joined += '/';
  }
  joined += path;
  std::vector<std::string_view> parts;
  std::string_view rest = joined;
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string_view part = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();  // "/.." is "/"
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (std::string_view part : parts) {
    out += '/';
    out += part;
  }
  if (out.empty()) out = "/";
  return out;
}

}  // namespace

std::string StoreUrl::ToString() const {
  switch (scheme) {
    case UrlScheme::kFile:
      return "file://" + location;
    case UrlScheme::kMemory:
      return "mem://" + location;
    case UrlScheme::kS3: {
      std::string out = "s3://" + location;
      if (!path.empty()) out += "/" + path;
      char sep = '?';
      for (const auto& [k, v] : query) {
        out += sep;
        out += k;
        out += '=';
        out += v;
        sep = '&';
      }
      return out;
    }
  }
  return {};
}

Result<StoreUrl> ParseStoreUrl(std::string_view url) {
  if (url.empty()) return BadUrl(url, "empty URL");
  StoreUrl out;
  if (url.starts_with(kFileScheme)) {
    std::string_view rest = url.substr(kFileScheme.size());
    // file:///abs or file://localhost/abs; anything else names a host we cannot reach.
    if (rest.starts_with("localhost/")) rest.remove_prefix(std::string_view("localhost").size());
    if (!rest.starts_with('/')) {
      return BadUrl(url, "file:// URLs need an absolute path (file:///abs/path) and no host");
    }
    out.scheme = UrlScheme::kFile;
    GRANARY_ASSIGN_OR_RETURN(out.location, AbsoluteNormalPath(url, rest));
    return out;
  }
  if (url.starts_with(kMemScheme)) {
    std::string_view name = url.substr(kMemScheme.size());
    if (name.empty()) return BadUrl(url, "mem:// URLs need a name (mem://name)");
    if (name.find_first_of(std::string_view("/?#\0", 4)) != std::string_view::npos) {
      return BadUrl(url, "a mem:// name may not contain '/', '?', '#' or NUL");
    }
    out.scheme = UrlScheme::kMemory;
    out.location = std::string(name);
    return out;
  }
  if (url.starts_with(kS3Scheme)) {
    std::string_view rest = url.substr(kS3Scheme.size());
    std::string_view query;
    if (size_t q = rest.find('?'); q != std::string_view::npos) {
      query = rest.substr(q + 1);
      rest = rest.substr(0, q);
    }
    size_t slash = rest.find('/');
    std::string_view bucket = rest.substr(0, slash);
    if (bucket.empty()) return BadUrl(url, "s3:// URLs need a bucket (s3://bucket/prefix)");
    out.scheme = UrlScheme::kS3;
    out.location = std::string(bucket);
    if (slash != std::string_view::npos) {
      std::string_view prefix = rest.substr(slash + 1);
      while (prefix.starts_with('/')) prefix.remove_prefix(1);
      out.path = std::string(prefix);
    }
    while (!query.empty()) {
      size_t amp = query.find('&');
      std::string_view item = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      if (item.empty()) continue;
      size_t eq = item.find('=');
      std::string key(item.substr(0, eq));
      std::string value(eq == std::string_view::npos ? std::string_view() : item.substr(eq + 1));
      out.query.emplace_back(std::move(key), std::move(value));
    }
    return out;
  }
  if (size_t sep = url.find("://"); sep != std::string_view::npos) {
    return BadUrl(url, "unknown scheme '" + std::string(url.substr(0, sep)) +
                           "' (expected file://, mem://, s3:// or a plain path)");
  }
  out.scheme = UrlScheme::kFile;
  GRANARY_ASSIGN_OR_RETURN(out.location, AbsoluteNormalPath(url, url));
  return out;
}

}  // namespace granary
