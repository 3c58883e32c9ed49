// Dataset::Open and the per-sample lookups (Locate, Key, IndexOf). Opening reads the newest (or
// requested) manifest, maps each segment's index and Stats each shard: O(shards + segments),
// independent of the sample count. Index entries are validated lazily, where they are used.
#include "dataset/dataset_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "core/checksum.h"
#include "dataset/dataset_catalog.h"
#include "dataset/dataset_format.h"
#include "dataset/dataset_record.h"

namespace granary {

Status DatasetOptions::Validate() const {
  if (read_threads < 1 || read_threads > 64) {
    return InvalidArgumentError("DatasetOptions.read_threads must be in [1, 64], got " +
                                std::to_string(read_threads));
  }
  return Status::OK();
}

namespace dataset {

// ---- TableObject ----

Result<TableObject> TableObject::Open(ObjectStore& store, const std::string& key,
                                      uint64_t expected_size) {
  TableObject t;
  Result<File> file = store.OpenLocalFile(key, /*direct_io=*/false);
  if (file.ok()) {
    GRANARY_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    if (size != expected_size) {
      return DataLossError(key + ": " + std::to_string(size) + " bytes, manifest says " +
                           std::to_string(expected_size));
    }
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, file->fd(), 0);
    if (map == MAP_FAILED) return ErrnoToStatus(errno, "mmap " + key);
    // Lookups land anywhere in the index: reading ahead around each fault would only compete
    // with the sample reads for the device.
    ::madvise(map, size, MADV_RANDOM);
    t.map_ = map;
    t.data_ = static_cast<const std::byte*>(map);
    t.size_ = size;
    return t;  // the mapping outlives the descriptor
  }
  if (file.status().code() != StatusCode::kUnimplemented) return file.status().WithContext(key);
  GRANARY_ASSIGN_OR_RETURN(t.held_, store.GetAll(key));
  if (t.held_.size() != expected_size) {
    return DataLossError(key + ": " + std::to_string(t.held_.size()) +
                         " bytes, manifest says " + std::to_string(expected_size));
  }
  t.data_ = reinterpret_cast<const std::byte*>(t.held_.data());
  t.size_ = t.held_.size();
  return t;
}

TableObject::~TableObject() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

TableObject::TableObject(TableObject&& other) noexcept { *this = std::move(other); }

TableObject& TableObject::operator=(TableObject&& other) noexcept {
  if (this == &other) return *this;
  if (map_ != nullptr) ::munmap(map_, size_);
  map_ = std::exchange(other.map_, nullptr);
  held_ = std::move(other.held_);
  size_ = std::exchange(other.size_, 0);
  // A moved std::string may move its bytes (small strings), so re-derive the pointer.
  data_ = map_ != nullptr ? static_cast<const std::byte*>(map_)
                          : reinterpret_cast<const std::byte*>(held_.data());
  other.data_ = nullptr;
  return *this;
}

// ---- Arena, ArenaPool ----

namespace {
constexpr size_t kHugePage = 2u << 20;
size_t RoundToHugePages(size_t bytes) {
  return (std::max<size_t>(bytes, 1) + kHugePage - 1) / kHugePage * kHugePage;
}
}  // namespace

Result<Arena> Arena::Map(size_t bytes) {
  const size_t size = RoundToHugePages(bytes);
  // Over-map by one huge page and trim, so the arena starts on a huge-page boundary.
  void* raw = ::mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    return ResourceExhaustedError("batch memory: cannot map " + std::to_string(size) + " bytes");
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  if (aligned > base) ::munmap(raw, aligned - base);
  if (const size_t tail = base + kHugePage - aligned; tail > 0) {
    ::munmap(reinterpret_cast<void*>(aligned + size), tail);
  }
  // Advisory: one fault per 2 MiB instead of 512, and fewer TLB misses in the copies.
  ::madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
  Arena a;
  a.data_ = reinterpret_cast<std::byte*>(aligned);
  a.size_ = size;
  return a;
}

Arena::~Arena() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

Arena::Arena(Arena&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

Arena& Arena::operator=(Arena&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Result<Arena> ArenaPool::Acquire(size_t bytes) {
  const bool chunk = bytes <= kChunkBytes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (chunk && !chunks_.empty()) {
      Arena a = std::move(chunks_.back());  // the most recently used: likeliest in cache
      chunks_.pop_back();
      idle_bytes_ -= a.size();
      return a;
    }
    if (!chunk) {
      size_t best = large_.size();
      for (size_t i = 0; i < large_.size(); ++i) {
        if (large_[i].size() >= bytes &&
            (best == large_.size() || large_[i].size() < large_[best].size())) {
          best = i;
        }
      }
      if (best < large_.size()) {
        Arena a = std::move(large_[best]);
        large_.erase(large_.begin() + static_cast<ptrdiff_t>(best));
        idle_bytes_ -= a.size();
        return a;
      }
    }
  }
  return Arena::Map(chunk ? kChunkBytes : bytes);
}

void ArenaPool::Release(std::vector<Arena>& arenas) {
  std::vector<Arena> dropped;  // unmapped outside the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Arena& a : arenas) {
      if (a.data() == nullptr) continue;
      idle_bytes_ += a.size();
      (a.size() == kChunkBytes ? chunks_ : large_).push_back(std::move(a));
    }
    // Over budget: drop large arenas first (rarely reused), then the oldest chunks.
    while (idle_bytes_ > kMaxIdleBytes && !large_.empty()) {
      idle_bytes_ -= large_.front().size();
      dropped.push_back(std::move(large_.front()));
      large_.erase(large_.begin());
    }
    size_t drop_chunks = 0;
    while (idle_bytes_ > kMaxIdleBytes && drop_chunks < chunks_.size()) {
      idle_bytes_ -= chunks_[drop_chunks].size();
      dropped.push_back(std::move(chunks_[drop_chunks++]));
    }
    chunks_.erase(chunks_.begin(), chunks_.begin() + static_cast<ptrdiff_t>(drop_chunks));
  }
  arenas.clear();
}

