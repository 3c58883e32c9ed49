// CacheOptions checks, byte sizes, option resolution (API > URL query > environment), and the
// whole-directory operations of granary/cache.h.
#include <sys/statvfs.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "granary/cache.h"
#include "store/cache/cached_store.h"
#include "store/cache/disk_tier.h"
#include "store/s3/s3_config.h"
#include "store/s3/sigv4.h"

namespace granary {

Status CacheOptions::Validate() const {
  if (page_bytes < cache::kChunkBytes || page_bytes > (uint64_t{16} << 20) ||
      page_bytes % cache::kChunkBytes != 0) {
    return InvalidArgumentError("cache page_bytes must be a multiple of 64 KiB in [64 KiB, " +
                                std::string("16 MiB], got ") + std::to_string(page_bytes));
  }
  if (!(revalidate_seconds >= 0)) {
    return InvalidArgumentError("cache revalidate_seconds must be >= 0");
  }
  return Status::OK();
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  const std::string s(text);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  std::string unit = end != nullptr ? std::string(end) : "";
  if (end == s.c_str() || !(v >= 0) || !std::isfinite(v)) {
    return InvalidArgumentError("'" + s + "' is not a byte size (e.g. 200G, 512M, 4096)");
  }
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  if (!unit.empty() && (unit.back() == 'i')) unit.pop_back();
  double mult = 1;
  if (unit.empty()) {
  } else if (unit == "k" || unit == "K") {
    mult = 1024.0;
  } else if (unit == "m" || unit == "M") {
    mult = 1024.0 * 1024;
  } else if (unit == "g" || unit == "G") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "T") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return InvalidArgumentError("'" + s + "' is not a byte size (units: k, M, G, T)");
  }
  return static_cast<uint64_t>(v * mult);
}

Result<CacheOptions> ResolveCacheOptions(
    CacheOptions options, std::vector<std::pair<std::string, std::string>>* query) {
  std::map<std::string, std::string> given;
  if (query != nullptr) {
    std::vector<std::pair<std::string, std::string>> rest;
    for (auto& [k, v] : *query) {
      if (k == "cache_dir" || k == "cache_bytes" || k == "ram_cache_bytes" ||
          k == "cache_page_bytes" || k == "cache_revalidate_seconds") {
        given[k] = s3::UriDecode(v);
      } else {
        rest.emplace_back(std::move(k), std::move(v));
      }
    }
    *query = std::move(rest);
  }
  // Lowest precedence: the [cache] section of the config file ($GRANARY_CONFIG, else
  // ~/.config/granary/config), keys named like the URL parameters without "cache_"
  // ("dir = /nvme/c", "bytes = 200G", "ram_bytes = 8G", "page_bytes", "revalidate_seconds").
  std::map<std::string, std::string> file;
  {
    const char* path_env = std::getenv("GRANARY_CONFIG");
    const char* home = std::getenv("HOME");
    const std::string path = path_env != nullptr && *path_env != '\0'
                                 ? std::string(path_env)
                                 : (home != nullptr ? std::string(home) : "") +
                                       "/.config/granary/config";
    std::ifstream in(path);
    if (in) {
      std::stringstream text;
      text << in.rdbuf();
      file = s3::ParseAwsIni(text.str())["cache"];
    } else if (path_env != nullptr && *path_env != '\0') {
      return NotFoundError("GRANARY_CONFIG names " + path + ", which cannot be read");
    }
  }
  auto pick = [&](const char* key, const char* env) -> std::optional<std::string> {
    if (auto it = given.find(key); it != given.end()) return it->second;
    if (env != nullptr) {
      if (const char* v = std::getenv(env); v != nullptr && *v != '\0') return std::string(v);
    }
    const std::string k = key;
    const std::string short_key =
        k == "ram_cache_bytes" ? "ram_bytes" : k.starts_with("cache_") ? k.substr(6) : k;
    if (auto it = file.find(short_key); it != file.end() && !it->second.empty()) {
      return it->second;
    }
    return std::nullopt;
  };
  if (options.dir.empty()) {
    if (auto v = pick("cache_dir", "GRANARY_CACHE_DIR")) options.dir = *v;
  }
  if (options.disk_bytes == 0) {
    if (auto v = pick("cache_bytes", "GRANARY_CACHE_BYTES")) {
      GRANARY_ASSIGN_OR_RETURN(options.disk_bytes, ParseByteSize(*v));
    }
  }
  if (options.ram_bytes == 0) {
    if (auto v = pick("ram_cache_bytes", "GRANARY_RAM_CACHE_BYTES")) {
      GRANARY_ASSIGN_OR_RETURN(options.ram_bytes, ParseByteSize(*v));
    }
  }
  if (auto v = pick("cache_page_bytes", nullptr)) {
    GRANARY_ASSIGN_OR_RETURN(options.page_bytes, ParseByteSize(*v));
  }
  if (auto v = pick("cache_revalidate_seconds", nullptr)) {
    char* end = nullptr;
    options.revalidate_seconds = std::strtod(v->c_str(), &end);
    if (end == v->c_str() || *end != '\0') {
      return InvalidArgumentError("cache_revalidate_seconds '" + *v + "' is not a number");
    }
  }
  GRANARY_RETURN_IF_ERROR(options.Validate());
  return options;
}

Result<CacheDirInfo> InspectCache(std::string_view dir) {
  GRANARY_ASSIGN_OR_RETURN(cache::DiskTier::Scan scan,
                           cache::DiskTier::ScanDir(std::string(dir), false));
  CacheDirInfo info;
  info.pages = scan.pages;
  info.bytes = scan.bytes;
  info.objects = scan.objects;
  struct statvfs v;
  if (::statvfs(std::string(dir).c_str(), &v) == 0) {
    info.free_disk_bytes = static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
  }
  std::ifstream in(std::string(dir) + "/counters");
  std::map<std::string, uint64_t> t;
  for (std::string name; in >> name;) {
    uint64_t value = 0;
    if (in >> value) t[name] = value;
  }
  CacheStats& s = info.totals;
  s.ram_hits = t["ram_hits"];
  s.ram_hit_bytes = t["ram_hit_bytes"];
  s.disk_hits = t["disk_hits"];
  s.disk_hit_bytes = t["disk_hit_bytes"];
  s.misses = t["misses"];
  s.miss_bytes = t["miss_bytes"];
  s.waits = t["waits"];
  s.evictions = t["evictions"];
  s.evicted_bytes = t["evicted_bytes"];
  s.damaged = t["damaged"];
  s.stale = t["stale"];
  s.disk_bytes = scan.bytes;
  return info;
}

Result<uint64_t> EvictCache(std::string_view dir, uint64_t keep_bytes) {
  return cache::DiskTier::EvictDir(std::string(dir), keep_bytes);
}

Result<CacheVerifyReport> VerifyCache(std::string_view dir) {
  GRANARY_ASSIGN_OR_RETURN(cache::DiskTier::Scan scan,
                           cache::DiskTier::ScanDir(std::string(dir), true));
  return CacheVerifyReport{scan.pages, scan.bytes, scan.removed};
}

}  // namespace granary
