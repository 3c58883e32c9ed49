// Dataset::ReadBatch, the hot path, and the Batch it returns.
//
// One batch = one arena. Each sample gets a 4 KiB-aligned slot big enough for the aligned range
// covering its record, and the record always sits at (offset % 4096) inside the slot, so either
// way of reading it lands the bytes in the same place without an extra copy:
//   1. records whose pages are all resident (cachestat) are read buffered with RWF_NOWAIT:
//      they are done with one copy and never wait for the device;
//   2. the rest (EAGAIN or a partial prefix) are read with O_DIRECT as the aligned covering range
//      straight into the slot (buffered when direct_io is off or the file system refuses
//      O_DIRECT).
// Non-local stores get one GetMany of the exact ranges. Large batches are split over
// read_threads threads, each running its own IoEngine batch (queue depth 64), then parsing and
// crc-checking its records, so copies and checksums use every core.
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <future>
#include <unordered_map>

#include "dataset/dataset_format.h"
#include "dataset/dataset_reader.h"
#include "dataset/dataset_record.h"

namespace granary::dataset {
namespace {

constexpr uint64_t kAlign = kDirectIoAlignment;
constexpr size_t kArenaAlignment = 2u << 20;  // huge-page aligned: cheap to fault in
// Below this many samples per thread, splitting costs more than it saves.
constexpr size_t kMinSamplesPerPart = 32;

uint64_t AlignDown(uint64_t x) { return x & ~(kAlign - 1); }
uint64_t AlignUp(uint64_t x) { return AlignDown(x + kAlign - 1); }

// cachestat(2) (Linux 6.5): page-cache residency of a range without touching it.
struct CachestatRange {
  uint64_t off, len;
};
struct Cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
constexpr long kSysCachestat = 451;  // x86_64 and arm64 (generic table)

// Whether every page of [offset, offset + length) is resident. A RWF_NOWAIT read that misses
// still starts readahead around the miss (the kernel's filemap_get_pages), so sending cold
// records down the nowait path would read their neighbourhood twice: once as readahead, once
// with O_DIRECT (measured: 466 MB from the disk for 154 MB of O_DIRECT reads). Asking first
// keeps cold reads at one device transfer each. True when the kernel cannot tell (then the
// nowait read decides).
bool Resident(int fd, uint64_t offset, uint64_t length) {
  CachestatRange range{AlignDown(offset), AlignUp(offset + length) - AlignDown(offset)};
  Cachestat cs{};
  if (::syscall(kSysCachestat, fd, &range, &cs, 0) != 0) return true;
  return cs.nr_cache * kAlign >= range.len;
}

enum class SlotState : uint8_t { kPending, kRead, kTruncated };

struct Slot {
  uint64_t index = 0;       // dataset index
  uint64_t offset = 0;      // record offset in the shard
  uint64_t arena_off = 0;   // slot start in the arena (4 KiB-aligned)
  uint32_t length = 0;      // record bytes
  uint32_t rec_off = 0;     // record start inside the slot
  uint32_t shard = 0;
  SlotState state = SlotState::kPending;
};

struct SampleView {
  uint64_t index = 0;
  std::string_view key;
  uint32_t field_begin = 0;
  uint32_t num_fields = 0;
  bool ok = false;
};

class BatchImpl final : public Batch {
 public:
  BatchImpl(std::shared_ptr<ArenaPool> pool, AlignedBuffer arena,
            std::shared_ptr<const FieldTable> fields, std::vector<SampleView> samples,
            std::vector<ParsedField> parsed, uint64_t corrupt, uint64_t bytes)
      : pool_(std::move(pool)), arena_(std::move(arena)), fields_(std::move(fields)),
        samples_(std::move(samples)), parsed_(std::move(parsed)), corrupt_(corrupt),
        bytes_(bytes) {}
  ~BatchImpl() override {
    if (arena_.data() != nullptr) pool_->Release(std::move(arena_));
  }
  size_t size() const override { return samples_.size(); }
  uint64_t index(size_t i) const override { return samples_[i].index; }
  bool ok(size_t i) const override { return samples_[i].ok; }
  std::string_view key(size_t i) const override { return samples_[i].key; }
  size_t num_fields(size_t i) const override { return samples_[i].num_fields; }
  std::string_view field_name(size_t i, size_t j) const override {
    return fields_->names[parsed_[samples_[i].field_begin + j].id];
  }
  std::span<const std::byte> field(size_t i, size_t j) const override {
    return parsed_[samples_[i].field_begin + j].data;
  }
  std::optional<std::span<const std::byte>> field(size_t i, std::string_view name) const override {
    auto it = fields_->ids.find(name);
    if (it == fields_->ids.end()) return std::nullopt;
    const SampleView& s = samples_[i];
    for (uint32_t j = 0; j < s.num_fields; ++j) {
      if (parsed_[s.field_begin + j].id == it->second) return parsed_[s.field_begin + j].data;
    }
    return std::nullopt;
  }
  uint64_t corrupt_count() const override { return corrupt_; }
  uint64_t bytes() const override { return bytes_; }