// ---- ShardFileCache ----

std::shared_ptr<ShardFiles> ShardFileCache::Find(uint32_t shard) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(shard);
  if (it == entries_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.files;
}

std::shared_ptr<ShardFiles> ShardFileCache::Insert(uint32_t shard,
                                                   std::shared_ptr<ShardFiles> files) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(shard);
  if (it != entries_.end()) return it->second.files;
  lru_.push_front(shard);
  entries_.emplace(shard, Entry{files, lru_.begin()});
  while (entries_.size() > capacity_) {
    // Reads holding the evicted files keep them open until they finish.
    entries_.erase(lru_.back());
    lru_.pop_back();
  }
  return files;
}

// ---- DatasetImpl: open ----

DatasetImpl::DatasetImpl(std::shared_ptr<ObjectStore> store, std::string prefix,
                         const DatasetOptions& options)
    : store_(std::move(store)), prefix_(std::move(prefix)), options_(options) {}

DatasetImpl::~DatasetImpl() = default;

Result<std::unique_ptr<DatasetImpl>> DatasetImpl::Open(std::shared_ptr<ObjectStore> store,
                                                       std::string prefix,
                                                       const DatasetOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  if (!store) return InvalidArgumentError("Dataset::Open: null store");
  GRANARY_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(*store, prefix));
  const std::string name = "dataset \"" + prefix + "\" in " + store->url();
  if (versions.empty()) return NotFoundError("no " + name + " (no manifest-* object)");
  const uint64_t version = options.version != 0 ? options.version : versions.back();
  if (!std::binary_search(versions.begin(), versions.end(), version)) {
    return NotFoundError(name + " has no version " + std::to_string(version) + " (newest is " +
                         std::to_string(versions.back()) + ")");
  }
  std::unique_ptr<DatasetImpl> d(new DatasetImpl(std::move(store), prefix, options));
  GRANARY_ASSIGN_OR_RETURN(d->manifest_, LoadManifest(*d->store_, prefix, version));
  const DatasetManifest& m = d->manifest_;
  if (m.num_samples == 0) {
    return FailedPreconditionError(name + " version " + std::to_string(version) +
                                   " has no samples");
  }
  d->fields_ = std::make_shared<FieldTable>();
  d->fields_->names = m.fields;
  for (size_t id = 0; id < m.fields.size(); ++id) {
    d->fields_->ids.emplace(d->fields_->names[id], static_cast<uint16_t>(id));
  }
  for (const SegmentEntry& e : m.segments) {
    auto seg = std::make_unique<SegmentState>();
    seg->entry = e;
    const std::string index_key = JoinKey(prefix, e.index.key);
    Result<TableObject> index = TableObject::Open(*d->store_, index_key, e.index.size);
    if (!index.ok()) return index.status().WithContext("index of " + name);
    seg->index = std::move(index).value();
    d->local_ = seg->index.mapped();
    GRANARY_RETURN_IF_ERROR(CheckTableHeader(std::span(seg->index.data(), kIndexHeaderBytes),
                                             kIndexMagic, e.num_samples, "index " + index_key)
                                .status());
    d->index_bytes_ += seg->index.size();
    uint64_t base = 0;
    for (uint32_t j = 0; j < e.shards.size(); ++j) {
      const ShardEntry& sh = e.shards[j];
      ShardState st{JoinKey(prefix, sh.key), sh.first_sample, sh.num_samples, sh.record_bytes,
                    sh.size_bytes, base, static_cast<uint32_t>(d->segments_.size()), j};
      base += sh.record_bytes;
      // One Stat per shard: a missing or truncated shard fails here, not mid-epoch.
      Result<ObjectInfo> info = d->store_->Stat(st.key);
      if (!info.ok()) {
        return info.status().WithContext("shard " + st.key + " of " + name + " version " +
                                          std::to_string(version));
      }
      if (info->size_bytes != sh.size_bytes) {
        return DataLossError("shard " + st.key + " of " + name + ": " +
                             std::to_string(info->size_bytes) + " bytes, manifest says " +
                             std::to_string(sh.size_bytes) + " (truncated or replaced)");
      }
      d->shard_first_.push_back(st.first_sample);
      d->shard_infos_.push_back(ShardInfo{st.key, st.first_sample, st.num_samples, st.size_bytes});
      d->shard_states_.push_back(std::move(st));
    }
    d->segments_.push_back(std::move(seg));
  }
  d->header_checked_ = std::make_unique<std::atomic<uint8_t>[]>(d->shard_states_.size());
  IoEngineOptions io;
  io.queue_depth = 64;  // deeper than the device needs: batches mix page-cache and device reads
  GRANARY_ASSIGN_OR_RETURN(d->engine_, IoEngine::Create(io));
  if (options.read_threads > 1) {
    d->read_pool_ = std::make_unique<ThreadPool>(options.read_threads - 1, "ds-read");
  }
  return d;
}

