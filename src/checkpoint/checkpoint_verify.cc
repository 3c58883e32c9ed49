#include "checkpoint/checkpoint_verify.h"

#include <algorithm>
#include <optional>

#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_reader.h"
#include "core/checksum.h"
#include "granary/io.h"

namespace granary::checkpoint {
namespace {

// Read errors that mean "this tensor's bytes are gone or damaged" rather than "the store cannot
// be read right now": recorded as problems instead of stopping verification.
bool IsDamage(const Status& s) {
  return s.code() == StatusCode::kNotFound || s.code() == StatusCode::kDataLoss ||
         s.code() == StatusCode::kOutOfRange;
}

// Verifies every tensor of one rank, reading through `buffer` in batches of whole chunks.
Status VerifyRank(ObjectStore& store, std::string_view root, const RankManifest& m,
                  const AlignedBuffer& buffer, VerifyReport* report) {
  const std::vector<TensorEntry>& tensors = m.tensors;
  const uint64_t chunk_bytes = m.chunk_bytes;
  std::vector<bool> bad(tensors.size(), false);
  auto add_problem = [&](size_t t, std::string message) {
    bad[t] = true;
    report->problems.push_back(
        {m.rank, tensors[t].name, JoinKey(root, tensors[t].key), std::move(message)});
  };
  report->tensors += tensors.size();

  struct Unit {
    size_t tensor;
    size_t chunk;
  };
  std::vector<ReadOp> ops;
  std::vector<Unit> units;
  std::optional<Xxh3_128Hasher> hasher;  // of the tensor whose chunks are being processed
  size_t t = 0, c = 0;                   // next chunk to schedule
  while (t < tensors.size()) {
    // Zero-length tensors have no chunks; only their hash can be checked.
    if (tensors[t].chunk_crc32c.empty()) {
      if (Xxh3_128(nullptr, 0) != tensors[t].xxh3) {
        add_problem(t, "XXH3-128 mismatch (empty tensor)");
      }
      ++t;
      continue;
    }
    // Fill the buffer with whole chunks, in manifest order.
    ops.clear();
    units.clear();
    size_t used = 0;
    while (t < tensors.size() && !tensors[t].chunk_crc32c.empty()) {
      const TensorEntry& e = tensors[t];
      const uint64_t pos = c * chunk_bytes;
      const size_t len = static_cast<size_t>(std::min<uint64_t>(chunk_bytes, e.length - pos));
      if (used + len > buffer.size()) break;
      ReadOp op;
      op.key = JoinKey(root, e.key);
      op.offset = e.offset + pos;
      op.dest = buffer.span().subspan(used, len);
      ops.push_back(std::move(op));
      units.push_back({t, c});
      used += len;
      if (++c == e.chunk_crc32c.size()) {
        ++t;
        c = 0;
      }
    }
    // The buffer holds at least one chunk (VerifyStep sizes it), so every batch makes progress.
    if (ops.empty()) return InternalError("VerifyStep: buffer smaller than one chunk");
    GRANARY_RETURN_IF_ERROR(store.GetMany(ops));
    for (size_t i = 0; i < ops.size(); ++i) {
      const size_t ti = units[i].tensor, ci = units[i].chunk;
      if (bad[ti]) continue;
      const TensorEntry& e = tensors[ti];
      const ReadOp& op = ops[i];
      if (ci == 0) hasher.emplace();
      if (!op.status.ok()) {
        if (!IsDamage(op.status)) {
          return op.status.WithContext("tensor \"" + e.name + "\" of rank " +
                                       std::to_string(m.rank) + " in " + op.key);
        }
        add_problem(ti, op.status.ToString());
        continue;
      }
      report->bytes += op.bytes_read;
      if (op.bytes_read != op.dest.size()) {
        add_problem(ti, "data file is truncated: chunk " + std::to_string(ci) + " needs bytes " +
                            std::to_string(op.offset) + ".." +
                            std::to_string(op.offset + op.dest.size()) + ", the file ends at " +
                            std::to_string(op.offset + op.bytes_read));
        continue;
      }
      if (Crc32c(op.dest.data(), op.dest.size()) != e.chunk_crc32c[ci]) {
        add_problem(ti, "crc32c mismatch in chunk " + std::to_string(ci) + " (bytes " +
                            std::to_string(op.offset) + ".." +
                            std::to_string(op.offset + op.dest.size()) + ")");
        continue;
      }
      hasher->Update(op.dest.data(), op.dest.size());
      if (ci + 1 == e.chunk_crc32c.size() && hasher->Digest() != e.xxh3) {
        add_problem(ti, "XXH3-128 mismatch (every chunk crc32c matched)");
      }
    }
    // Do not read the rest of a large tensor already known to be damaged.
    if (t < tensors.size() && c > 0 && bad[t]) {
      ++t;
      c = 0;
    }
  }
  return Status::OK();
}

}  // namespace

Status VerifyReport::ToStatus() const {
  if (problems.empty()) return Status::OK();
  const VerifyProblem& p = problems.front();
  std::string msg = "step " + std::to_string(step) + ": " + std::to_string(problems.size()) +
                    " damaged tensor" + (problems.size() == 1 ? "" : "s") + "; first: tensor \"" +
                    p.tensor + "\" of rank " + std::to_string(p.rank) + " in " + p.data_key +
                    ": " + p.message;
  return DataLossError(std::move(msg));
}

Result<VerifyReport> VerifyStep(ObjectStore& store, std::string_view root, uint64_t step,
                                size_t buffer_bytes) {
  if (buffer_bytes == 0) return InvalidArgumentError("VerifyStep: buffer_bytes must be > 0");
  GRANARY_ASSIGN_OR_RETURN(CommitRecord commit, ReadCommit(store, root, step));
  VerifyReport report;
  report.step = step;
  report.world_size = commit.world_size;
  AlignedBuffer buffer;
  for (uint32_t rank = 0; rank < commit.world_size; ++rank) {
    Result<RankManifest> manifest = ReadManifest(store, root, commit, rank);
    if (!manifest.ok()) {
      if (manifest.status().code() == StatusCode::kNotFound) {
        return DataLossError("manifest " + JoinKey(root, commit.manifests[rank].key) +
                             " of committed step " + std::to_string(step) + " is missing");
      }
      return manifest.status();
    }
    // A chunk must fit: the buffer is at least one chunk, whatever buffer_bytes says.
    const size_t needed = std::max<size_t>(buffer_bytes, manifest->chunk_bytes);
    if (buffer.size() < needed) {
      buffer = AlignedBuffer();  // free the old one first: at most one buffer at a time
      GRANARY_ASSIGN_OR_RETURN(buffer, AlignedBuffer::Allocate(needed));
    }
    GRANARY_RETURN_IF_ERROR(VerifyRank(store, root, *manifest, buffer, &report));
  }
  return report;
}

}  // namespace granary::checkpoint