 private:
  std::shared_ptr<ArenaPool> pool_;
  AlignedBuffer arena_;
  std::shared_ptr<const FieldTable> fields_;
  std::vector<SampleView> samples_;
  std::vector<ParsedField> parsed_;
  uint64_t corrupt_;
  uint64_t bytes_;
};

}  // namespace

// ---- ArenaPool ----

Result<AlignedBuffer> ArenaPool::Acquire(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t best = idle_.size();
    for (size_t i = 0; i < idle_.size(); ++i) {
      if (idle_[i].size() >= bytes && (best == idle_.size() || idle_[i].size() < idle_[best].size())) {
        best = i;
      }
    }
    if (best < idle_.size()) {
      AlignedBuffer b = std::move(idle_[best]);
      idle_.erase(idle_.begin() + best);
      idle_bytes_ -= b.size();
      return b;
    }
  }
  const size_t rounded = (std::max<size_t>(bytes, 1) + kArenaAlignment - 1) / kArenaAlignment *
                         kArenaAlignment;
  return AlignedBuffer::Allocate(rounded, kArenaAlignment);
}

void ArenaPool::Release(AlignedBuffer arena) {
  std::lock_guard<std::mutex> lock(mu_);
  idle_bytes_ += arena.size();
  idle_.push_back(std::move(arena));
  // Over budget: free the smallest idle arenas first (the big ones are the expensive ones).
  while (idle_bytes_ > kMaxIdleBytes && !idle_.empty()) {
    auto smallest = std::min_element(idle_.begin(), idle_.end(),
        [](const AlignedBuffer& a, const AlignedBuffer& b) { return a.size() < b.size(); });
    idle_bytes_ -= smallest->size();
    idle_.erase(smallest);
  }
}

// ---- ReadBatch ----

struct DatasetImpl::ReadPart {
  std::span<Slot> slots;
  std::byte* arena = nullptr;
  std::vector<SampleView> samples;
  std::vector<ParsedField> fields;
  uint64_t hits = 0, device_bytes = 0, corrupt = 0, bytes = 0;
  std::byte* Record(const Slot& s) const { return arena + s.arena_off + s.rec_off; }
  std::string Where(const ShardState& sh, const Slot& s) const {
    return "shard " + sh.key + " sample " + std::to_string(s.index);
  }
};

