#include "checkpoint/tensor_restore.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/checksum.h"

namespace granary::checkpoint {
namespace {

// Scatter and checksum in slices small enough to stay in L2 between the copy and the crc.
constexpr size_t kSliceBytes = 256u << 10;

// One tensor's bytes in one data file, and how far their checks have come.
struct Need {
  size_t read = 0;
  uint64_t begin = 0;  // file offset
  uint64_t end = 0;
  uint64_t done = 0;   // bytes scattered so far (they arrive in file order)
  uint32_t crc = 0;    // crc32c of the current chunk so far
};

struct File {
  std::string key;          // full store key
  std::vector<Need> needs;  // sorted by begin, non-overlapping
  size_t cursor = 0;        // first need that may still intersect the next block
};

struct BlockRef {
  size_t file = 0;
  uint64_t offset = 0;  // multiple of kRestoreBlockBytes
};

struct Batch {
  size_t first_block = 0;
  std::vector<ReadOp> ops;
  std::vector<BufferPool::Lease> leases;
  std::future<Status> done;
};

class Restorer {
 public:
  Restorer(ObjectStore& store, const RankManifest& manifest, std::span<const TensorRead> reads,
           BufferPool& blocks)
      : store_(store), manifest_(manifest), reads_(reads), blocks_(blocks) {}

  Status Run(std::string_view root) {
    GRANARY_RETURN_IF_ERROR(Plan(root));
    std::deque<std::unique_ptr<Batch>> in_flight;
    size_t next = 0;
    Status status;
    while (status.ok() && (next < block_refs_.size() || !in_flight.empty())) {
      while (next < block_refs_.size() && in_flight.size() < 2) {
        Result<std::unique_ptr<Batch>> batch = Launch(&next);
        if (!batch.ok()) {
          status = batch.status();
          break;
        }
        in_flight.push_back(std::move(batch).value());
      }
      if (!status.ok() || in_flight.empty()) break;
      std::unique_ptr<Batch> batch = std::move(in_flight.front());
      in_flight.pop_front();
      status = batch->done.get();
      if (status.ok()) status = Scatter(*batch);
    }
    for (auto& batch : in_flight) batch->done.get().IgnoreError();  // failing already; drain
    GRANARY_RETURN_IF_ERROR(status);
    for (const File& file : files_) {
      for (const Need& need : file.needs) {
        if (need.done != need.end - need.begin) {
          return DataLossError("tensor \"" + reads_[need.read].entry->name + "\" in " + file.key +
                               ": data file is truncated (" + std::to_string(need.done) + " of " +
                               std::to_string(need.end - need.begin) + " bytes)");
        }
      }
    }
    return Status::OK();
  }

 private:
  Status Plan(std::string_view root) {
    std::map<std::string, size_t> file_of;
    for (size_t r = 0; r < reads_.size(); ++r) {
      const TensorEntry& e = *reads_[r].entry;
      if (reads_[r].dest.size() != e.length) {
        return InvalidArgumentError("tensor \"" + e.name + "\": destination has " +
                                    std::to_string(reads_[r].dest.size()) + " bytes, tensor has " +
                                    std::to_string(e.length));
      }
      if (e.length == 0) continue;
      const std::string key = JoinKey(root, e.key);
      auto [it, added] = file_of.emplace(key, files_.size());
      if (added) files_.push_back(File{key, {}, 0});
      files_[it->second].needs.push_back(Need{r, e.offset, e.offset + e.length, 0, 0});
    }
    for (size_t f = 0; f < files_.size(); ++f) {
      std::vector<Need>& needs = files_[f].needs;
      std::sort(needs.begin(), needs.end(), [](const Need& a, const Need& b) { return a.begin < b.begin; });
      uint64_t next_block = 0;  // first block not yet planned
      for (const Need& need : needs) {
        uint64_t block = std::max(next_block, need.begin / kRestoreBlockBytes * kRestoreBlockBytes);
        for (; block < need.end; block += kRestoreBlockBytes) block_refs_.push_back(BlockRef{f, block});
        next_block = block;
      }
    }
    return Status::OK();
  }

