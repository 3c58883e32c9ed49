#include "checkpoint/checkpoint_reader.h"

#include <algorithm>

#include "checkpoint/checkpoint_format.h"
#include "checkpoint/tensor_restore.h"
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

Status ReadTensors(ObjectStore& store, std::string_view root, const RankManifest& manifest,
                   std::span<const TensorRead> reads, bool verify_hash) {
  // One restore path for everything: RestoreTensors, with block buffers for this call only (the
  // Checkpointer keeps its own across loads).
  BufferPool::Options options;
  options.buffer_bytes = kRestoreBlockBytes;
  options.max_buffers = 2 * kRestoreBlocksPerBatch;
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<BufferPool> blocks, BufferPool::Create(options));
  GRANARY_RETURN_IF_ERROR(RestoreTensors(store, root, manifest, reads, *blocks));
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
