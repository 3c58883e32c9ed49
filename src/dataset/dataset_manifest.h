// In-memory form of a dataset version's manifest, its encoding (the envelope of
// dataset_format.h around a JSON body, see core/envelope.h) and the object key naming. Pure
// functions; thread-safe. The spec is docs/formats/dataset.md.
#ifndef GRANARY_DATASET_DATASET_MANIFEST_H_
#define GRANARY_DATASET_DATASET_MANIFEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "granary/status.h"

namespace granary::dataset {

// An object the manifest pins by size and checksum (a segment's index or key table).
struct ObjectRef {
  std::string key;         // relative to the dataset prefix
  uint32_t crc32c = 0;     // of the whole object
  uint64_t size = 0;       // bytes
};

struct ShardEntry {
  std::string key;             // "seg-.../shard-NNNNNN", relative to the dataset prefix
  uint64_t first_sample = 0;   // global index of its first record in this version
  uint64_t num_samples = 0;    // >= 1
  uint64_t record_bytes = 0;   // bytes of its records
  uint64_t size_bytes = 0;     // object size = kShardHeaderBytes + record_bytes
};

// The samples one writer added: shards, an index and a key table under "seg-V-ID/".
struct SegmentEntry {
  std::string name;            // "seg-" + 12-digit version + "-" + 16 hex digits of writer_id
  uint64_t version = 0;        // the version that added it
  uint64_t writer_id = 0;
  uint64_t first_sample = 0;   // global index of its first sample
  uint64_t num_samples = 0;    // >= 1
  uint64_t record_bytes = 0;   // sum over its shards
  ObjectRef index;             // 32 + 8 (num_samples + 1) bytes
  ObjectRef keys;              // 32 + 16 num_samples bytes
  std::vector<ShardEntry> shards;
};

struct DatasetManifest {
  uint64_t version = 0;                 // 1..kMaxVersion
  int64_t created_unix_ns = 0;          // wall clock of the writer at publication
  std::vector<std::string> fields;      // field table: fields[id] is the name of field id
  uint64_t num_samples = 0;             // = sum of segment sample counts
  uint64_t total_bytes = 0;             // = sum of segment record bytes
  std::vector<SegmentEntry> segments;   // oldest first; samples are numbered in this order
};

// ---- Keys, relative to the dataset prefix ----
std::string ManifestKey(uint64_t version);                        // "manifest-000000000001"
std::optional<uint64_t> ParseManifestKey(std::string_view relative);
std::string SegmentName(uint64_t version, uint64_t writer_id);    // "seg-000000000001-<hex>"
// Parses a segment name (not a key under it); false if `name` is not one.
bool ParseSegmentName(std::string_view name, uint64_t* version, uint64_t* writer_id);
std::string ShardKey(std::string_view segment, uint32_t shard_number);  // "<seg>/shard-000000"
std::string IndexKey(std::string_view segment);                         // "<seg>/index"
std::string KeysKey(std::string_view segment);                          // "<seg>/keys"
// "<prefix>/<relative>", or `relative` when the prefix is empty; trailing '/'s are ignored.
std::string JoinKey(std::string_view prefix, std::string_view relative);

// A field name the writer accepts: 1-255 bytes, no '/' or NUL, not "__key__".
Status ValidateFieldName(std::string_view name);

// Checks every invariant of docs/formats/dataset.md (counts add up, samples and shards are
// contiguous, sizes match, keys well-formed and inside their segment, field names valid and
// unique). InvalidArgument naming `what` and the offending segment or shard (DecodeManifest
// reports the same as DataLoss).
Status ValidateManifest(const DatasetManifest& manifest, std::string_view what);

// Encodes into the envelope. InvalidArgument if the manifest breaks an invariant.
Result<std::string> EncodeManifest(const DatasetManifest& manifest);
// Decodes and validates `bytes`, the object stored under `key` (named in every error). DataLoss
// for wrong magic, bad length, bad crc, malformed JSON or broken invariants; InvalidArgument
// naming the key and both versions for a format version this build does not read.
Result<DatasetManifest> DecodeManifest(std::string_view bytes, std::string_view key);

}  // namespace granary::dataset

#endif  // GRANARY_DATASET_DATASET_MANIFEST_H_