  Result<std::unique_ptr<Batch>> Launch(size_t* next) {
    auto batch = std::make_unique<Batch>();
    batch->first_block = *next;
    for (; *next < block_refs_.size() && batch->ops.size() < kRestoreBlocksPerBatch; ++*next) {
      GRANARY_ASSIGN_OR_RETURN(BufferPool::Lease lease, blocks_.Acquire());
      ReadOp& op = batch->ops.emplace_back();
      op.key = files_[block_refs_[*next].file].key;
      op.offset = block_refs_[*next].offset;
      op.dest = lease.span().first(kRestoreBlockBytes);
      batch->leases.push_back(std::move(lease));
    }
    std::span<ReadOp> ops(batch->ops);
    batch->done = std::async(std::launch::async, [this, ops] { return store_.GetMany(ops); });
    return batch;
  }

  Status Scatter(const Batch& batch) {
    for (size_t i = 0; i < batch.ops.size(); ++i) {
      const ReadOp& op = batch.ops[i];
      File& file = files_[block_refs_[batch.first_block + i].file];
      if (!op.status.ok()) {
        const Need& first = file.needs[std::min(file.cursor, file.needs.size() - 1)];
        return op.status.WithContext("tensor \"" + reads_[first.read].entry->name + "\" in " + file.key);
      }
      const uint64_t block_begin = op.offset;
      const uint64_t block_end = op.offset + op.bytes_read;  // short only at the end of the file
      while (file.cursor < file.needs.size() && file.needs[file.cursor].end <= block_begin) ++file.cursor;
      for (size_t n = file.cursor; n < file.needs.size() && file.needs[n].begin < block_begin + kRestoreBlockBytes; ++n) {
        Need& need = file.needs[n];
        const uint64_t from = std::max(need.begin + need.done, block_begin);
        const uint64_t to = std::min(need.end, block_end);
        if (from < to) GRANARY_RETURN_IF_ERROR(Consume(need, file.key, op.dest.data() + (from - block_begin), from, to));
      }
    }
    return Status::OK();
  }

  // Copies file bytes [from, to) of `need` (at `src`) into place and checks completed chunks.
  Status Consume(Need& need, const std::string& key, const std::byte* src, uint64_t from, uint64_t to) {
    const TensorRead& read = reads_[need.read];
    const uint64_t chunk_bytes = manifest_.chunk_bytes;
    uint64_t pos = from - need.begin;  // == need.done: bytes arrive in order
    const uint64_t stop = to - need.begin;
    while (pos < stop) {
      const uint64_t chunk = pos / chunk_bytes;
      const uint64_t chunk_end = std::min<uint64_t>((chunk + 1) * chunk_bytes, read.entry->length);
      const size_t n = static_cast<size_t>(std::min<uint64_t>({chunk_end, stop, pos + kSliceBytes}) - pos);
      std::memcpy(read.dest.data() + pos, src, n);
      need.crc = Crc32c(src, n, need.crc);
      src += n;
      pos += n;
      if (pos == chunk_end) {
        if (need.crc != read.entry->chunk_crc32c[chunk]) {
          return DataLossError("tensor \"" + read.entry->name + "\" in " + key +
                               ": crc32c mismatch in chunk " + std::to_string(chunk) + " (bytes " +
                               std::to_string(need.begin + chunk * chunk_bytes) + ".." +
                               std::to_string(need.begin + chunk_end) + ")");
        }
        need.crc = 0;
      }
    }
    need.done = pos;
    return Status::OK();
  }

  ObjectStore& store_;
  const RankManifest& manifest_;
  std::span<const TensorRead> reads_;
  BufferPool& blocks_;
  std::vector<File> files_;
  std::vector<BlockRef> block_refs_;  // in file order within each file
};

}  // namespace

Status RestoreTensors(ObjectStore& store, std::string_view root, const RankManifest& manifest,
                      std::span<const TensorRead> reads, BufferPool& blocks) {
  if (blocks.buffer_bytes() < kRestoreBlockBytes) {
    return InvalidArgumentError("RestoreTensors: block buffers must hold at least 4 MiB");
  }
  return Restorer(store, manifest, reads, blocks).Run(root);
}

}  // namespace granary::checkpoint
