// Constants of the dataset format; docs/formats/dataset.md is the spec. One comment per field.
// Changing any value here changes the on-disk format and needs a new kFormatVersion.
#ifndef GRANARY_DATASET_DATASET_FORMAT_H_
#define GRANARY_DATASET_DATASET_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace granary::dataset {

// The only format version this build writes and reads (in every header and the manifest).
inline constexpr uint32_t kFormatVersion = 1;

// ---- Object keys, relative to the dataset prefix ("datasets/imgs" or "") ----
// Manifest of version V: "manifest-" + V as 12 zero-padded digits, published with PutIfAbsent
// last; versions are 1, 2, 3, ... so keys sort by version.
inline constexpr std::string_view kManifestPrefix = "manifest-";
inline constexpr int kVersionDigits = 12;
inline constexpr uint64_t kMaxVersion = 999'999'999'999ULL;
// A segment holds the samples one writer added: "seg-" + version (12 digits) + "-" + 16 hex
// digits of a random writer id, so concurrent or crashed writers never share objects.
inline constexpr std::string_view kSegmentPrefix = "seg-";
// Inside a segment: "shard-NNNNNN" (6+ digits, from 0), "index", "keys".
inline constexpr std::string_view kShardPrefix = "shard-";
inline constexpr int kShardDigits = 6;
inline constexpr std::string_view kIndexName = "index";
inline constexpr std::string_view kKeysName = "keys";
// Segments no manifest references and older than this are garbage (crashed writers); a new
// writer removes them.
inline constexpr int64_t kGarbageGraceNs = 3600LL * 1'000'000'000LL;

// ---- Shard object ----
//   [0, 8)    magic "GRNDSSHD"
//   [8, 12)   format version, u32
//   [12, 16)  shard number within its segment, u32
//   [16, 24)  writer id, u64 (the segment's random id)
//   [24, 28)  reserved, zero
//   [28, 32)  crc32c of bytes [0, 28)
//   [32, ...) records, back to back, no padding
inline constexpr std::string_view kShardMagic = "GRNDSSHD";
inline constexpr size_t kShardHeaderBytes = 32;

// ---- Record (all integers little-endian) ----
//   [0, 4)    crc32c of bytes [4, length)
//   [4, 8)    length of the whole record in bytes, u32 (equals the index's length)
//   [8, 10)   key length k, u16 (1..65535)
//   [10, 12)  field count f, u16
//   [12, 12 + 6f)  per field: field id u16 (into the manifest's field table), data length u32
//   then      key bytes (k), then each field's data in the same order, back to back
inline constexpr size_t kRecordFixedBytes = 12;
inline constexpr size_t kRecordFieldEntryBytes = 6;
inline constexpr uint64_t kMaxRecordBytes = 0xFFFF'FFFFULL;
inline constexpr size_t kMaxKeyBytes = 65535;
inline constexpr size_t kMaxFields = 65535;
inline constexpr size_t kMaxFieldNameBytes = 255;

// ---- Index object (one per segment) ----
//   [0, 8)    magic "GRNDSIDX"
//   [8, 12)   format version, u32
//   [12, 16)  crc32c of the entries
//   [16, 24)  sample count n, u64
//   [24, 28)  reserved, zero
//   [28, 32)  crc32c of bytes [0, 28)
//   [32, 32 + 8(n+1))  n+1 u64 record offsets in "segment space": the records of the segment's
//             shards laid end to end without shard headers. Record i spans [e[i], e[i+1]);
//             e[0] = 0 and e[n] = the segment's record bytes. 8 bytes per sample, mmapped.
inline constexpr std::string_view kIndexMagic = "GRNDSIDX";
inline constexpr size_t kIndexHeaderBytes = 32;

// ---- Key table object (one per segment) ----
//   header as the index, magic "GRNDSKEY", n = sample count
//   [32, 32 + 16n)  entries {u64 XXH3-64 of the key (seed 0), u64 segment-local index},
//             sorted by (hash, index)
inline constexpr std::string_view kKeysMagic = "GRNDSKEY";
inline constexpr size_t kKeysHeaderBytes = 32;
inline constexpr size_t kKeyEntryBytes = 16;

// ---- Manifest envelope ----
//   [0, 8)          magic "GRNDSMAN"
//   [8, 12)         format version, u32
//   [12, 20)        body length n, u64; must equal object size - 24
//   [20, 20+n)      body: UTF-8 JSON (see docs/formats/dataset.md)
//   [20+n, 24+n)    crc32c of bytes [0, 20+n)
inline constexpr std::string_view kManifestMagic = "GRNDSMAN";
inline constexpr uint64_t kMaxManifestBytes = 1ULL << 30;

// Default shard target size (writer option).
inline constexpr uint64_t kDefaultShardBytes = 512ULL << 20;

}  // namespace granary::dataset

#endif  // GRANARY_DATASET_DATASET_FORMAT_H_
