// The reader behind Dataset::Open: DatasetImpl and the pieces it is built from. Internal to
// src/dataset. The reading of batches lives in batch_read.cc, the rest in dataset_reader.cc.
#ifndef GRANARY_DATASET_DATASET_READER_H_
#define GRANARY_DATASET_DATASET_READER_H_

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/thread_pool.h"
#include "dataset/dataset_manifest.h"
#include "granary/dataset.h"
#include "granary/io.h"
#include "granary/store.h"

namespace granary::dataset {

// The bytes of an index or key-table object: memory-mapped read-only and shared (MAP_SHARED)
// where the store has local files, so every process on the node shares one page-cache copy and
// nothing is read at open; otherwise read into memory. Move-only; immutable once opened.
class TableObject {
 public:
  // Maps or reads `key`; DataLoss naming the key if its size is not `expected_size`.
  static Result<TableObject> Open(ObjectStore& store, const std::string& key,
                                  uint64_t expected_size);
  TableObject() = default;
  ~TableObject();
  TableObject(TableObject&& other) noexcept;
  TableObject& operator=(TableObject&& other) noexcept;
  const std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  bool mapped() const { return map_ != nullptr; }

 private:
  void* map_ = nullptr;         // mmap base, or null
  std::string held_;            // the bytes, when not mapped
  const std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

// Open descriptors of one shard (local stores), shared with the reads using them so that an
// LRU close never pulls an fd from under a read in flight.
struct ShardFiles {
  File buffered;
  File direct;               // O_DIRECT; not open when the file system refused it
  bool has_direct = false;
};

// Caches ShardFiles for up to `capacity` shards, closing the least recently used beyond.
// Thread-safe.
class ShardFileCache {
 public:
  explicit ShardFileCache(size_t capacity) : capacity_(capacity) {}
  // The cached files of shard `shard`, or null.
  std::shared_ptr<ShardFiles> Find(uint32_t shard);
  // Caches `files` for `shard` (replacing nothing if another thread was faster; returns the
  // cached one).
  std::shared_ptr<ShardFiles> Insert(uint32_t shard, std::shared_ptr<ShardFiles> files);

 private:
  using Lru = std::list<uint32_t>;
  struct Entry {
    std::shared_ptr<ShardFiles> files;
    Lru::iterator lru;
  };
  const size_t capacity_;
  std::mutex mu_;
  std::unordered_map<uint32_t, Entry> entries_;  // GUARDED_BY(mu_)
  Lru lru_;                                      // GUARDED_BY(mu_), most recent first
};

// Anonymous memory holding a batch's records: 2 MiB-aligned with transparent huge pages and *not*
// pre-faulted. First touches of fresh memory cost more than the copies on these VMs (measured:
// 1.4-2.5 GB/s vs 10 GB/s into reused memory), so pages are faulted in by the read threads as
// they fill them, in parallel and only as far as they are used. Move-only.
class Arena {
 public:
  static Result<Arena> Map(size_t bytes);  // rounded up to 2 MiB
  Arena() = default;
  ~Arena();
  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;
  std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// Arenas for batches, reused. Batches are built from chunks of one size (larger arenas only for
// a record or read that exceeds a chunk), so memory released by a batch of any size serves the
// next batch of any size. Thread-safe; shared by the Dataset and every Batch it returned, so it
// outlives both.
class ArenaPool {
 public:
  static constexpr size_t kChunkBytes = 4u << 20;
  static constexpr size_t kMaxIdleBytes = 512u << 20;
  // A chunk when bytes <= kChunkBytes; else the smallest idle arena that fits, or a new one.
  Result<Arena> Acquire(size_t bytes);
  // Keeps the arenas for reuse while idle arenas stay under kMaxIdleBytes (empties `arenas`).
  void Release(std::vector<Arena>& arenas);