Status DatasetImpl::ReadPartLocal(ReadPart& part) {
  // Descriptors of every shard touched, held for the whole part (LRU eviction cannot close them).
  std::unordered_map<uint32_t, std::shared_ptr<ShardFiles>> files;
  for (const Slot& s : part.slots) {
    if (files.contains(s.shard)) continue;
    GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(s.shard));
    GRANARY_ASSIGN_OR_RETURN(files[s.shard], Files(s.shard));
  }
  std::vector<IoRequest> requests;
  std::vector<Slot*> owners;
  requests.reserve(part.slots.size());
  owners.reserve(part.slots.size());
  auto run = [&]() -> Status {
    Status s = requests.empty() ? Status::OK() : engine_->Run(requests);
    return s.ok() ? s : s.WithContext("reading dataset \"" + prefix_ + "\"");
  };
  // Round 1: page cache only, for the records that are resident.
  std::vector<Slot*> misses;
  for (Slot& s : part.slots) {
    const int fd = files[s.shard]->buffered.fd();
    if (!Resident(fd, s.offset, s.length)) {
      misses.push_back(&s);
      continue;
    }
    requests.push_back(IoRequest{IoOpcode::kRead, files[s.shard]->buffered.fd(), s.offset,
                                 part.Record(s), s.length, /*nowait=*/true});
    owners.push_back(&s);
  }
  GRANARY_RETURN_IF_ERROR(run());
  for (size_t i = 0; i < requests.size(); ++i) {
    // Anything short of the whole record (EAGAIN, a resident prefix, EOF, an error) goes to
    // round 2, which reads from the device and has the final word.
    if (requests[i].result == static_cast<int64_t>(owners[i]->length)) {
      owners[i]->state = SlotState::kRead;
      ++part.hits;
    } else {
      misses.push_back(owners[i]);
    }
  }
  // Round 2: the device. Rounds 2 and 3 share the result handling.
  std::vector<Slot*> refused;
  for (int round = 2; round <= 3; ++round) {
    std::vector<Slot*>& todo = round == 2 ? misses : refused;
    if (todo.empty()) continue;
    requests.clear();
    owners.clear();
    std::vector<bool> direct;
    for (Slot* s : todo) {
      ShardFiles& f = *files[s->shard];
      const bool use_direct = round == 2 && options_.direct_io && f.has_direct;
      if (use_direct) {
        const uint64_t a0 = AlignDown(s->offset);
        requests.push_back(IoRequest{IoOpcode::kRead, f.direct.fd(), a0, part.arena + s->arena_off,
                                     static_cast<size_t>(AlignUp(s->offset + s->length) - a0)});
      } else {
        requests.push_back(IoRequest{IoOpcode::kRead, f.buffered.fd(), s->offset, part.Record(*s),
                                     s->length});
      }
      direct.push_back(use_direct);
      owners.push_back(s);
    }
    GRANARY_RETURN_IF_ERROR(run());
    for (size_t i = 0; i < requests.size(); ++i) {
      Slot& s = *owners[i];
      const int64_t r = requests[i].result;
      const int64_t needed = direct[i] ? s.rec_off + s.length : s.length;
      if (r >= needed) {
        s.state = SlotState::kRead;
        part.device_bytes += requests[i].length;
      } else if (r >= 0) {
        s.state = SlotState::kTruncated;  // the shard ends inside the record
      } else if (r == -EINVAL && direct[i]) {
        refused.push_back(&s);  // O_DIRECT refused for this transfer: read it buffered
      } else {
        return ErrnoToStatus(static_cast<int>(-r), part.Where(shard_states_[s.shard], s));
      }
    }
  }
  return Status::OK();
}

Status DatasetImpl::ReadPartRemote(ReadPart& part) {
  std::vector<ReadOp> ops(part.slots.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    Slot& s = part.slots[i];
    GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(s.shard));
    ops[i].key = shard_states_[s.shard].key;
    ops[i].offset = s.offset;
    ops[i].dest = std::span(part.Record(s), s.length);
  }
  GRANARY_RETURN_IF_ERROR(store_->GetMany(ops));
  for (size_t i = 0; i < ops.size(); ++i) {
    Slot& s = part.slots[i];
    if (!ops[i].status.ok()) {
      return ops[i].status.WithContext(part.Where(shard_states_[s.shard], s));
    }
    part.device_bytes += ops[i].bytes_read;
    s.state = ops[i].bytes_read == s.length ? SlotState::kRead : SlotState::kTruncated;
  }
  return Status::OK();
}

Status DatasetImpl::ParsePart(ReadPart& part) {
  part.samples.resize(part.slots.size());
  for (size_t i = 0; i < part.slots.size(); ++i) {
    const Slot& s = part.slots[i];
    SampleView& v = part.samples[i];
    v.index = s.index;
    const uint32_t begin = static_cast<uint32_t>(part.fields.size());
    Status st = s.state == SlotState::kRead
                    ? ParseRecord(std::span(part.Record(s), s.length), options_.verify, &v.key,
                                  &part.fields)
                    : DataLossError("record truncated (the shard ends inside it)");
    for (uint32_t j = begin; st.ok() && j < part.fields.size(); ++j) {
      if (part.fields[j].id >= fields_->names.size()) {
        st = DataLossError("field id " + std::to_string(part.fields[j].id) +
                           " is not in the manifest's field table");
      }
    }
    if (!st.ok()) {
      if (!options_.skip_corrupt) return st.WithContext(part.Where(shard_states_[s.shard], s));
      part.fields.resize(begin);
      v.key = {};
      ++part.corrupt;
      continue;
    }
    v.ok = true;
    v.field_begin = begin;
    v.num_fields = static_cast<uint32_t>(part.fields.size() - begin);
    part.bytes += s.length;
  }
  return Status::OK();
}