// ---- Lookups ----

Result<RecordSpan> DatasetImpl::LocateRecord(uint64_t index) const {
  if (index >= manifest_.num_samples) {
    return OutOfRangeError("sample " + std::to_string(index) + " out of range [0, " +
                           std::to_string(manifest_.num_samples) + ")");
  }
  const uint32_t s = static_cast<uint32_t>(
      std::upper_bound(shard_first_.begin(), shard_first_.end(), index) - shard_first_.begin() - 1);
  const ShardState& sh = shard_states_[s];
  const SegmentState& seg = *segments_[sh.segment];
  const uint64_t local = index - seg.entry.first_sample;
  const std::byte* e = seg.index.data() + kIndexHeaderBytes + 8 * local;
  const uint64_t begin = LoadLe<uint64_t>(e), end = LoadLe<uint64_t>(e + 8);
  // The lazy half of index validation: every entry used is checked against its neighbours and
  // its shard, so a damaged index can never send a read outside the shard.
  if (begin > end || end - begin < kRecordFixedBytes || end - begin > kMaxRecordBytes ||
      begin < sh.segment_base || end > sh.segment_base + sh.record_bytes) {
    return DataLossError("index " + JoinKey(prefix_, seg.entry.index.key) + ": entries " +
                         std::to_string(local) + ".." + std::to_string(local + 1) + " (" +
                         std::to_string(begin) + ", " + std::to_string(end) + ") of sample " +
                         std::to_string(index) + " are not a record inside shard " + sh.key);
  }
  return RecordSpan{s, kShardHeaderBytes + begin - sh.segment_base,
                    static_cast<uint32_t>(end - begin)};
}

Result<SampleLocation> DatasetImpl::Locate(uint64_t index) const {
  GRANARY_ASSIGN_OR_RETURN(RecordSpan r, LocateRecord(index));
  return SampleLocation{r.shard, r.offset, r.length};
}

