// DatasetWriter: packs samples into the shards of a fresh segment and publishes a version
// (docs/formats/dataset.md, "Publication"). Shards stream through ObjectStore writers; a full
// shard is committed on a background thread while the next one fills, with at most
// shard_writers shards uncommitted. Finish puts the segment's index and key table, then the
// manifest with PutIfAbsent: nothing is visible before that put succeeds.
#include <algorithm>
#include <atomic>
#include <deque>
#include <future>
#include <random>
#include <unordered_map>

#include "core/checksum.h"
#include "core/thread_pool.h"
#include "dataset/dataset_catalog.h"
#include "dataset/dataset_format.h"
#include "dataset/dataset_manifest.h"
#include "dataset/dataset_record.h"
#include "granary/dataset.h"

namespace granary {

Status DatasetWriterOptions::Validate() const {
  if (shard_bytes < 1) return InvalidArgumentError("DatasetWriterOptions.shard_bytes must be >= 1");
  if (shard_writers < 1 || shard_writers > 64) {
    return InvalidArgumentError("DatasetWriterOptions.shard_writers must be in [1, 64], got " +
                                std::to_string(shard_writers));
  }
  return Status::OK();
}

namespace dataset {
namespace {

// Parts of 8 MiB keep the device busy with few requests (and satisfy S3's 5 MiB minimum);
// small shards use one part each so tests and tiny datasets do not stage 8 MiB per shard.
WriterOptions ShardWriterOptions(uint64_t shard_bytes) {
  constexpr uint64_t kMaxPart = 8u << 20, kMinPart = 1u << 20;
  const uint64_t rounded = (shard_bytes + kShardHeaderBytes + 4095) / 4096 * 4096;
  WriterOptions w;
  w.part_bytes = static_cast<size_t>(std::clamp(rounded, kMinPart, kMaxPart));
  w.max_parts_in_flight = 2;
  return w;
}

uint64_t RandomWriterId() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

class DatasetWriterImpl final : public DatasetWriter {
 public:
  DatasetWriterImpl(std::shared_ptr<ObjectStore> store, std::string prefix,
                    const DatasetWriterOptions& options, DatasetManifest base, uint64_t version)
      : store_(std::move(store)),
        prefix_(std::move(prefix)),
        options_(options),
        base_(std::move(base)),
        version_(version),
        writer_id_(RandomWriterId()),
        segment_(SegmentName(version, writer_id_)),
        fields_(base_.fields),
        aborted_(std::make_shared<std::atomic<bool>>(false)) {
    for (size_t id = 0; id < fields_.size(); ++id) field_ids_.emplace(fields_[id], id);
    offsets_.push_back(0);
    if (options_.shard_writers > 1) {
      commit_pool_ = std::make_unique<ThreadPool>(options_.shard_writers - 1, "ds-commit");
    }
  }

  ~DatasetWriterImpl() override {
    // Unfinished: background commits turn into aborts; the open shard aborts when destroyed.
    aborted_->store(true);
    for (auto& f : committing_) f.wait();
  }

  Status Add(std::string_view key, std::span<const FieldData> fields) override;
  Result<DatasetWriteStats> Finish() override;
  uint64_t samples_added() const override { return offsets_.size() - 1; }
  uint64_t bytes_added() const override { return offsets_.back(); }

 private:
  Status Fail(Status s) {
    if (status_.ok()) status_ = std::move(s);
    return status_;
  }
  std::string Key(std::string_view relative) const { return JoinKey(prefix_, relative); }
  Status MapFields(std::string_view key, std::span<const FieldData> fields);
  Status OpenShard();
  Status CloseShard(bool wait);
  Status WaitCommits(size_t keep);
  Status PutTables(SegmentEntry* seg, uint64_t* duplicates);
  void RemoveSegment();