Result<std::shared_ptr<Batch>> DatasetImpl::ReadBatch(std::span<const uint64_t> indices) {
  const size_t n = indices.size();
  for (size_t i = 0; i < n; ++i) {
    if (indices[i] >= manifest_.num_samples) {
      return OutOfRangeError("sample " + std::to_string(indices[i]) + " (batch position " +
                             std::to_string(i) + ") out of range [0, " +
                             std::to_string(manifest_.num_samples) + ") of dataset \"" +
                             prefix_ + "\"");
    }
  }
  std::vector<Slot> slots(n);
  uint64_t arena_bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    GRANARY_ASSIGN_OR_RETURN(RecordSpan r, LocateRecord(indices[i]));
    Slot& s = slots[i];
    s.index = indices[i];
    s.shard = r.shard;
    s.offset = r.offset;
    s.length = r.length;
    s.arena_off = arena_bytes;
    if (local_) {
      s.rec_off = static_cast<uint32_t>(r.offset % kAlign);
      arena_bytes += AlignUp(r.offset + r.length) - AlignDown(r.offset);
    } else {
      arena_bytes += AlignUp(r.length);
    }
  }
  AlignedBuffer arena;
  if (n > 0) {
    GRANARY_ASSIGN_OR_RETURN(arena, arenas_->Acquire(arena_bytes));
  }

  const size_t num_parts =
      read_pool_ ? std::clamp<size_t>(n / kMinSamplesPerPart, 1, options_.read_threads) : 1;
  std::vector<ReadPart> parts(num_parts);
  std::vector<Status> results(num_parts);
  auto run_part = [&](size_t p) {
    ReadPart& part = parts[p];
    Status s = local_ ? ReadPartLocal(part) : ReadPartRemote(part);
    results[p] = s.ok() ? ParsePart(part) : s;
  };
  for (size_t p = 0, begin = 0; p < num_parts; ++p) {
    const size_t count = n / num_parts + (p < n % num_parts ? 1 : 0);
    parts[p].slots = std::span(slots).subspan(begin, count);
    parts[p].arena = arena.data();
    begin += count;
  }
  std::vector<std::future<void>> helpers;
  for (size_t p = 1; p < num_parts; ++p) helpers.push_back(read_pool_->Submit([&, p] { run_part(p); }));
  if (num_parts > 0) run_part(0);
  for (auto& h : helpers) h.wait();  // always: the parts point into `slots` and `arena`

  std::vector<SampleView> samples;
  std::vector<ParsedField> fields;
  samples.reserve(n);
  uint64_t corrupt = 0, bytes = 0, hits = 0, device = 0;
  for (size_t p = 0; p < num_parts; ++p) {
    if (!results[p].ok()) {
      if (arena.data() != nullptr) arenas_->Release(std::move(arena));
      return results[p];
    }
    const uint32_t base = static_cast<uint32_t>(fields.size());
    for (SampleView& v : parts[p].samples) {
      v.field_begin += base;
      samples.push_back(v);
    }
    fields.insert(fields.end(), parts[p].fields.begin(), parts[p].fields.end());
    corrupt += parts[p].corrupt;
    bytes += parts[p].bytes;
    hits += parts[p].hits;
    device += parts[p].device_bytes;
  }
  stats_.samples_read.fetch_add(n - corrupt, std::memory_order_relaxed);
  stats_.bytes_read.fetch_add(bytes, std::memory_order_relaxed);
  stats_.device_bytes.fetch_add(device, std::memory_order_relaxed);
  stats_.page_cache_hits.fetch_add(hits, std::memory_order_relaxed);
  stats_.corrupt_skipped.fetch_add(corrupt, std::memory_order_relaxed);
  return std::shared_ptr<Batch>(std::make_shared<BatchImpl>(arenas_, std::move(arena), fields_,
                                                            std::move(samples), std::move(fields),
                                                            corrupt, bytes));
}

}  // namespace granary::dataset
