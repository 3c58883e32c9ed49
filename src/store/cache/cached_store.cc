#include "store/cache/cached_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/checksum.h"
#include "store/cache/disk_tier.h"

namespace granary {
namespace {

using cache::Counters;
using cache::DiskTier;
using cache::PageKey;
using cache::PageLabel;
using Clock = std::chrono::steady_clock;
using Page = std::vector<std::byte>;

// The bytes of one page for the readers waiting on its fetch, kept alive by `owner`: a RAM-tier
// page, or the buffer of the run it was fetched in (no copy when there is no RAM tier).
struct PageRef {
  std::shared_ptr<const void> owner;
  std::span<const std::byte> bytes;
};

constexpr uint64_t kDefaultDiskBytes = uint64_t{64} << 30;
// Adjacent missing pages of one object are fetched with one GET of at most this many pages.
constexpr uint64_t kMaxRunPages = 8;
// Attempts of a read whose object was replaced while it ran.
constexpr int kStaleAttempts = 3;

// Per-process LRU of whole pages.
class RamTier {
 public:
  explicit RamTier(uint64_t cap) : cap_(cap) {}
  std::shared_ptr<const Page> Get(const std::string& name) {
    std::lock_guard lock(mu_);
    auto it = map_.find(name);
    if (it == map_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return it->second.page;
  }
  bool enabled() const { return cap_ > 0; }
  void Put(const std::string& name, std::shared_ptr<const Page> page) {
    if (cap_ == 0 || page->size() > cap_) return;
    std::lock_guard lock(mu_);
    if (map_.count(name) != 0) return;
    lru_.push_front(name);
    used_ += page->size();
    map_.emplace(name, Entry{std::move(page), lru_.begin()});
    while (used_ > cap_) {
      auto victim = map_.find(lru_.back());
      used_ -= victim->second.page->size();
      map_.erase(victim);
      lru_.pop_back();
    }
  }
  uint64_t used() {
    std::lock_guard lock(mu_);
    return used_;
  }

 private:
  struct Entry {
    std::shared_ptr<const Page> page;
    std::list<std::string>::iterator lru;
  };
  const uint64_t cap_;
  std::mutex mu_;
  std::list<std::string> lru_;
  std::unordered_map<std::string, Entry> map_;
  uint64_t used_ = 0;
};

// One page fetch that other readers may wait for.
struct Fetch {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Status status;
  PageRef page;

  void Finish(Status s, PageRef p) {
    std::lock_guard lock(mu);
    status = std::move(s);
    page = std::move(p);
    done = true;
    cv.notify_all();
  }
  void Wait() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done; });
  }
};

// A piece of one read op that falls in one page.
struct Segment {
  size_t op;
  PageKey page;
  uint64_t in_page;  // offset inside the page
  size_t length;
  size_t dest_offset;
  bool done = false;
  std::shared_ptr<Fetch> fetch;  // set when the page is missing
};

class CachedStore final : public ObjectStore {
 public:
  CachedStore(std::unique_ptr<ObjectStore> base, CacheSource* source, CacheOptions options)
      : base_(std::move(base)),
        source_(source),
        options_(std::move(options)),
        identity_(source_->cache_identity()),
        ram_(options_.ram_bytes) {}

  ~CachedStore() override { PersistCounters(); }

  Status OpenDisk() {
    if (options_.dir.empty()) return Status::OK();
    GRANARY_ASSIGN_OR_RETURN(
        disk_, DiskTier::Open(options_.dir, options_.disk_bytes == 0 ? kDefaultDiskBytes
                                                                     : options_.disk_bytes,
                              options_.min_free_disk_bytes, &counters_));
    return Status::OK();
  }

  CacheStats Stats() {
    CacheStats s;
    s.ram_hits = counters_.ram_hits;
    s.ram_hit_bytes = counters_.ram_hit_bytes;
    s.disk_hits = counters_.disk_hits;
    s.disk_hit_bytes = counters_.disk_hit_bytes;
    s.misses = counters_.misses;
    s.miss_bytes = counters_.miss_bytes;
    s.waits = counters_.waits;
    s.evictions = counters_.evictions;
    s.evicted_bytes = counters_.evicted_bytes;
    s.damaged = counters_.damaged;
    s.stale = counters_.stale;
    s.ram_bytes = ram_.used();
    s.disk_bytes = disk_ != nullptr ? disk_->used_bytes() : 0;
    return s;
  }

  std::string url() const override { return base_->url(); }
  Result<ObjectInfo> Stat(std::string_view key) override { return base_->Stat(key); }

