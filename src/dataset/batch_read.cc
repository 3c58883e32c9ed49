// Dataset::ReadBatch, the hot path. A batch is located, deduplicated and sorted into file order,
// cut into runs of nearby records of one shard, and the runs are split over read_threads threads
// (the caller plus a pool), balanced by bytes. Each thread then, run by run:
//   * asks cachestat(2) once per run whether its pages are resident (per record only when a run
//     is partly resident);
//   * copies resident records with preadv2(RWF_NOWAIT) straight from the page cache, contiguous
//     records with one call, and parses and crc-checks them at once, while the bytes are still
//     in L2 (a crc pass over a whole large batch afterwards reads it back from memory);
//   * reads the rest from the device with O_DIRECT through the IoEngine, nearby records merged
//     into one request (gaps up to kMaxMergeGap read and dropped), then parses them.
// Stores without local files (S3) get one GetMany per thread, nearby records of a shard merged
// into one ranged GET (gaps up to kRemoteMergeGap, at least half of each GET records).
// Batch memory comes from pooled 4 MiB chunks that the threads fault in themselves. The batch
// keeps the requested order; repeats share one copy of their record.
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <future>

#include "dataset/dataset_format.h"
#include "dataset/dataset_reader.h"
#include "dataset/dataset_record.h"
#include "io/page_cache.h"

namespace granary::dataset {
namespace {

constexpr uint64_t kAlign = kDirectIoAlignment;
// Below this many records per thread, splitting costs more than it saves.
constexpr size_t kMinRecordsPerPart = 32;
// Cold records whose covering blocks are at most this far apart share one device read (the gap
// is read and dropped). Measured cold at 16 KiB, batch 256, on the dev VM's virtio disk: samples
// shuffled within windows of 1000 gave 68k samples/s with 16 KiB gaps, 60k with none, 52k with
// 64 KiB and 30k with 256 KiB (wasted bandwidth outgrows saved IOPS); a global shuffle is
// unaffected (few neighbours are that close).
constexpr uint64_t kMaxMergeGap = 16u << 10;
// Largest merged device read (and run). Sequential cold reads at batch 256 and 1024: 256 KiB
// beat 128 KiB (more requests, less bandwidth each) and 1-2 MiB (too few in flight per batch).
constexpr uint64_t kMaxMergedRead = 256u << 10;
// Stores without local files (S3): a request costs far more than the bytes of a small gap (on
// loopback RGW about 0.7 ms of server time, the time to stream ~0.5 MB; on AWS also money), so
// records up to kRemoteMergeGap apart share one ranged GET of at most kRemoteMaxRead.
constexpr uint64_t kRemoteMergeGap = 256u << 10;
constexpr uint64_t kRemoteMaxRead = 2u << 20;  // within a batch chunk (4 MiB): no dedicated arenas

uint64_t AlignDown(uint64_t x) { return x & ~(kAlign - 1); }
uint64_t AlignUp(uint64_t x) { return AlignDown(x + kAlign - 1); }

enum class RecState : uint8_t { kPending, kRead, kTruncated };

struct SampleView {
  uint64_t index = 0;
  std::string_view key;
  uint32_t field_begin = 0;
  uint32_t num_fields = 0;
  bool ok = false;
};

class BatchImpl final : public Batch {
 public:
  BatchImpl(std::shared_ptr<ArenaPool> pool, std::vector<Arena> arenas,
            std::shared_ptr<const FieldTable> fields, std::vector<SampleView> samples,
            std::vector<ParsedField> parsed, uint64_t corrupt, uint64_t bytes)
      : pool_(std::move(pool)), arenas_(std::move(arenas)), fields_(std::move(fields)),
        samples_(std::move(samples)), parsed_(std::move(parsed)), corrupt_(corrupt),
        bytes_(bytes) {}
  ~BatchImpl() override { pool_->Release(arenas_); }
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
  std::vector<Arena> arenas_;
  std::shared_ptr<const FieldTable> fields_;
  std::vector<SampleView> samples_;
  std::vector<ParsedField> parsed_;
  uint64_t corrupt_;
  uint64_t bytes_;
};

}  // namespace

// One distinct record of a batch (repeats of an index share it).
struct DatasetImpl::Rec {
  uint64_t index = 0;
  uint64_t offset = 0;         // in the shard
  uint32_t length = 0;
  uint32_t shard = 0;
  std::byte* data = nullptr;   // its bytes in the batch memory, once placed
  RecState state = RecState::kPending;
  bool ok = false;             // parsed (and checked)
  std::string_view key;
  uint32_t field_begin = 0;    // into its part's fields, then the batch's
  uint32_t num_fields = 0;
  uint64_t end() const { return offset + length; }
};

// The records one thread reads: whole runs, in file order.
struct DatasetImpl::ReadPart {
  std::span<Rec> recs;
  std::vector<std::pair<uint32_t, uint32_t>> runs;  // [begin, end) into recs
  ArenaPool* pool = nullptr;
  std::vector<Arena> arenas;   // what this part filled, handed to the Batch
  std::byte* open = nullptr;   // the chunk being filled (arenas move, their memory does not)
  size_t used = 0;             // bytes of it used
  std::vector<ParsedField> fields;
  uint64_t hits = 0, device_bytes = 0;