Result<std::shared_ptr<ShardFiles>> DatasetImpl::Files(uint32_t shard) {
  if (std::shared_ptr<ShardFiles> f = files_.Find(shard)) return f;
  const ShardState& sh = shard_states_[shard];
  auto files = std::make_shared<ShardFiles>();
  Result<File> buffered = store_->OpenLocalFile(sh.key, /*direct_io=*/false);
  if (!buffered.ok()) return buffered.status().WithContext("shard " + sh.key);
  files->buffered = std::move(buffered).value();
  if (options_.direct_io) {
    // OpenLocalFile hands back a buffered descriptor where O_DIRECT is refused (tmpfs, ...).
    Result<File> direct = store_->OpenLocalFile(sh.key, /*direct_io=*/true);
    if (direct.ok() && (::fcntl(direct->fd(), F_GETFL) & O_DIRECT) != 0) {
      files->direct = std::move(direct).value();
      files->has_direct = true;
    }
  }
  return files_.Insert(shard, std::move(files));
}

Result<size_t> DatasetImpl::ReadShard(uint32_t shard, uint64_t offset, std::span<std::byte> dest) {
  const ShardState& sh = shard_states_[shard];
  if (!local_) {
    Result<size_t> n = store_->Get(sh.key, offset, dest);
    return n.ok() ? n : n.status().WithContext("shard " + sh.key);
  }
  GRANARY_ASSIGN_OR_RETURN(std::shared_ptr<ShardFiles> files, Files(shard));
  size_t done = 0;
  while (done < dest.size()) {
    const ssize_t n = ::pread(files->buffered.fd(), dest.data() + done, dest.size() - done,
                              static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, "read of shard " + sh.key);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Status DatasetImpl::CheckHeaderOnce(uint32_t shard) {
  if (header_checked_[shard].load(std::memory_order_acquire) != 0) return Status::OK();
  const ShardState& sh = shard_states_[shard];
  std::byte header[kShardHeaderBytes];
  GRANARY_ASSIGN_OR_RETURN(size_t n, ReadShard(shard, 0, header));
  if (n < kShardHeaderBytes) return DataLossError("shard " + sh.key + ": truncated header");
  GRANARY_RETURN_IF_ERROR(CheckShardHeader(header, sh.number,
                                           segments_[sh.segment]->entry.writer_id,
                                           "shard " + sh.key));
  header_checked_[shard].store(1, std::memory_order_release);
  return Status::OK();
}

Status DatasetImpl::CheckHeadersOnce(std::span<const uint32_t> shards) {
  std::vector<uint32_t> todo;
  for (uint32_t shard : shards) {
    if (header_checked_[shard].load(std::memory_order_acquire) == 0) todo.push_back(shard);
  }
  if (todo.empty()) return Status::OK();
  if (!local_ || todo.size() == 1) {
    for (uint32_t shard : todo) GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(shard));
    return Status::OK();
  }
  std::sort(todo.begin(), todo.end());
  todo.erase(std::unique(todo.begin(), todo.end()), todo.end());
  GRANARY_ASSIGN_OR_RETURN(AlignedBuffer buf, AlignedBuffer::Allocate(todo.size() * kDirectIoAlignment));
  std::vector<std::shared_ptr<ShardFiles>> files(todo.size());
  std::vector<IoRequest> requests(todo.size());
  for (size_t i = 0; i < todo.size(); ++i) {
    GRANARY_ASSIGN_OR_RETURN(files[i], Files(todo[i]));
    IoRequest& r = requests[i];
    r.fd = files[i]->has_direct ? files[i]->direct.fd() : files[i]->buffered.fd();
    r.offset = 0;
    r.buffer = buf.data() + i * kDirectIoAlignment;
    r.length = files[i]->has_direct ? kDirectIoAlignment : kShardHeaderBytes;
  }
  GRANARY_RETURN_IF_ERROR(engine_->Run(requests));
  for (size_t i = 0; i < todo.size(); ++i) {
    const ShardState& sh = shard_states_[todo[i]];
    if (requests[i].result < 0) {
      // Let the one-by-one path report it (and retry buffered if O_DIRECT was the problem).
      GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(todo[i]));
      continue;
    }
    if (static_cast<size_t>(requests[i].result) < kShardHeaderBytes) {
      return DataLossError("shard " + sh.key + ": truncated header");
    }
    GRANARY_RETURN_IF_ERROR(CheckShardHeader(
        std::span<const std::byte>(buf.data() + i * kDirectIoAlignment, kShardHeaderBytes),
        sh.number, segments_[sh.segment]->entry.writer_id, "shard " + sh.key));
    header_checked_[todo[i]].store(1, std::memory_order_release);
  }
  return Status::OK();
}