 private:
  std::mutex mu_;
  std::vector<Arena> chunks_;  // GUARDED_BY(mu_): idle, kChunkBytes each, most recent last
  std::vector<Arena> large_;   // GUARDED_BY(mu_): idle, larger
  size_t idle_bytes_ = 0;      // GUARDED_BY(mu_)
};

// The field table of a version, shared with its batches.
struct FieldTable {
  std::vector<std::string> names;                    // names[id]
  std::unordered_map<std::string_view, uint16_t> ids;  // views into `names`
};

struct ShardState {
  std::string key;             // full store key
  uint64_t first_sample = 0;   // global
  uint64_t num_samples = 0;
  uint64_t record_bytes = 0;
  uint64_t size_bytes = 0;
  uint64_t segment_base = 0;   // segment-space offset of its first record
  uint32_t segment = 0;        // position in DatasetImpl::segments_
  uint32_t number = 0;         // shard number within its segment
};

struct SegmentState {
  SegmentEntry entry;          // from the manifest (keys relative to the prefix)
  TableObject index;           // opened at Open; entries validated lazily
  std::once_flag keys_once;    // the key table is opened on first IndexOf
  Status keys_status;
  TableObject keys;
};

// Where Locate put a sample.
struct RecordSpan {
  uint32_t shard = 0;
  uint64_t offset = 0;         // in the shard object
  uint32_t length = 0;
};

class DatasetImpl final : public Dataset {
 public:
  // Shards whose descriptors stay open (LRU beyond).
  static constexpr size_t kMaxOpenShards = 1024;

  static Result<std::unique_ptr<DatasetImpl>> Open(std::shared_ptr<ObjectStore> store,
                                                   std::string prefix,
                                                   const DatasetOptions& options);
  ~DatasetImpl() override;

  uint64_t size() const override { return manifest_.num_samples; }
  uint64_t version() const override { return manifest_.version; }
  uint64_t total_bytes() const override { return manifest_.total_bytes; }
  const std::vector<std::string>& field_names() const override { return fields_->names; }
  const std::vector<ShardInfo>& shards() const override { return shard_infos_; }
  uint64_t index_bytes() const override { return index_bytes_; }
  Result<SampleLocation> Locate(uint64_t index) const override;
  Result<std::string> Key(uint64_t index) override;
  Result<uint64_t> IndexOf(std::string_view key) override;
  Result<std::shared_ptr<Batch>> ReadBatch(std::span<const uint64_t> indices) override;
  Status Verify() override;
  DatasetStats stats() const override;

 private:
  struct Stats {
    std::atomic<uint64_t> samples_read{0}, bytes_read{0}, device_bytes{0}, page_cache_hits{0},
        corrupt_skipped{0};
  };
  struct ReadPart;  // batch_read.cc
  struct Rec;       // batch_read.cc

  DatasetImpl(std::shared_ptr<ObjectStore> store, std::string prefix,
              const DatasetOptions& options);
  Result<RecordSpan> LocateRecord(uint64_t index) const;
  // Reads bytes of a shard outside the batch path (headers, keys, Verify).
  Result<size_t> ReadShard(uint32_t shard, uint64_t offset, std::span<std::byte> dest);
  // The open files of a shard (local stores), its header checked on first open.
  Result<std::shared_ptr<ShardFiles>> Files(uint32_t shard);
  Status CheckHeaderOnce(uint32_t shard);
  // CheckHeaderOnce for many shards (local stores): the unchecked headers are read together,
  // one 4 KiB O_DIRECT read each, so a fresh reader's first batch does not wait for one
  // buffered (readahead-sized) read per shard in turn.
  Status CheckHeadersOnce(std::span<const uint32_t> shards);
  Status OpenKeys(SegmentState& seg);
  Status VerifySegment(uint32_t segment);
  Status ReadPartLocal(ReadPart& part);
  Status ReadPartRemote(ReadPart& part);
  Status ReadCold(ReadPart& part, std::vector<Rec*>& cold);
  Status ParseRec(ReadPart& part, Rec& r);

  std::shared_ptr<ObjectStore> store_;
  const std::string prefix_;
  const DatasetOptions options_;
  DatasetManifest manifest_;
  std::shared_ptr<FieldTable> fields_;
  std::vector<std::unique_ptr<SegmentState>> segments_;
  std::vector<ShardState> shard_states_;
  std::vector<uint64_t> shard_first_;        // first global sample of each shard (Locate)
  std::vector<ShardInfo> shard_infos_;
  std::unique_ptr<std::atomic<uint8_t>[]> header_checked_;  // per shard
  uint64_t index_bytes_ = 0;
  bool local_ = false;                       // the store has local files (OpenLocalFile)
  std::unique_ptr<IoEngine> engine_;
  std::unique_ptr<ThreadPool> read_pool_;    // read_threads - 1 helpers, or null
  ShardFileCache files_{kMaxOpenShards};
  std::shared_ptr<ArenaPool> arenas_ = std::make_shared<ArenaPool>();
  Stats stats_;
};

}  // namespace granary::dataset

#endif  // GRANARY_DATASET_DATASET_READER_H_