  Result<size_t> Get(std::string_view key, uint64_t offset, std::span<std::byte> dest) override {
    ReadOp op;
    op.key = std::string(key);
    op.offset = offset;
    op.dest = dest;
    GRANARY_RETURN_IF_ERROR(GetMany(std::span(&op, 1)));
    GRANARY_RETURN_IF_ERROR(op.status);
    return op.bytes_read;
  }

  Status GetMany(std::span<ReadOp> ops) override {
    std::vector<size_t> todo;
    for (size_t i = 0; i < ops.size(); ++i) {
      ops[i].bytes_read = 0;
      ops[i].status = ValidateKey(ops[i].key);
      if (ops[i].status.ok()) todo.push_back(i);
    }
    // An object replaced while the read ran is read again, whole, from its new version.
    for (int attempt = 1; !todo.empty() && attempt <= kStaleAttempts; ++attempt) {
      todo = ReadOnce(ops, todo, attempt == 1);
      if (attempt == kStaleAttempts) break;
      for (size_t i : todo) ops[i].status = Status::OK();
    }
    return Status::OK();
  }

  Status Put(std::string_view key, std::span<const std::byte> data) override {
    Invalidate(key);
    return base_->Put(key, data);
  }
  Status PutIfAbsent(std::string_view key, std::span<const std::byte> data) override {
    Invalidate(key);
    return base_->PutIfAbsent(key, data);
  }
  Result<std::unique_ptr<ObjectWriter>> NewWriter(std::string_view key,
                                                  const WriterOptions& options) override {
    Invalidate(key);
    return base_->NewWriter(key, options);
  }
  Status Delete(std::string_view key) override {
    Invalidate(key);
    return base_->Delete(key);
  }
  Result<ObjectPage> ListPage(std::string_view prefix, std::string_view start_after,
                              size_t max_objects) override {
    return base_->ListPage(prefix, start_after, max_objects);
  }

 private:
  struct Meta {
    SourceObject object;
    Clock::time_point checked;
  };

  void Invalidate(std::string_view key) {
    std::lock_guard lock(meta_mu_);
    meta_.erase(std::string(key));
  }

  // The current size and ETag of each of `keys` (distinct): remembered, or asked for when older
  // than allowed, all the HEADs of one call in flight together.
  std::map<std::string, Result<SourceObject>> Versions(const std::vector<std::string>& keys,
                                                       bool allow_remembered) {
    const auto ttl = std::chrono::duration<double>(options_.revalidate_seconds);
    std::map<std::string, Result<SourceObject>> out;
    std::vector<std::string> ask;
    std::vector<std::optional<std::string>> previous;
    {
      std::lock_guard lock(meta_mu_);
      const auto now = Clock::now();
      for (const std::string& key : keys) {
        auto it = meta_.find(key);
        if (it != meta_.end() && allow_remembered && now - it->second.checked < ttl) {
          out.emplace(key, it->second.object);
          continue;
        }
        ask.push_back(key);
        previous.push_back(it != meta_.end() ? std::optional(it->second.object.etag)
                                             : std::nullopt);
      }
    }
    if (ask.empty()) return out;
    std::vector<Result<SourceObject>> got = source_->HeadMany(ask);
    std::lock_guard lock(meta_mu_);
    for (size_t i = 0; i < ask.size(); ++i) {
      if (got[i].ok()) {
        if (previous[i] && *previous[i] != got[i]->etag) counters_.stale.fetch_add(1);
        meta_[ask[i]] = {*got[i], Clock::now()};
      }
      out.emplace(ask[i], std::move(got[i]));
    }
    return out;
  }

  PageKey KeyOf(const std::string& key, const std::string& etag, uint64_t index) const {
    const std::string id = identity_ + '\0' + key + '\0' + etag;
    return {Xxh3_128(id.data(), id.size()), index};
  }