Result<std::string> DatasetImpl::Key(uint64_t index) {
  GRANARY_ASSIGN_OR_RETURN(RecordSpan r, LocateRecord(index));
  GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(r.shard));
  const std::string where = "shard " + shard_states_[r.shard].key + " sample " +
                            std::to_string(index);
  // Most keys fit in the first 256 bytes; a long key or many fields costs a second read.
  std::vector<std::byte> buf(std::min<size_t>(r.length, 256));
  for (int attempt = 0; attempt < 2; ++attempt) {
    GRANARY_ASSIGN_OR_RETURN(size_t n, ReadShard(r.shard, r.offset, buf));
    if (n < buf.size()) return DataLossError(where + ": record truncated");
    Result<size_t> end = RecordKeyEnd(buf, r.length);
    if (!end.ok()) return end.status().WithContext(where);
    if (*end <= buf.size()) return std::string(RecordKey(buf));
    buf.resize(*end);
  }
  return InternalError(where + ": key not read");
}

Status DatasetImpl::OpenKeys(SegmentState& seg) {
  const std::string key = JoinKey(prefix_, seg.entry.keys.key);
  Result<TableObject> keys = TableObject::Open(*store_, key, seg.entry.keys.size);
  if (!keys.ok()) return keys.status().WithContext("key table");
  seg.keys = std::move(keys).value();
  return CheckTableHeader(std::span(seg.keys.data(), kKeysHeaderBytes), kKeysMagic,
                          seg.entry.num_samples, "key table " + key)
      .status();
}

Result<uint64_t> DatasetImpl::IndexOf(std::string_view key) {
  const uint64_t hash = Xxh3_64(key.data(), key.size());
  for (const std::unique_ptr<SegmentState>& seg_ptr : segments_) {
    SegmentState& seg = *seg_ptr;
    std::call_once(seg.keys_once, [&] { seg.keys_status = OpenKeys(seg); });
    GRANARY_RETURN_IF_ERROR(seg.keys_status);
    const std::byte* entries = seg.keys.data() + kKeysHeaderBytes;
    const uint64_t n = seg.entry.num_samples;
    auto hash_at = [&](uint64_t i) { return LoadLe<uint64_t>(entries + kKeyEntryBytes * i); };
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo) / 2;
      if (hash_at(mid) < hash) lo = mid + 1; else hi = mid;
    }
    // Entries are sorted by (hash, index): the first confirmed match is the segment's lowest.
    for (uint64_t i = lo; i < n && hash_at(i) == hash; ++i) {
      const uint64_t local = LoadLe<uint64_t>(entries + kKeyEntryBytes * i + 8);
      if (local >= n) {
        return DataLossError("key table " + JoinKey(prefix_, seg.entry.keys.key) + ": entry " +
                             std::to_string(i) + " names sample " + std::to_string(local) +
                             " of " + std::to_string(n));
      }
      GRANARY_ASSIGN_OR_RETURN(std::string found, Key(seg.entry.first_sample + local));
      if (found == key) return seg.entry.first_sample + local;
    }
  }
  return NotFoundError("key \"" + std::string(key.substr(0, 128)) + "\" is not in dataset \"" +
                       prefix_ + "\" version " + std::to_string(manifest_.version));
}

DatasetStats DatasetImpl::stats() const {
  DatasetStats s;
  s.samples_read = stats_.samples_read.load(std::memory_order_relaxed);
  s.bytes_read = stats_.bytes_read.load(std::memory_order_relaxed);
  s.device_bytes = stats_.device_bytes.load(std::memory_order_relaxed);
  s.page_cache_hits = stats_.page_cache_hits.load(std::memory_order_relaxed);
  s.corrupt_skipped = stats_.corrupt_skipped.load(std::memory_order_relaxed);
  return s;
}

}  // namespace dataset

Result<std::unique_ptr<Dataset>> Dataset::Open(std::shared_ptr<ObjectStore> store,
                                               std::string_view prefix,
                                               const DatasetOptions& options) {
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<dataset::DatasetImpl> d,
                           dataset::DatasetImpl::Open(std::move(store), std::string(prefix), options));
  return std::unique_ptr<Dataset>(std::move(d));
}

Result<std::unique_ptr<Dataset>> Dataset::Open(std::string_view url, const DatasetOptions& options) {
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<ObjectStore> store, OpenStore(url));
  return Open(std::shared_ptr<ObjectStore>(std::move(store)), "", options);
}

}  // namespace granary
