// `granary warm URL [PREFIX]` fills the node-local cache with every object under a prefix (a
// dataset, a model, a checkpoint), and `granary cache stat|evict|verify [DIR]` looks after a cache
// directory (granary/cache.h).
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli.h"
#include "granary/cache.h"
#include "granary/store.h"

namespace granary::cli {
namespace {

using Clock = std::chrono::steady_clock;

// Reads are issued as kWarmOps ranges of kWarmOpBytes at once.
constexpr size_t kWarmOpBytes = 8u << 20;
constexpr size_t kWarmOps = 8;

void PrintWarmHelp() {
  std::printf(
      "usage: granary warm URL [PREFIX] [--cache-dir DIR] [--cache-bytes SIZE]\n"
      "                    [--ram-cache-bytes SIZE] [--quiet]\n"
      "\n"
      "Reads every object of the s3:// store URL under PREFIX (default: all) through the\n"
      "node-local cache, so later reads of it on this node come from local disk. Objects\n"
      "already cached are checked and skipped quickly. Progress on stderr (unless --quiet),\n"
      "a summary on stdout.\n"
      "\n"
      "The cache directory comes from --cache-dir, the URL's cache_dir=, or\n"
      "GRANARY_CACHE_DIR. SIZEs are bytes or 512M, 200G, ...\n");
}

void PrintCacheHelp() {
  std::printf(
      "usage: granary cache stat [DIR]\n"
      "       granary cache evict [DIR] [--keep SIZE]\n"
      "       granary cache verify [DIR]\n"
      "\n"
      "stat    pages, bytes, objects, free disk, and hit/miss counts by tier summed over the\n"
      "        processes that used the cache\n"
      "evict   removes the oldest pages until at most SIZE remain (default 0: everything)\n"
      "verify  reads every page and checks its CRCs; damaged pages are removed\n"
      "\n"
      "DIR defaults to GRANARY_CACHE_DIR.\n");
}

// Splits "--name=value" / "--name value"; false when a value is missing.
bool TakeValue(int argc, char** argv, int* i, const std::string& name, std::string* value) {
  const std::string arg = argv[*i];
  if (arg.size() > name.size() && arg.compare(0, name.size() + 1, name + "=") == 0) {
    *value = arg.substr(name.size() + 1);
    return true;
  }
  if (*i + 1 >= argc) return false;
  *value = argv[++*i];
  return true;
}

std::string StatsLine(const CacheStats& s) {
  char line[512];
  std::snprintf(line, sizeof line,
                "ram hits:    %" PRIu64 " (%s)\ndisk hits:   %" PRIu64 " (%s)\n"
                "misses:      %" PRIu64 " (%s fetched)\nwaits:       %" PRIu64
                "\nevictions:   %" PRIu64 " (%s)\ndamaged:     %" PRIu64 "\nstale:       %" PRIu64
                "\n",
                s.ram_hits, HumanBytes(s.ram_hit_bytes).c_str(), s.disk_hits,
                HumanBytes(s.disk_hit_bytes).c_str(), s.misses, HumanBytes(s.miss_bytes).c_str(),
                s.waits, s.evictions, HumanBytes(s.evicted_bytes).c_str(), s.damaged, s.stale);
  return line;
}

}  // namespace

int RunWarm(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    PrintWarmHelp();
    return kExitOk;
  }
  std::vector<std::string> positional;
  StoreOptions options;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string value;
    if (arg == "--quiet" || arg == "-q") {
      quiet = true;
    } else if (arg.starts_with("--cache-dir")) {
      if (!TakeValue(argc, argv, &i, "--cache-dir", &value)) return UsageError("warm", "--cache-dir needs a value");
      options.cache.dir = value;
    } else if (arg.starts_with("--cache-bytes") || arg.starts_with("--ram-cache-bytes")) {
      const std::string name = arg.starts_with("--cache-bytes") ? "--cache-bytes" : "--ram-cache-bytes";
      if (!TakeValue(argc, argv, &i, name, &value)) return UsageError("warm", name + " needs a value");
      Result<uint64_t> bytes = ParseByteSize(value);
      if (!bytes.ok()) return UsageError("warm", name + ": " + bytes.status().message());
      (name == "--cache-bytes" ? options.cache.disk_bytes : options.cache.ram_bytes) = *bytes;
    } else if (arg.starts_with("-") && arg != "-") {
      return UsageError("warm", "unknown option '" + arg + "'");
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.empty() || positional.size() > 2) {
    return UsageError("warm", "wants URL [PREFIX]");
  }
  const std::string& url = positional[0];
  const std::string prefix = positional.size() > 1 ? positional[1] : "";
  const std::string context = "warm " + url + (prefix.empty() ? "" : " " + prefix);
  Result<std::unique_ptr<ObjectStore>> opened = OpenStore(url, options);
  if (!opened.ok()) return Fail(context, opened.status());
  ObjectStore& store = **opened;
  if (!GetCacheStats(store).ok()) {
    return Fail(context, FailedPreconditionError(
                             "no cache: give --cache-dir, cache_dir= in an s3:// URL, or "
                             "GRANARY_CACHE_DIR"));
  }
  Result<std::vector<ObjectInfo>> listed = store.List(prefix);
  if (!listed.ok()) return Fail(context, listed.status());
  uint64_t total = 0;
  for (const ObjectInfo& o : *listed) total += o.size_bytes;