  // One pass over `todo`; returns the ops to run again because their object changed under them.
  std::vector<size_t> ReadOnce(std::span<ReadOp> ops, const std::vector<size_t>& todo,
                               bool allow_remembered) {
    const uint64_t page_bytes = options_.page_bytes;
    std::vector<std::string> keys;
    for (size_t i : todo) keys.push_back(ops[i].key);
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    const std::map<std::string, Result<SourceObject>> versions = Versions(keys, allow_remembered);
    std::vector<Segment> segments;
    for (size_t i : todo) {
      ReadOp& op = ops[i];
      const auto it = versions.find(op.key);
      if (!it->second.ok()) {
        op.status = it->second.status();
        continue;
      }
      const SourceObject& object = *it->second;
      if (op.offset >= object.size || op.dest.empty()) continue;
      const uint64_t end = std::min<uint64_t>(object.size, op.offset + op.dest.size());
      op.bytes_read = static_cast<size_t>(end - op.offset);
      for (uint64_t pos = op.offset; pos < end;) {
        const uint64_t index = pos / page_bytes;
        const uint64_t in_page = pos - index * page_bytes;
        const size_t length = static_cast<size_t>(std::min(end, (index + 1) * page_bytes) - pos);
        segments.push_back({i, KeyOf(op.key, object.etag, index), in_page, length,
                            static_cast<size_t>(pos - op.offset), false, nullptr});
        pos += length;
      }
    }

    // Hits.
    std::vector<size_t> missing;
    for (size_t s = 0; s < segments.size(); ++s) {
      if (!ReadHit(segments[s], ops[segments[s].op])) missing.push_back(s);
    }

    // Misses: claim each page once, fetch the claimed ones, wait for the others.
    std::map<std::string, std::shared_ptr<Fetch>> mine;
    std::map<std::string, std::pair<size_t, uint64_t>> mine_info;  // name -> (op, page index)
    {
      std::lock_guard lock(fetch_mu_);
      for (size_t s : missing) {
        Segment& seg = segments[s];
        const std::string name = seg.page.Name();
        if (auto it = mine.find(name); it != mine.end()) {
          seg.fetch = it->second;
          continue;
        }
        if (auto it = inflight_.find(name); it != inflight_.end()) {
          seg.fetch = it->second;
          counters_.waits.fetch_add(1);
          continue;
        }
        seg.fetch = std::make_shared<Fetch>();
        inflight_[name] = seg.fetch;
        mine[name] = seg.fetch;
        mine_info[name] = {seg.op, seg.page.index};
      }
    }
    if (!mine.empty()) FetchClaimed(ops, versions, mine, mine_info);

    std::vector<size_t> stale;
    for (size_t s : missing) {
      Segment& seg = segments[s];
      ReadOp& op = ops[seg.op];
      seg.fetch->Wait();
      if (!seg.fetch->status.ok()) {
        if (seg.fetch->status.code() == StatusCode::kFailedPrecondition) {
          if (op.status.ok() && (stale.empty() || stale.back() != seg.op)) stale.push_back(seg.op);
        }
        if (op.status.ok()) op.status = seg.fetch->status;
        continue;
      }
      const std::span<const std::byte> page = seg.fetch->page.bytes;
      if (seg.in_page + seg.length > page.size()) {
        if (op.status.ok()) {
          op.status = DataLossError(base_->url() + ": key '" + op.key + "' is shorter than its " +
                                    "size when the read began");
        }
        continue;
      }
      std::memcpy(op.dest.data() + seg.dest_offset, page.data() + seg.in_page, seg.length);
    }
    for (size_t i : todo) {
      if (!ops[i].status.ok()) ops[i].bytes_read = 0;
    }
    std::sort(stale.begin(), stale.end());
    stale.erase(std::unique(stale.begin(), stale.end()), stale.end());
    for (size_t i : stale) Invalidate(ops[i].key);
    return stale;
  }

  bool ReadHit(const Segment& seg, ReadOp& op) {
    const std::string name = seg.page.Name();
    std::byte* dest = op.dest.data() + seg.dest_offset;
    if (std::shared_ptr<const Page> page = ram_.Get(name)) {
      if (seg.in_page + seg.length <= page->size()) {
        std::memcpy(dest, page->data() + seg.in_page, seg.length);
        counters_.ram_hits.fetch_add(1);
        counters_.ram_hit_bytes.fetch_add(seg.length);
        return true;
      }
    }
    if (disk_ == nullptr) return false;
    if (Status s = disk_->Read(seg.page, seg.in_page, std::span(dest, seg.length)); !s.ok()) {
      return false;  // absent, damaged (dropped and counted) or unreadable: fetch it
    }
    counters_.disk_hits.fetch_add(1);
    counters_.disk_hit_bytes.fetch_add(seg.length);
    return true;
  }

  using FetchMap = std::map<std::string, std::shared_ptr<Fetch>>;
  using InfoMap = std::map<std::string, std::pair<size_t, uint64_t>>;  // name -> (op, page)