  std::shared_ptr<ObjectStore> store_;
  const std::string prefix_;
  const DatasetWriterOptions options_;
  const DatasetManifest base_;
  const uint64_t version_;
  const uint64_t writer_id_;
  const std::string segment_;
  std::vector<std::string> fields_;                         // field table, base fields first
  std::unordered_map<std::string, uint16_t> field_ids_;
  std::vector<uint64_t> offsets_;                           // segment space, n + 1 entries
  std::vector<std::pair<uint64_t, uint64_t>> key_entries_;  // (XXH3-64 of key, local index)
  std::vector<ShardEntry> shards_;                          // closed and open shards
  std::unique_ptr<ObjectWriter> shard_;                     // the open shard, or null
  std::unique_ptr<ThreadPool> commit_pool_;                 // null when shard_writers == 1
  std::deque<std::future<Status>> committing_;
  std::shared_ptr<std::atomic<bool>> aborted_;              // read by background commits
  std::vector<RecordField> record_fields_;                  // scratch
  std::string head_;                                        // scratch
  Status status_;                                           // first error; sticky
  bool finished_ = false;
};

Status DatasetWriterImpl::MapFields(std::string_view key, std::span<const FieldData> fields) {
  record_fields_.clear();
  for (const FieldData& f : fields) {
    Status s = ValidateFieldName(f.name);
    if (!s.ok()) return s.WithContext("sample \"" + std::string(key.substr(0, 64)) + "\"");
    auto it = field_ids_.find(std::string(f.name));
    if (it == field_ids_.end()) {
      if (fields_.size() >= 65535) {
        return InvalidArgumentError("sample \"" + std::string(key.substr(0, 64)) +
                                    "\": more than 65535 distinct field names in the dataset");
      }
      it = field_ids_.emplace(std::string(f.name), static_cast<uint16_t>(fields_.size())).first;
      fields_.emplace_back(f.name);
    }
    record_fields_.push_back(RecordField{it->second, f.data});
  }
  // Distinct names within the sample (ids are 1:1 with names).
  std::vector<uint16_t> ids;
  ids.reserve(record_fields_.size());
  for (const RecordField& f : record_fields_) ids.push_back(f.id);
  std::sort(ids.begin(), ids.end());
  if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) {
    return InvalidArgumentError("sample \"" + std::string(key.substr(0, 64)) +
                                "\": a field name appears twice");
  }
  return Status::OK();
}

Status DatasetWriterImpl::Add(std::string_view key, std::span<const FieldData> fields) {
  GRANARY_RETURN_IF_ERROR(status_);
  if (finished_) return FailedPreconditionError("DatasetWriter: Add after Finish");
  if (key.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("sample key contains a NUL byte");
  }
  // Field names first: the key's own checks come from RecordBytes.
  const size_t known_fields = fields_.size();
  Status s = MapFields(key, fields);
  if (s.ok()) s = EncodeRecordHead(key, record_fields_, &head_);
  if (!s.ok()) {
    // A rejected sample must not leave its new field names in the table.
    for (size_t id = known_fields; id < fields_.size(); ++id) field_ids_.erase(fields_[id]);
    fields_.resize(known_fields);
    return s;
  }
  const uint64_t record_bytes = LoadLe<uint32_t>(head_.data() + 4);
  if (offsets_.size() - 1 >= (1ULL << 48)) return InvalidArgumentError("too many samples");
  // Background commit failures surface on the next Add.
  while (!committing_.empty() &&
         committing_.front().wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
    GRANARY_RETURN_IF_ERROR(WaitCommits(committing_.size() - 1));
  }
  if (!shard_) GRANARY_RETURN_IF_ERROR(OpenShard());
  ShardEntry& sh = shards_.back();
  s = shard_->Append(std::as_bytes(std::span(head_.data(), head_.size())));
  for (size_t j = 0; s.ok() && j < record_fields_.size(); ++j) {
    s = shard_->Append(record_fields_[j].data);
  }
  if (!s.ok()) return Fail(s.WithContext("shard " + Key(sh.key)));
  const uint64_t local = offsets_.size() - 1;
  key_entries_.emplace_back(Xxh3_64(key.data(), key.size()), local);
  offsets_.push_back(offsets_.back() + record_bytes);
  sh.num_samples += 1;
  sh.record_bytes += record_bytes;
  sh.size_bytes += record_bytes;
  if (sh.size_bytes >= options_.shard_bytes) return CloseShard(/*wait=*/false);
  return Status::OK();
}

Status DatasetWriterImpl::OpenShard() {
  const uint32_t number = static_cast<uint32_t>(shards_.size());
  ShardEntry sh;
  sh.key = ShardKey(segment_, number);
  sh.first_sample = base_.num_samples + offsets_.size() - 1;
  sh.size_bytes = kShardHeaderBytes;
  Result<std::unique_ptr<ObjectWriter>> w =
      store_->NewWriter(Key(sh.key), ShardWriterOptions(options_.shard_bytes));
  if (!w.ok()) return Fail(w.status().WithContext("shard " + Key(sh.key)));
  const std::string header = EncodeShardHeader(number, writer_id_);
  Status s = (*w)->Append(std::as_bytes(std::span(header.data(), header.size())));
  if (!s.ok()) return Fail(s.WithContext("shard " + Key(sh.key)));
  shard_ = std::move(w).value();
  shards_.push_back(std::move(sh));
  return Status::OK();
}

// Hands the open shard to a background commit (or commits it here when `wait` or when there is
// no pool), keeping at most shard_writers shards uncommitted.
Status DatasetWriterImpl::CloseShard(bool wait) {
  if (!shard_) return Status::OK();
  const std::string key = Key(shards_.back().key);
  if (wait || !commit_pool_) {
    Status s = shard_->Commit();
    shard_.reset();
    return s.ok() ? s : Fail(s.WithContext("shard " + key));
  }
  GRANARY_RETURN_IF_ERROR(WaitCommits(options_.shard_writers - 2));
  std::shared_ptr<ObjectWriter> writer(std::move(shard_));
  committing_.push_back(commit_pool_->Submit([writer, key, aborted = aborted_]() -> Status {
    if (aborted->load()) return writer->Abort();
    Status s = writer->Commit();
    return s.ok() ? s : s.WithContext("shard " + key);
  }));
  return Status::OK();
}

// Waits until at most `keep` background commits are pending; the first failure is sticky.
Status DatasetWriterImpl::WaitCommits(size_t keep) {
  while (committing_.size() > keep) {
    Status s = committing_.front().get();
    committing_.pop_front();
    if (!s.ok()) return Fail(s);
  }
  return Status::OK();
}

Status DatasetWriterImpl::PutTables(SegmentEntry* seg, uint64_t* duplicates) {
  const uint64_t n = offsets_.size() - 1;
  std::string index(kIndexHeaderBytes + 8 * (n + 1), '\0');
  std::memcpy(index.data() + kIndexHeaderBytes, offsets_.data(), 8 * (n + 1));
  const uint32_t index_crc = Crc32c(index.data() + kIndexHeaderBytes, 8 * (n + 1));
  const std::string index_header = EncodeTableHeader(kIndexMagic, index_crc, n);
  std::memcpy(index.data(), index_header.data(), kIndexHeaderBytes);

  std::sort(key_entries_.begin(), key_entries_.end());
  std::string keys(kKeysHeaderBytes + kKeyEntryBytes * n, '\0');
  *duplicates = 0;
  for (uint64_t i = 0; i < n; ++i) {
    StoreLe<uint64_t>(keys.data() + kKeysHeaderBytes + kKeyEntryBytes * i, key_entries_[i].first);
    StoreLe<uint64_t>(keys.data() + kKeysHeaderBytes + kKeyEntryBytes * i + 8,
                      key_entries_[i].second);
    // Equal 64-bit hashes: a key added again (a true collision of distinct keys is ~n^2/2^65).
    // Counted once per repeated key, on its second occurrence.
    if (i > 0 && key_entries_[i].first == key_entries_[i - 1].first &&
        (i < 2 || key_entries_[i - 2].first != key_entries_[i].first)) {
      ++*duplicates;
    }
  }
  const uint32_t keys_crc = Crc32c(keys.data() + kKeysHeaderBytes, kKeyEntryBytes * n);
  const std::string keys_header = EncodeTableHeader(kKeysMagic, keys_crc, n);
  std::memcpy(keys.data(), keys_header.data(), kKeysHeaderBytes);

  seg->index = ObjectRef{IndexKey(segment_), Crc32c(index), index.size()};
  seg->keys = ObjectRef{KeysKey(segment_), Crc32c(keys), keys.size()};
  Status s = store_->Put(Key(seg->index.key), index);
  if (!s.ok()) return Fail(s.WithContext("index " + Key(seg->index.key)));
  s = store_->Put(Key(seg->keys.key), keys);
  if (!s.ok()) return Fail(s.WithContext("key table " + Key(seg->keys.key)));
  return Status::OK();
}

void DatasetWriterImpl::RemoveSegment() {
  std::vector<std::string> keys = {IndexKey(segment_), KeysKey(segment_)};
  for (const ShardEntry& sh : shards_) keys.push_back(sh.key);
  for (const std::string& k : keys) {
    store_->Delete(Key(k)).IgnoreError();  // best effort: leftovers are collected as garbage
  }
}

Result<DatasetWriteStats> DatasetWriterImpl::Finish() {
  GRANARY_RETURN_IF_ERROR(status_);
  if (finished_) return FailedPreconditionError("DatasetWriter: Finish called twice");
  const uint64_t n = offsets_.size() - 1;
  if (n == 0) {
    return FailedPreconditionError("DatasetWriter for \"" + prefix_ +
                                   "\": no samples added; nothing published");
  }
  GRANARY_RETURN_IF_ERROR(CloseShard(/*wait=*/true));
  GRANARY_RETURN_IF_ERROR(WaitCommits(0));
  SegmentEntry seg;
  seg.name = segment_;
  seg.version = version_;
  seg.writer_id = writer_id_;
  seg.first_sample = base_.num_samples;
  seg.num_samples = n;
  seg.record_bytes = offsets_.back();
  seg.shards = shards_;
  uint64_t duplicates = 0;
  GRANARY_RETURN_IF_ERROR(PutTables(&seg, &duplicates));

  DatasetManifest m = base_;
  m.version = version_;
  m.created_unix_ns = WallClockNanos();
  m.fields = fields_;
  m.num_samples += n;
  m.total_bytes += seg.record_bytes;
  m.segments.push_back(std::move(seg));
  GRANARY_ASSIGN_OR_RETURN(std::string bytes, EncodeManifest(m));
  const std::string key = Key(ManifestKey(version_));
  Status s = store_->PutIfAbsent(key, bytes);
  if (s.code() == StatusCode::kAlreadyExists) {
    RemoveSegment();
    return Fail(AlreadyExistsError("dataset \"" + prefix_ + "\": version " +
                                   std::to_string(version_) +
                                   " was published by another writer meanwhile (" + key +
                                   "); this write was discarded"));
  }
  if (!s.ok()) return Fail(s.WithContext("manifest " + key));
  finished_ = true;
  DatasetWriteStats stats;
  stats.version = version_;
  stats.samples_added = n;
  stats.bytes_added = offsets_.back();
  stats.shards_added = shards_.size();
  stats.duplicate_keys = duplicates;
  stats.total_samples = m.num_samples;
  return stats;
}

}  // namespace
}  // namespace dataset

