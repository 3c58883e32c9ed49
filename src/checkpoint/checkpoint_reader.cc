#include "checkpoint/checkpoint_reader.h"

#include <algorithm>
#include <deque>
#include <future>

#include "checkpoint/checkpoint_format.h"
#include "core/checksum.h"

namespace granary::checkpoint {

Result<CommitRecord> ReadCommit(ObjectStore& store, std::string_view root, uint64_t step) {
  const std::string key = JoinKey(root, CommitKey(step));
  Result<std::string> bytes = store.GetAll(key);
  if (!bytes.ok()) {
    if (bytes.status().code() == StatusCode::kNotFound) {
      return NotFoundError("step " + std::to_string(step) + " is not committed (no " + key + ")");
    }
    return bytes.status();
  }
  GRANARY_ASSIGN_OR_RETURN(CommitRecord record, DecodeCommit(*bytes, key));
  if (record.step != step) return DataLossError("COMMIT " + key + ": records step " + std::to_string(record.step));
  return record;
}

Result<std::vector<uint64_t>> ListCommittedSteps(ObjectStore& store, std::string_view root) {
  const std::string prefix = JoinKey(root, kStepPrefix);
  const size_t root_len = prefix.size() - kStepPrefix.size();
  GRANARY_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.List(prefix));
  std::vector<uint64_t> steps;
  for (const ObjectInfo& info : objects) {
    std::optional<uint64_t> step = ParseCommitKey(std::string_view(info.key).substr(root_len));
    if (!step) continue;
    Result<CommitRecord> record = ReadCommit(store, root, *step);
    if (record.ok()) {
      steps.push_back(*step);
    } else if (record.status().code() != StatusCode::kDataLoss &&
               record.status().code() != StatusCode::kInvalidArgument &&
               record.status().code() != StatusCode::kNotFound) {
      return record.status();  // a store error, not a damaged COMMIT
    }
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

Result<uint64_t> ReadLatestStep(ObjectStore& store, std::string_view root) {
  const std::string key = JoinKey(root, kLatestName);
  Result<std::string> hint = store.GetAll(key);
  if (hint.ok()) {
    Result<uint64_t> step = DecodeLatest(*hint, key);
    if (step.ok() && ReadCommit(store, root, *step).ok()) {
      // The hint may lag behind a newer commit; it is only a shortcut when nothing is newer.
      Result<std::vector<uint64_t>> steps = ListCommittedSteps(store, root);
      if (steps.ok() && !steps->empty() && steps->back() > *step) return steps->back();
      return *step;
    }
  }
  GRANARY_ASSIGN_OR_RETURN(std::vector<uint64_t> steps, ListCommittedSteps(store, root));
  if (steps.empty()) return NotFoundError("no committed checkpoint under \"" + std::string(root) + "\"");
  return steps.back();
}

Result<RankManifest> ReadManifest(ObjectStore& store, std::string_view root,
                                  const CommitRecord& commit, uint32_t rank) {
  if (rank >= commit.manifests.size()) {
    return InvalidArgumentError("rank " + std::to_string(rank) + " not in step " + std::to_string(commit.step));
  }
  const ManifestRef& ref = commit.manifests[rank];
  const std::string key = JoinKey(root, ref.key);
  GRANARY_ASSIGN_OR_RETURN(std::string bytes, store.GetAll(key));
  if (bytes.size() != ref.length || Crc32c(bytes) != ref.crc32c) {
    return DataLossError("manifest " + key + ": does not match its COMMIT record (length or crc32c)");
  }
  GRANARY_ASSIGN_OR_RETURN(RankManifest m, DecodeManifest(bytes, key));
  if (m.step != commit.step || m.rank != rank || m.world_size != commit.world_size) {
    return DataLossError("manifest " + key + ": step/rank/world_size differ from its COMMIT");
  }
  return m;
}

namespace {

// ReadTensors reads in batches of about this many bytes (two batches fit LocalStore's bounce
// buffers for misaligned destinations), two batches in flight, and checks a
// batch's checksums while the next ones are read, so verification hides behind the device.
constexpr uint64_t kReadBatchBytes = 64ULL << 20;
constexpr size_t kBatchesInFlight = 2;

struct OpInfo {
  size_t read_index;
  size_t chunk;
};

Status CheckBatch(std::span<const TensorRead> reads, std::span<ReadOp> ops,
                  std::span<const OpInfo> infos) {
  for (size_t i = 0; i < ops.size(); ++i) {
    const TensorEntry& e = *reads[infos[i].read_index].entry;
    const std::string where = "tensor \"" + e.name + "\" in " + ops[i].key;
    if (!ops[i].status.ok()) return ops[i].status.WithContext(where);
    if (ops[i].bytes_read != ops[i].dest.size()) {
      return DataLossError(where + ": data file is truncated at chunk " + std::to_string(infos[i].chunk));
    }
    if (Crc32c(ops[i].dest.data(), ops[i].dest.size()) != e.chunk_crc32c[infos[i].chunk]) {
      return DataLossError(where + ": crc32c mismatch in chunk " + std::to_string(infos[i].chunk) +
                           " (bytes " + std::to_string(ops[i].offset) + ".." +
                           std::to_string(ops[i].offset + ops[i].dest.size()) + ")");
    }
  }
  return Status::OK();
}

}  // namespace

Status ReadTensors(ObjectStore& store, std::string_view root, const RankManifest& manifest,
                   std::span<const TensorRead> reads, bool verify_hash) {
  std::vector<ReadOp> ops;
  std::vector<OpInfo> infos;
  std::vector<size_t> batch_begin{0};  // op index where each batch starts
  uint64_t batch_bytes = 0;
  const uint64_t chunk_bytes = manifest.chunk_bytes;
  for (size_t r = 0; r < reads.size(); ++r) {
    const TensorEntry& e = *reads[r].entry;
    if (reads[r].dest.size() != e.length) {
      return InvalidArgumentError("tensor \"" + e.name + "\": destination has " +
                                  std::to_string(reads[r].dest.size()) + " bytes, tensor has " +
                                  std::to_string(e.length));
    }
    const std::string key = JoinKey(root, e.key);
    for (size_t c = 0; c < e.chunk_crc32c.size(); ++c) {
      const uint64_t pos = c * chunk_bytes;
      ReadOp op;
      op.key = key;
      op.offset = e.offset + pos;
      op.dest = reads[r].dest.subspan(pos, std::min<uint64_t>(chunk_bytes, e.length - pos));
      batch_bytes += op.dest.size();
      ops.push_back(std::move(op));
      infos.push_back({r, c});
      if (batch_bytes >= kReadBatchBytes) {
        batch_begin.push_back(ops.size());
        batch_bytes = 0;
      }
    }
  }
  if (batch_begin.back() != ops.size()) batch_begin.push_back(ops.size());
  const size_t batches = batch_begin.size() - 1;
  auto batch_ops = [&](size_t b) {
    return std::span<ReadOp>(ops).subspan(batch_begin[b], batch_begin[b + 1] - batch_begin[b]);
  };
  std::deque<std::future<Status>> in_flight;
  size_t launched = 0;
  Status status;
  for (size_t b = 0; b < batches; ++b) {
    while (launched < batches && in_flight.size() < kBatchesInFlight) {
      in_flight.push_back(std::async(std::launch::async,
                                     [&store, span = batch_ops(launched)] { return store.GetMany(span); }));
      ++launched;
    }
    Status s = in_flight.front().get();
    in_flight.pop_front();
    if (s.ok()) {
      s = CheckBatch(reads, batch_ops(b),
                     std::span<const OpInfo>(infos).subspan(batch_begin[b], batch_begin[b + 1] - batch_begin[b]));
    }
    if (!s.ok()) {
      status = s;
      break;
    }
  }
  for (auto& f : in_flight) f.get().IgnoreError();  // already failing; let the reads finish
  GRANARY_RETURN_IF_ERROR(status);
  if (verify_hash) {
    for (const TensorRead& r : reads) {
      if (Xxh3_128(r.dest.data(), r.dest.size()) != r.entry->xxh3) {
        return DataLossError("tensor \"" + r.entry->name + "\" in " + JoinKey(root, r.entry->key) +
                             ": XXH3-128 mismatch");
      }
    }
  }
  return Status::OK();
}

}  // namespace granary::checkpoint