  std::vector<std::byte> buffer(kWarmOpBytes * kWarmOps);
  const Clock::time_point start = Clock::now();
  Clock::time_point last_draw{};
  uint64_t done = 0;
  size_t objects = 0;
  const bool progress = !quiet && ::isatty(STDERR_FILENO);
  for (const ObjectInfo& o : *listed) {
    for (uint64_t offset = 0; offset < o.size_bytes;) {
      std::vector<ReadOp> ops;
      for (size_t k = 0; k < kWarmOps && offset < o.size_bytes; ++k) {
        ReadOp op;
        op.key = o.key;
        op.offset = offset;
        const uint64_t n = std::min<uint64_t>(kWarmOpBytes, o.size_bytes - offset);
        op.dest = std::span(buffer.data() + k * kWarmOpBytes, static_cast<size_t>(n));
        offset += n;
        ops.push_back(std::move(op));
      }
      Status batch = store.GetMany(ops);
      for (const ReadOp& op : ops) {
        if (batch.ok() && !op.status.ok()) batch = op.status;
        done += op.bytes_read;
      }
      if (!batch.ok()) {
        if (progress) std::fprintf(stderr, "\n");
        return Fail(context, batch.WithContext("key '" + o.key + "'"));
      }
      const Clock::time_point now = Clock::now();
      if (progress && now - last_draw > std::chrono::milliseconds(200)) {
        last_draw = now;
        const double secs = std::chrono::duration<double>(now - start).count();
        const int width = 30;
        const int filled = total == 0 ? width : static_cast<int>(width * done / total);
        std::fprintf(stderr, "\r[%s%s] %s / %s  %.0f MB/s  %zu/%zu objects   ",
                     std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                     HumanBytes(done).c_str(), HumanBytes(total).c_str(),
                     secs > 0 ? done / secs / 1e6 : 0.0, objects, listed->size());
        std::fflush(stderr);
      }
    }
    ++objects;
  }
  if (progress) std::fprintf(stderr, "\n");
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  const CacheStats s = GetCacheStats(store).value();
  std::printf("warmed %zu objects, %s in %.1f s (%.0f MB/s)\n", objects, HumanBytes(done).c_str(),
              secs, secs > 0 ? done / secs / 1e6 : 0.0);
  std::printf("%s", StatsLine(s).c_str());
  return kExitOk;
}

int RunCache(int argc, char** argv) {
  if (WantsHelp(argc, argv) || argc < 2) {
    PrintCacheHelp();
    return argc < 2 ? kExitUsage : kExitOk;
  }
  const std::string sub = argv[1];
  std::string dir;
  uint64_t keep = 0;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string value;
    if (sub == "evict" && arg.starts_with("--keep")) {
      if (!TakeValue(argc, argv, &i, "--keep", &value)) return UsageError("cache", "--keep needs a value");
      Result<uint64_t> bytes = ParseByteSize(value);
      if (!bytes.ok()) return UsageError("cache", "--keep: " + bytes.status().message());
      keep = *bytes;
    } else if (arg.starts_with("-")) {
      return UsageError("cache", "unknown option '" + arg + "'");
    } else if (dir.empty()) {
      dir = arg;
    } else {
      return UsageError("cache", "wants one DIR");
    }
  }
  if (dir.empty()) {
    const char* env = std::getenv("GRANARY_CACHE_DIR");
    if (env == nullptr || *env == '\0') return UsageError("cache", "no DIR and no GRANARY_CACHE_DIR");
    dir = env;
  }
  const std::string context = "cache " + sub + " " + dir;
  if (sub == "stat") {
    Result<CacheDirInfo> info = InspectCache(dir);
    if (!info.ok()) return Fail(context, info.status());
    std::printf("dir:         %s\npages:       %" PRIu64 "\nbytes:       %s\nobjects:     %" PRIu64
                "\nfree disk:   %s\n%s",
                dir.c_str(), info->pages, HumanBytes(info->bytes).c_str(), info->objects,
                HumanBytes(info->free_disk_bytes).c_str(), StatsLine(info->totals).c_str());
    return kExitOk;
  }
  if (sub == "evict") {
    Result<uint64_t> removed = EvictCache(dir, keep);
    if (!removed.ok()) return Fail(context, removed.status());
    std::printf("removed %s\n", HumanBytes(*removed).c_str());
    return kExitOk;
  }
  if (sub == "verify") {
    Result<CacheVerifyReport> report = VerifyCache(dir);
    if (!report.ok()) return Fail(context, report.status());
    std::printf("checked %" PRIu64 " pages (%s), removed %" PRIu64 " damaged\n", report->pages,
                HumanBytes(report->bytes).c_str(), report->removed);
    return kExitOk;
  }
  return UsageError("cache", "unknown subcommand '" + sub + "' (stat, evict, verify)");
}

}  // namespace granary::cli