  // `bytes` of batch memory at an address congruent to `phase` modulo `align` (a power of two
  // <= 4096). Resident records keep their file offset's phase modulo 64, so source and
  // destination of the kernel's copy share their cache-line alignment.
  Result<std::byte*> Place(size_t bytes, size_t align, size_t phase) {
    if (bytes + align > ArenaPool::kChunkBytes) {  // a record larger than a chunk
      GRANARY_ASSIGN_OR_RETURN(Arena big, pool->Acquire(bytes + align));
      arenas.push_back(std::move(big));
      return arenas.back().data() + phase;
    }
    size_t at = (used + align - 1 - phase) / align * align + phase;
    if (open == nullptr || at + bytes > ArenaPool::kChunkBytes) {
      GRANARY_ASSIGN_OR_RETURN(Arena chunk, pool->Acquire(ArenaPool::kChunkBytes));
      open = chunk.data();
      arenas.push_back(std::move(chunk));
      at = phase;
    }
    used = at + bytes;
    return open + at;
  }
  std::string Where(const ShardState& sh, const Rec& r) const {
    return "shard " + sh.key + " sample " + std::to_string(r.index);
  }
};

Status DatasetImpl::ParseRec(ReadPart& part, Rec& r) {
  const uint32_t begin = static_cast<uint32_t>(part.fields.size());
  Status st = r.state == RecState::kRead
                  ? ParseRecord(std::span(r.data, r.length), options_.verify, &r.key, &part.fields)
                  : DataLossError("record truncated (the shard ends inside it)");
  for (uint32_t j = begin; st.ok() && j < part.fields.size(); ++j) {
    if (part.fields[j].id >= fields_->names.size()) {
      st = DataLossError("field id " + std::to_string(part.fields[j].id) +
                         " is not in the manifest's field table");
    }
  }
  if (!st.ok()) {
    if (!options_.skip_corrupt) return st.WithContext(part.Where(shard_states_[r.shard], r));
    part.fields.resize(begin);
    r.key = {};
    return Status::OK();
  }
  r.ok = true;
  r.field_begin = begin;
  r.num_fields = static_cast<uint32_t>(part.fields.size() - begin);
  return Status::OK();
}

Status DatasetImpl::ReadPartLocal(ReadPart& part) {
  // Descriptors of every shard touched, held for the whole part (LRU eviction cannot close them).
  std::vector<std::shared_ptr<ShardFiles>> held;
  std::vector<Rec*> cold;
  std::vector<uint8_t> resident;
  {
    std::vector<uint32_t> shards;
    for (auto [b, e] : part.runs) {
      if (shards.empty() || shards.back() != part.recs[b].shard) shards.push_back(part.recs[b].shard);
    }
    GRANARY_RETURN_IF_ERROR(CheckHeadersOnce(shards));
  }
  for (auto [b, e] : part.runs) {
    Rec* run = part.recs.data() + b;
    const size_t count = e - b;
    // Runs are in shard order: a new shard starts where the previous record's shard differs.
    if (b == part.runs[0].first || run[0].shard != part.recs[b - 1].shard) {
      GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(run[0].shard));
      GRANARY_ASSIGN_OR_RETURN(std::shared_ptr<ShardFiles> f, Files(run[0].shard));
      held.push_back(std::move(f));
    }
    const int fd = held.back()->buffered.fd();
    // Residency: one question per run; per record only when the run is partly resident.
    uint64_t run_end = 0;
    for (size_t i = 0; i < count; ++i) run_end = std::max(run_end, run[i].end());
    uint64_t pages = 0;
    const int64_t cached = CachedPages(fd, run[0].offset, run_end, &pages);
    resident.assign(count, cached < 0 || static_cast<uint64_t>(cached) == pages);
    if (cached > 0 && static_cast<uint64_t>(cached) < pages && count > 1) {
      for (size_t i = 0; i < count; ++i) {
        const int64_t c = CachedPages(fd, run[i].offset, run[i].end(), &pages);
        resident[i] = c < 0 || static_cast<uint64_t>(c) == pages;
      }
    }
    // Resident records: contiguous ones copied by one call, then parsed while hot.
    for (size_t i = 0; i < count;) {
      if (!resident[i]) {
        cold.push_back(&run[i++]);
        continue;
      }
      size_t j = i + 1;
      while (j < count && resident[j] && run[j].offset == run[j - 1].end()) ++j;
      const uint64_t begin = run[i].offset, bytes = run[j - 1].end() - begin;
      GRANARY_ASSIGN_OR_RETURN(std::byte* dest, part.Place(bytes, 64, begin % 64));
      const size_t got = CopyResident(fd, begin, dest, bytes);
      for (size_t k = i; k < j; ++k) {
        Rec& r = run[k];
        if (r.end() - begin > got) {
          cold.push_back(&r);  // evicted since asked, or the shard ends early: the device decides
          continue;
        }
        r.data = dest + (r.offset - begin);
        r.state = RecState::kRead;
        ++part.hits;
        GRANARY_RETURN_IF_ERROR(ParseRec(part, r));
      }
      i = j;
    }
  }
  std::sort(cold.begin(), cold.end());  // back to file order (recs are sorted)
  return ReadCold(part, cold);
}

