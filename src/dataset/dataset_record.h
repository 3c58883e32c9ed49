// The binary pieces of the dataset format (docs/formats/dataset.md, constants in
// dataset_format.h): records, the shard header, and the headers of the index and key-table
// objects. Encoders append to a caller's buffer; parsers validate bounds and checksums and return
// views into the caller's bytes without copying. Pure functions; thread-safe.
#ifndef GRANARY_DATASET_DATASET_RECORD_H_
#define GRANARY_DATASET_DATASET_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "granary/status.h"

namespace granary::dataset {

// Little-endian integer access (the host is little-endian; checked in dataset_record.cc).
template <typename T>
inline T LoadLe(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
inline void StoreLe(void* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// One field of a record being encoded: its id in the manifest's field table and its bytes.
struct RecordField {
  uint16_t id = 0;
  std::span<const std::byte> data;
};

// One field of a parsed record; `data` points into the parsed bytes.
struct ParsedField {
  uint16_t id = 0;
  std::span<const std::byte> data;
};

// Bytes of the record of a key of `key_bytes` and `fields`. InvalidArgument (naming the key)
// when the key is empty or too long, there are too many fields, or the record would exceed
// kMaxRecordBytes.
Result<uint64_t> RecordBytes(std::string_view key, std::span<const RecordField> fields);

// Encodes the record's head (fixed header, field table, key) into `head`, replacing its content,
// with the crc32c already covering the field data that follows it. The record is `head` followed
// by every field's data in order; writers append those pieces without copying them again.
// Errors as RecordBytes.
Status EncodeRecordHead(std::string_view key, std::span<const RecordField> fields,
                        std::string* head);
// The whole record appended to `out` (tests, small writes).
Status EncodeRecord(std::string_view key, std::span<const RecordField> fields, std::string* out);

// Parses `record`, exactly one record's bytes (the index gives the length). Checks that the
// length field equals record.size(), the key length is non-zero, the field table and data fit
// exactly, and (when `verify_crc`) the crc32c. On success sets *key and appends the fields to
// *fields in record order. DataLoss with a reason ("crc32c mismatch", "length field 12 but index
// says 40", ...) that the caller prefixes with the shard and sample.
Status ParseRecord(std::span<const std::byte> record, bool verify_crc, std::string_view* key,
                   std::vector<ParsedField>* fields);

// Bytes from the record's start needed to reach the end of its key, given at least the first
// kRecordFixedBytes of it (`prefix`). DataLoss if the prefix is malformed for a record of
// `record_bytes`.
Result<size_t> RecordKeyEnd(std::span<const std::byte> prefix, uint64_t record_bytes);
// The key of a record from a prefix of at least RecordKeyEnd bytes (no crc check).
std::string_view RecordKey(std::span<const std::byte> prefix);

// ---- Shard header ----
std::string EncodeShardHeader(uint32_t shard_number, uint64_t writer_id);
// DataLoss naming `what` unless `header` (kShardHeaderBytes) is a valid shard header of this
// shard number and writer id; InvalidArgument for a sealed header of another format version.
Status CheckShardHeader(std::span<const std::byte> header, uint32_t shard_number,
                        uint64_t writer_id, std::string_view what);

// ---- Index and key-table headers (same layout, different magic) ----
std::string EncodeTableHeader(std::string_view magic, uint32_t entries_crc, uint64_t count);
// Checks magic, header crc, version and count == expected_count; returns the entries' crc32c.
// DataLoss naming `what` otherwise (InvalidArgument for another format version).
Result<uint32_t> CheckTableHeader(std::span<const std::byte> header, std::string_view magic,
                                  uint64_t expected_count, std::string_view what);

}  // namespace granary::dataset

#endif  // GRANARY_DATASET_DATASET_RECORD_H_