Result<std::unique_ptr<DatasetWriter>> DatasetWriter::Create(std::shared_ptr<ObjectStore> store,
                                                             std::string_view prefix,
                                                             const DatasetWriterOptions& options) {
  using namespace dataset;
  GRANARY_RETURN_IF_ERROR(options.Validate());
  if (!store) return InvalidArgumentError("DatasetWriter::Create: null store");
  GRANARY_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, ListVersions(*store, prefix));
  DatasetManifest base;
  if (!versions.empty()) {
    if (!options.append) {
      return AlreadyExistsError("dataset \"" + std::string(prefix) + "\" in " + store->url() +
                                " already has version " + std::to_string(versions.back()) +
                                "; set append=true to add samples to it");
    }
    GRANARY_ASSIGN_OR_RETURN(base, LoadManifest(*store, prefix, versions.back()));
  }
  const uint64_t version = versions.empty() ? 1 : versions.back() + 1;
  if (version > kMaxVersion) return ResourceExhaustedError("dataset version limit reached");
  std::set<std::string> referenced;
  for (const SegmentEntry& seg : base.segments) referenced.insert(seg.name);
  GRANARY_RETURN_IF_ERROR(
      CollectGarbageSegments(*store, prefix, referenced, WallClockNanos()).status());
  return std::unique_ptr<DatasetWriter>(new DatasetWriterImpl(
      std::move(store), std::string(prefix), options, std::move(base), version));
}

Result<std::unique_ptr<DatasetWriter>> DatasetWriter::Create(std::string_view url,
                                                             const DatasetWriterOptions& options) {
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<ObjectStore> store, OpenStore(url));
  return Create(std::shared_ptr<ObjectStore>(std::move(store)), "", options);
}

}  // namespace granary