  // Fetches the pages this process claimed, once per node: pages another process sharing the
  // disk tier is fetching are waited for (their page lock) and read from disk, or fetched here
  // if that process failed or died.
  void FetchClaimed(std::span<ReadOp> ops,
                    const std::map<std::string, Result<SourceObject>>& versions,
                    const FetchMap& mine, const InfoMap& info) {
    if (disk_ == nullptr) return FetchPages(ops, versions, mine, info);
    auto page_of = [&](const std::string& name) {
      const auto& [op, index] = info.at(name);
      const SourceObject& object = *versions.at(ops[op].key);
      return std::make_pair(KeyOf(ops[op].key, object.etag, index), &object);
    };
    std::vector<DiskTier::PageLock> locks;
    std::vector<std::string> busy;
    FetchMap now;
    InfoMap now_info;
    for (const auto& [name, fetch] : mine) {
      auto [page, object] = page_of(name);
      DiskTier::PageLock lock;
      const DiskTier::LockState state = disk_->LockPage(page, /*wait=*/false, &lock);
      if (state == DiskTier::LockState::kBusy) {
        busy.push_back(name);
        continue;
      }
      if (lock.held() && FinishFromDisk(name, fetch, page, *object, info.at(name).second)) {
        continue;  // written by another process since this one missed it
      }
      if (lock.held()) locks.push_back(std::move(lock));
      now[name] = fetch;
      now_info[name] = info.at(name);
    }
    if (!now.empty()) FetchPages(ops, versions, now, now_info);
    locks.clear();  // the pages are on disk (or failed): let the waiting processes in
    // One lock at a time, never holding another: no cycles between processes.
    for (const std::string& name : busy) {
      auto [page, object] = page_of(name);
      DiskTier::PageLock lock;
      disk_->LockPage(page, /*wait=*/true, &lock);
      counters_.waits.fetch_add(1);
      const std::shared_ptr<Fetch>& fetch = mine.at(name);
      if (FinishFromDisk(name, fetch, page, *object, info.at(name).second)) continue;
      FetchPages(ops, versions, {{name, fetch}}, {{name, info.at(name)}});
    }
  }

  // Completes a claimed page from the disk tier if it is there now (counted as a disk hit).
  bool FinishFromDisk(const std::string& name, const std::shared_ptr<Fetch>& fetch,
                      const PageKey& page, const SourceObject& object, uint64_t index) {
    const uint64_t begin = index * options_.page_bytes;
    if (begin >= object.size || !disk_->Contains(page)) return false;  // no page buffer for nothing
    auto data = std::make_shared<Page>(std::min(options_.page_bytes, object.size - begin));
    if (!disk_->Read(page, 0, std::span(*data)).ok()) return false;
    counters_.disk_hits.fetch_add(1);
    counters_.disk_hit_bytes.fetch_add(data->size());
    ram_.Put(name, data);
    const std::span<const std::byte> bytes(*data);
    fetch->Finish(Status::OK(), {std::move(data), bytes});
    std::lock_guard lock(fetch_mu_);
    inflight_.erase(name);
    return true;
  }

  // Fetches the claimed pages as runs of adjacent pages, stores them in the tiers and completes
  // their Fetch records.
  void FetchPages(std::span<ReadOp> ops, const std::map<std::string, Result<SourceObject>>& versions,
                  const FetchMap& mine, const InfoMap& info) {
    const uint64_t page_bytes = options_.page_bytes;
    // (key, index) -> name, in order, so adjacent pages of one object are neighbours.
    std::map<std::pair<std::string, uint64_t>, std::string> order;
    for (const auto& [name, where] : info) order[{ops[where.first].key, where.second}] = name;
    struct Run {
      std::string key;
      SourceObject object;
      uint64_t first = 0, count = 0;
      std::vector<std::string> names;
      std::shared_ptr<std::byte[]> buffer;  // not zeroed: ReadPinned fills it
      size_t bytes = 0;
    };
    std::vector<Run> runs;
    for (const auto& [where, name] : order) {
      const auto& [key, index] = where;
      if (!runs.empty() && runs.back().key == key && runs.back().first + runs.back().count == index &&
          runs.back().count < kMaxRunPages) {
        runs.back().count++;
        runs.back().names.push_back(name);
        continue;
      }
      runs.push_back({key, *versions.at(key), index, 1, {name}, {}});
    }
    std::vector<PinnedRead> reads(runs.size());
    for (size_t r = 0; r < runs.size(); ++r) {
      Run& run = runs[r];
      const uint64_t begin = run.first * page_bytes;
      const uint64_t end = std::min(run.object.size, (run.first + run.count) * page_bytes);
      run.bytes = static_cast<size_t>(end - begin);
      run.buffer = std::make_shared_for_overwrite<std::byte[]>(run.bytes);
      reads[r] = {run.key, run.object.etag, begin, std::span(run.buffer.get(), run.bytes), 0,
                  Status::OK()};
    }
    Status batch = source_->ReadPinned(reads);
    for (size_t r = 0; r < runs.size(); ++r) {
      Run& run = runs[r];
      Status s = batch.ok() ? reads[r].status : batch;
      if (s.ok() && reads[r].bytes_read != run.bytes) {
        s = DataLossError(base_->url() + ": key '" + run.key + "' returned " +
                          std::to_string(reads[r].bytes_read) + " of " +
                          std::to_string(run.bytes) + " bytes of its version " +
                          run.object.etag);
      }
      if (s.code() == StatusCode::kFailedPrecondition) counters_.stale.fetch_add(1);
      for (uint64_t p = 0; p < run.count; ++p) {
        const std::string& name = run.names[p];
        PageRef page;
        if (s.ok()) {
          const size_t begin = static_cast<size_t>(p * page_bytes);
          const size_t size = std::min<size_t>(page_bytes, run.bytes - begin);
          const std::span<const std::byte> bytes(run.buffer.get() + begin, size);
          counters_.misses.fetch_add(1);
          counters_.miss_bytes.fetch_add(size);
          if (disk_ != nullptr) {
            PageKey key = KeyOf(run.key, run.object.etag, run.first + p);
            // A page the disk cannot take is still served from memory.
            disk_->Write(key, {run.key, run.object.etag, run.object.size}, bytes).IgnoreError();
          }
          if (ram_.enabled()) {  // a page of its own, so the tier never pins a whole run
            auto copy = std::make_shared<Page>(bytes.begin(), bytes.end());
            ram_.Put(name, copy);
            const std::span<const std::byte> own(*copy);
            page = {std::move(copy), own};
          } else {
            page = {run.buffer, bytes};
          }
        }
        mine.at(name)->Finish(s, std::move(page));
        std::lock_guard lock(fetch_mu_);
        inflight_.erase(name);
      }
    }
  }