Status DatasetImpl::ReadCold(ReadPart& part, std::vector<Rec*>& cold) {
  if (cold.empty()) return Status::OK();
  struct Group {
    size_t begin, end;  // into `cold`
    uint64_t a0, a1;    // block-aligned cover
    std::byte* mem;
    bool direct;
  };
  std::vector<Group> groups;
  for (size_t i = 0; i < cold.size(); ++i) {
    const Rec& r = *cold[i];
    if (!groups.empty()) {
      Group& g = groups.back();
      const uint64_t a1 = std::max(g.a1, AlignUp(r.end()));
      if (cold[g.begin]->shard == r.shard && AlignDown(r.offset) <= g.a1 + kMaxMergeGap &&
          a1 - g.a0 <= kMaxMergedRead) {
        g.end = i + 1;
        g.a1 = a1;
        continue;
      }
    }
    groups.push_back(Group{i, i + 1, AlignDown(r.offset), AlignUp(r.end()), nullptr, false});
  }
  std::vector<std::shared_ptr<ShardFiles>> files(groups.size());
  std::vector<IoRequest> requests(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    Group& gr = groups[g];
    GRANARY_ASSIGN_OR_RETURN(files[g], Files(cold[gr.begin]->shard));
    GRANARY_ASSIGN_OR_RETURN(gr.mem, part.Place(gr.a1 - gr.a0, kAlign, 0));
    gr.direct = options_.direct_io && files[g]->has_direct;
    for (size_t i = gr.begin; i < gr.end; ++i) cold[i]->data = gr.mem + (cold[i]->offset - gr.a0);
  }
  // Round 1 reads every group from the device; round 2 re-reads buffered the groups whose
  // O_DIRECT transfer was refused (EINVAL).
  std::vector<size_t> todo(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) todo[g] = g;
  for (int round = 1; round <= 2 && !todo.empty(); ++round) {
    requests.resize(todo.size());
    for (size_t t = 0; t < todo.size(); ++t) {
      Group& gr = groups[todo[t]];
      if (round == 2) gr.direct = false;
      // Buffered reads start at the first record: the head of the block is never needed.
      uint64_t from = gr.a0, to = gr.a1;
      if (!gr.direct) {
        from = cold[gr.begin]->offset;
        to = 0;
        for (size_t i = gr.begin; i < gr.end; ++i) to = std::max(to, cold[i]->end());
      }
      const ShardFiles& f = *files[todo[t]];
      requests[t] = IoRequest{IoOpcode::kRead, gr.direct ? f.direct.fd() : f.buffered.fd(), from,
                              gr.mem + (from - gr.a0), static_cast<size_t>(to - from)};
    }
    Status s = engine_->Run(requests);
    if (!s.ok()) return s.WithContext("reading dataset \"" + prefix_ + "\"");
    std::vector<size_t> refused;
    for (size_t t = 0; t < todo.size(); ++t) {
      Group& gr = groups[todo[t]];
      const int64_t r = requests[t].result;
      if (r == -EINVAL && gr.direct) {
        refused.push_back(todo[t]);
        continue;
      }
      if (r < 0) {  // the device cannot say which record of a merged read failed: name them
        std::string where = part.Where(shard_states_[cold[gr.begin]->shard], *cold[gr.begin]);
        if (gr.end - gr.begin > 1) {
          where += " (one read with samples up to " + std::to_string(cold[gr.end - 1]->index) +
                   ", " + std::to_string(gr.end - gr.begin) + " in all)";
        }
        return ErrnoToStatus(static_cast<int>(-r), where);
      }
      part.device_bytes += requests[t].length;
      const uint64_t got_end = requests[t].offset + static_cast<uint64_t>(r);  // in the shard
      for (size_t i = gr.begin; i < gr.end; ++i) {
        Rec& rec = *cold[i];
        rec.state = rec.end() <= got_end ? RecState::kRead : RecState::kTruncated;
        GRANARY_RETURN_IF_ERROR(ParseRec(part, rec));
      }
    }
    todo = std::move(refused);
  }
  return Status::OK();
}

