// In-memory form of the checkpoint manifest and COMMIT objects, their encoding (the envelope of
// checkpoint_format.h around a JSON body) and the object key naming. Pure functions; all
// thread-safe. The spec is docs/formats/checkpoint.md.
#ifndef GRANARY_CHECKPOINT_CHECKPOINT_MANIFEST_H_
#define GRANARY_CHECKPOINT_CHECKPOINT_MANIFEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/checksum.h"
#include "granary/status.h"

namespace granary::checkpoint {

// Bytes per element of a torch dtype name ("float32", "bfloat16", "bool", "float8_e4m3fn", ...;
// the names str(torch.dtype) prints without "torch."). InvalidArgument for unknown names.
Result<uint32_t> DtypeElementBytes(std::string_view dtype);

// One tensor of a rank: where its contiguous (row-major) bytes live and how to check them.
struct TensorEntry {
  std::string name;                 // unique within the rank; non-empty UTF-8
  std::string dtype;                // torch dtype name
  std::vector<uint64_t> shape;      // local shape; length = product(shape) * element bytes
  // Distributed sharding (optional, both or neither): the full tensor's shape and where this
  // shard starts in it. Same rank as `shape`.
  std::vector<uint64_t> global_shape;
  std::vector<uint64_t> global_offset;
  std::string key;                  // data file key relative to the root; may be an earlier step's
  uint64_t offset = 0;              // byte offset within the data file
  uint64_t length = 0;              // bytes
  Hash128 xxh3;                     // XXH3-128 of the bytes (content identity for incremental saves)
  std::vector<uint32_t> chunk_crc32c;  // crc32c of each chunk_bytes piece, in order
};

// One rank's manifest.
struct RankManifest {
  uint64_t step = 0;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  uint64_t chunk_bytes = 0;         // checksum chunk size of every tensor in this manifest
  std::vector<TensorEntry> tensors;
  std::string user_metadata_json = "{}";  // a JSON object, stored verbatim as parsed JSON
  // Identifies the save attempt across ranks (optional; "" omits it). Rank 0 commits only
  // manifests carrying its own save_id, so a crashed attempt's leftovers are never committed.
  std::string save_id;
};

// What COMMIT records about one rank's manifest.
struct ManifestRef {
  uint32_t rank = 0;
  std::string key;                  // relative to the root
  uint64_t length = 0;              // bytes of the encoded manifest
  uint32_t crc32c = 0;              // of the whole encoded manifest object
  friend bool operator==(const ManifestRef&, const ManifestRef&) = default;
};

// The COMMIT object of one step: exactly one ManifestRef per rank, sorted by rank.
struct CommitRecord {
  uint64_t step = 0;
  uint32_t world_size = 1;
  std::vector<ManifestRef> manifests;
};

// ---- Keys (relative to the root; JoinKey prefixes the root) ----
std::string StepDir(uint64_t step);                       // "step-000000000100"
std::string DataKey(uint64_t step, uint32_t rank, uint32_t index);
std::string ManifestKey(uint64_t step, uint32_t rank);
std::string CommitKey(uint64_t step);
// "<root>/<relative>", or `relative` when root is empty. A trailing '/' on root is ignored.
std::string JoinKey(std::string_view root, std::string_view relative);
// The step of a relative key "step-NNNNNNNNNNNN/COMMIT", or nullopt for any other key.
std::optional<uint64_t> ParseCommitKey(std::string_view relative);
// The step of a relative data key "step-N/rank-R.data-I", or nullopt if it is not one.
std::optional<uint64_t> ParseDataKeyStep(std::string_view relative);

// Checks a manifest's invariants (used by both Encode and Decode): step and rank in range,
// chunk_bytes in [1, kMaxChunkBytes], unique non-empty names, known dtypes, length equal to
// product(shape) * element bytes without overflow, crc count = ceil(length / chunk_bytes),
// sharding fields consistent, data keys well-formed and not from a later step, user metadata a
// JSON object. InvalidArgument naming `what` and the tensor.
Status ValidateManifest(const RankManifest& manifest, std::string_view what);
Status ValidateCommit(const CommitRecord& commit, std::string_view what);

// Encodes into the envelope. InvalidArgument if the manifest breaks an invariant.
Result<std::string> EncodeManifest(const RankManifest& manifest);
Result<std::string> EncodeCommit(const CommitRecord& commit);
// Encodes the `latest` hint naming `step`.
std::string EncodeLatest(uint64_t step);

// Decodes and validates `bytes`, the object stored under `key` (named in every error).
// DataLoss for wrong magic, bad length, bad crc, malformed JSON or broken invariants (the
// checksums passed, so the writer or the medium lied); InvalidArgument for a well-formed object
// of a format version this build does not read.
Result<RankManifest> DecodeManifest(std::string_view bytes, std::string_view key);
Result<CommitRecord> DecodeCommit(std::string_view bytes, std::string_view key);
Result<uint64_t> DecodeLatest(std::string_view bytes, std::string_view key);

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_CHECKPOINT_MANIFEST_H_