  void PersistCounters() {
    if (options_.dir.empty()) return;
    const std::string path = options_.dir + "/counters";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ::flock(fd, LOCK_EX);
    std::string text(1 << 12, '\0');
    const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
    text.resize(n > 0 ? static_cast<size_t>(n) : 0);
    std::map<std::string, uint64_t> totals;
    std::istringstream in(text);
    for (std::string name; in >> name;) {
      uint64_t v = 0;
      if (in >> v) totals[name] = v;
    }
    const CacheStats s = Stats();
    const std::pair<const char*, uint64_t> add[] = {
        {"ram_hits", s.ram_hits},   {"ram_hit_bytes", s.ram_hit_bytes},
        {"disk_hits", s.disk_hits}, {"disk_hit_bytes", s.disk_hit_bytes},
        {"misses", s.misses},       {"miss_bytes", s.miss_bytes},
        {"waits", s.waits},         {"evictions", s.evictions},
        {"evicted_bytes", s.evicted_bytes}, {"damaged", s.damaged},
        {"stale", s.stale}};
    for (const auto& [name, v] : add) totals[name] += v;
    std::string out;
    for (const auto& [name, v] : totals) out += name + " " + std::to_string(v) + "\n";
    if (::ftruncate(fd, 0) == 0 && ::pwrite(fd, out.data(), out.size(), 0) < 0) {
      // A cache's counters are best effort.
    }
    ::flock(fd, LOCK_UN);
    ::close(fd);
  }

  const std::unique_ptr<ObjectStore> base_;
  CacheSource* const source_;
  const CacheOptions options_;
  const std::string identity_;
  Counters counters_;
  RamTier ram_;
  std::unique_ptr<DiskTier> disk_;

  std::mutex meta_mu_;
  std::unordered_map<std::string, Meta> meta_;  // GUARDED_BY(meta_mu_)
  std::mutex fetch_mu_;
  std::unordered_map<std::string, std::shared_ptr<Fetch>> inflight_;  // GUARDED_BY(fetch_mu_)
};

}  // namespace

Result<std::unique_ptr<ObjectStore>> NewCachedStore(std::unique_ptr<ObjectStore> base,
                                                    CacheSource* source,
                                                    const CacheOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  if (source == nullptr) {
    return InvalidArgumentError(base->url() + ": this store cannot be cached");
  }
  auto store = std::make_unique<CachedStore>(std::move(base), source, options);
  GRANARY_RETURN_IF_ERROR(store->OpenDisk());
  return std::unique_ptr<ObjectStore>(std::move(store));
}

Result<CacheStats> GetCacheStats(ObjectStore& store) {
  auto* cached = dynamic_cast<CachedStore*>(&store);
  if (cached == nullptr) {
    return FailedPreconditionError(store.url() + " was opened without a cache");
  }
  return cached->Stats();
}

}  // namespace granary