Status DatasetImpl::ReadPartRemote(ReadPart& part) {
  // One ranged GET per run (ReadBatch formed them; gaps land in batch memory and are dropped).
  struct Group {
    size_t begin, end;  // into part.recs
    uint64_t from, to;  // in the shard
  };
  std::vector<Group> groups;
  for (auto [b, e] : part.runs) {
    GRANARY_RETURN_IF_ERROR(CheckHeaderOnce(part.recs[b].shard));
    uint64_t to = 0;
    for (uint32_t i = b; i < e; ++i) to = std::max(to, part.recs[i].end());
    groups.push_back(Group{b, e, part.recs[b].offset, to});
  }
  std::vector<ReadOp> ops(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const Group& gr = groups[g];
    GRANARY_ASSIGN_OR_RETURN(std::byte* mem, part.Place(gr.to - gr.from, 64, 0));
    for (size_t i = gr.begin; i < gr.end; ++i) {
      part.recs[i].data = mem + (part.recs[i].offset - gr.from);
    }
    ops[g].key = shard_states_[part.recs[gr.begin].shard].key;
    ops[g].offset = gr.from;
    ops[g].dest = std::span(mem, gr.to - gr.from);
  }
  GRANARY_RETURN_IF_ERROR(store_->GetMany(ops));
  for (size_t g = 0; g < groups.size(); ++g) {
    const Group& gr = groups[g];
    if (!ops[g].status.ok()) {
      std::string where = part.Where(shard_states_[part.recs[gr.begin].shard], part.recs[gr.begin]);
      if (gr.end - gr.begin > 1) {
        where += " (one read with samples up to " + std::to_string(part.recs[gr.end - 1].index) +
                 ", " + std::to_string(gr.end - gr.begin) + " in all)";
      }
      return ops[g].status.WithContext(where);
    }
    part.device_bytes += ops[g].bytes_read;
    const uint64_t got_end = gr.from + ops[g].bytes_read;
    for (size_t i = gr.begin; i < gr.end; ++i) {
      Rec& r = part.recs[i];
      r.state = r.end() <= got_end ? RecState::kRead : RecState::kTruncated;
      GRANARY_RETURN_IF_ERROR(ParseRec(part, r));
    }
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
  // Locate, then sort into file order and drop repeats: rec_of maps batch positions to records.
  std::vector<Rec> located(n);
  for (size_t i = 0; i < n; ++i) {
    GRANARY_ASSIGN_OR_RETURN(RecordSpan r, LocateRecord(indices[i]));
    Rec& rec = located[i];
    rec.index = indices[i];
    rec.offset = r.offset;
    rec.length = r.length;
    rec.shard = r.shard;
  }
  std::vector<uint32_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<uint32_t>(i);
  auto before = [&](uint32_t a, uint32_t b) {
    const Rec& x = located[a];
    const Rec& y = located[b];
    if (x.shard != y.shard) return x.shard < y.shard;
    if (x.offset != y.offset) return x.offset < y.offset;
    return x.index < y.index;
  };
  if (!std::is_sorted(order.begin(), order.end(), before)) {
    std::sort(order.begin(), order.end(), before);
  }
  std::vector<Rec> recs;
  recs.reserve(n);
  std::vector<uint32_t> rec_of(n);
  for (uint32_t pos : order) {
    if (recs.empty() || recs.back().index != located[pos].index) recs.push_back(located[pos]);
    rec_of[pos] = static_cast<uint32_t>(recs.size() - 1);
  }
  located = {};

  // Runs: nearby records of one shard. Local files: within kMaxMergeGap of each other (block
  // aligned), up to kMaxMergedRead. Remote stores: one ranged GET each, within kRemoteMergeGap,
  // up to kRemoteMaxRead, and at least half of it records (which also bounds the batch memory
  // the dropped gaps take to the batch's own size).
  std::vector<std::pair<uint32_t, uint32_t>> runs;
  uint64_t total = 0, run_end = 0, run_useful = 0;  // run_end: aligned up when local
  for (uint32_t i = 0; i < recs.size(); ++i) {
    const Rec& r = recs[i];
    total += r.length;
    if (!runs.empty() && recs[runs.back().first].shard == r.shard) {
      const Rec& first = recs[runs.back().first];
      bool joins;
      uint64_t end;
      if (local_) {
        end = std::max(run_end, AlignUp(r.end()));
        joins = AlignDown(r.offset) <= run_end + kMaxMergeGap &&
                end - AlignDown(first.offset) <= kMaxMergedRead;
      } else {
        end = std::max(run_end, r.end());
        joins = r.offset <= run_end + kRemoteMergeGap && end - first.offset <= kRemoteMaxRead &&
                2 * (run_useful + r.length) >= end - first.offset;
      }
      if (joins) {
        runs.back().second = i + 1;
        run_end = end;
        run_useful += r.length;
        continue;
      }
    }
    runs.emplace_back(i, i + 1);
    run_end = local_ ? AlignUp(r.end()) : r.end();
    run_useful = r.length;
  }

  // Parts: consecutive runs of about equal bytes, one per thread.
  const size_t num_parts =
      read_pool_ ? std::clamp<size_t>(recs.size() / kMinRecordsPerPart, 1, options_.read_threads)
                 : 1;
  std::vector<ReadPart> parts(recs.empty() ? 0 : num_parts);
  {
    size_t p = 0;
    uint64_t acc = 0;
    for (size_t k = 0; k < runs.size() && !parts.empty(); ++k) {
      parts[p].runs.push_back(runs[k]);
      for (uint32_t i = runs[k].first; i < runs[k].second; ++i) acc += recs[i].length;
      if (p + 1 < parts.size() && acc * parts.size() >= total * (p + 1)) ++p;
    }
  }
  for (ReadPart& part : parts) {
    part.pool = arenas_.get();
    if (part.runs.empty()) continue;
    const uint32_t b = part.runs.front().first;
    part.recs = std::span(recs).subspan(b, part.runs.back().second - b);
    for (auto& [rb, re] : part.runs) {
      rb -= b;
      re -= b;
    }
  }
  std::vector<Status> results(parts.size());
  auto run_part = [&](size_t p) {
    if (parts[p].recs.empty()) return;
    results[p] = local_ ? ReadPartLocal(parts[p]) : ReadPartRemote(parts[p]);
  };
  std::vector<std::future<void>> helpers;
  for (size_t p = 1; p < parts.size(); ++p) {
    helpers.push_back(read_pool_->Submit([&, p] { run_part(p); }));
  }
  if (!parts.empty()) run_part(0);
  for (auto& h : helpers) h.wait();  // always: the parts point into `recs`

  std::vector<Arena> arenas;
  std::vector<ParsedField> fields;
  uint64_t hits = 0, device = 0;
  Status failed;
  for (ReadPart& part : parts) {
    for (Arena& a : part.arenas) arenas.push_back(std::move(a));
    if (!failed.ok()) continue;
    const uint32_t base = static_cast<uint32_t>(fields.size());
    for (Rec& r : part.recs) r.field_begin += base;
    fields.insert(fields.end(), part.fields.begin(), part.fields.end());
    hits += part.hits;
    device += part.device_bytes;
  }
  for (const Status& s : results) {
    if (!s.ok()) {
      arenas_->Release(arenas);
      return s;
    }
  }
  std::vector<SampleView> samples(n);
  uint64_t corrupt = 0, bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    const Rec& r = recs[rec_of[i]];
    samples[i] = SampleView{r.index, r.key, r.field_begin, r.num_fields, r.ok};
    if (r.ok) bytes += r.length; else ++corrupt;
  }
  stats_.samples_read.fetch_add(n - corrupt, std::memory_order_relaxed);
  stats_.bytes_read.fetch_add(bytes, std::memory_order_relaxed);
  stats_.device_bytes.fetch_add(device, std::memory_order_relaxed);
  stats_.page_cache_hits.fetch_add(hits, std::memory_order_relaxed);
  stats_.corrupt_skipped.fetch_add(corrupt, std::memory_order_relaxed);
  return std::shared_ptr<Batch>(std::make_shared<BatchImpl>(arenas_, std::move(arenas), fields_,
                                                            std::move(samples), std::move(fields),
                                                            corrupt, bytes));
}

}  // namespace granary::dataset
