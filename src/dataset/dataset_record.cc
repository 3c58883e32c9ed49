#include "dataset/dataset_record.h"

#include <bit>

#include "core/checksum.h"
#include "dataset/dataset_format.h"

namespace granary::dataset {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the dataset format is little-endian and read in place");

std::string Bytes(std::string_view s) { return std::string(s); }

std::string Describe(std::string_view key) {
  constexpr size_t kShown = 64;
  std::string shown(key.substr(0, kShown));
  if (key.size() > kShown) shown += "...";
  return "sample key \"" + shown + "\"";
}

// Version mismatch after a good crc: a newer writer, not damage.
Status VersionError(uint32_t found, std::string_view what) {
  return InvalidArgumentError(Bytes(what) + ": format version " + std::to_string(found) +
                              " is not supported (this build reads version " +
                              std::to_string(kFormatVersion) + ")");
}

}  // namespace

Result<uint64_t> RecordBytes(std::string_view key, std::span<const RecordField> fields) {
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return InvalidArgumentError(Describe(key) + ": key must be 1-65535 bytes, got " +
                                std::to_string(key.size()));
  }
  if (fields.size() > kMaxFields) {
    return InvalidArgumentError(Describe(key) + ": " + std::to_string(fields.size()) +
                                " fields, at most 65535 allowed");
  }
  uint64_t total = kRecordFixedBytes + kRecordFieldEntryBytes * fields.size() + key.size();
  for (const RecordField& f : fields) {
    if (f.data.size() > 0xFFFF'FFFFULL) {
      return InvalidArgumentError(Describe(key) + ": a field of " +
                                  std::to_string(f.data.size()) + " bytes (at most 4 GiB - 1)");
    }
    total += f.data.size();
  }
  if (total > kMaxRecordBytes) {
    return InvalidArgumentError(Describe(key) + ": record of " + std::to_string(total) +
                                " bytes exceeds the 4 GiB - 1 limit");
  }
  return total;
}

Status EncodeRecordHead(std::string_view key, std::span<const RecordField> fields,
                        std::string* head) {
  GRANARY_ASSIGN_OR_RETURN(uint64_t total, RecordBytes(key, fields));
  const size_t head_bytes = kRecordFixedBytes + kRecordFieldEntryBytes * fields.size() + key.size();
  head->resize(head_bytes);
  char* p = head->data();
  StoreLe<uint32_t>(p + 4, static_cast<uint32_t>(total));
  StoreLe<uint16_t>(p + 8, static_cast<uint16_t>(key.size()));
  StoreLe<uint16_t>(p + 10, static_cast<uint16_t>(fields.size()));
  char* entry = p + kRecordFixedBytes;
  for (const RecordField& f : fields) {
    StoreLe<uint16_t>(entry, f.id);
    StoreLe<uint32_t>(entry + 2, static_cast<uint32_t>(f.data.size()));
    entry += kRecordFieldEntryBytes;
  }
  std::memcpy(entry, key.data(), key.size());
  uint32_t crc = Crc32c(p + 4, head_bytes - 4);
  for (const RecordField& f : fields) crc = Crc32c(f.data.data(), f.data.size(), crc);
  StoreLe<uint32_t>(p, crc);
  return Status::OK();
}

Status EncodeRecord(std::string_view key, std::span<const RecordField> fields, std::string* out) {
  std::string head;
  GRANARY_RETURN_IF_ERROR(EncodeRecordHead(key, fields, &head));
  out->append(head);
  for (const RecordField& f : fields) {
    out->append(reinterpret_cast<const char*>(f.data.data()), f.data.size());
  }
  return Status::OK();
}

Status ParseRecord(std::span<const std::byte> record, bool verify_crc, std::string_view* key,
                   std::vector<ParsedField>* fields) {
  const size_t size = record.size();
  if (size < kRecordFixedBytes) {
    return DataLossError("record of " + std::to_string(size) + " bytes is shorter than its header");
  }
  const std::byte* p = record.data();
  const uint32_t length = LoadLe<uint32_t>(p + 4);
  if (length != size) {
    return DataLossError("record length field " + std::to_string(length) + " but index says " +
                         std::to_string(size));
  }
  // The crc first: a damaged record should read as "crc32c mismatch", whatever field it hit.
  if (verify_crc && Crc32c(p + 4, size - 4) != LoadLe<uint32_t>(p)) {
    return DataLossError("record crc32c mismatch");
  }
  const size_t key_bytes = LoadLe<uint16_t>(p + 8);
  const size_t num_fields = LoadLe<uint16_t>(p + 10);
  const size_t head = kRecordFixedBytes + kRecordFieldEntryBytes * num_fields + key_bytes;
  if (key_bytes == 0 || head > size) {
    return DataLossError("record header (key " + std::to_string(key_bytes) + " bytes, " +
                         std::to_string(num_fields) + " fields) does not fit its " +
                         std::to_string(size) + " bytes");
  }
  const size_t first = fields->size();
  fields->resize(first + num_fields);
  const std::byte* entry = p + kRecordFixedBytes;
  uint64_t pos = head;
  for (size_t j = 0; j < num_fields; ++j, entry += kRecordFieldEntryBytes) {
    const uint32_t bytes = LoadLe<uint32_t>(entry + 2);
    if (bytes > size - pos) {
      fields->resize(first);
      return DataLossError("record field " + std::to_string(j) + " of " + std::to_string(bytes) +
                           " bytes runs past the record's end");
    }
    (*fields)[first + j] = ParsedField{LoadLe<uint16_t>(entry), record.subspan(pos, bytes)};
    pos += bytes;
  }
  if (pos != size) {
    fields->resize(first);
    return DataLossError("record has " + std::to_string(size - pos) + " bytes after its fields");
  }
  *key = std::string_view(reinterpret_cast<const char*>(p + head - key_bytes), key_bytes);
  return Status::OK();
}

Result<size_t> RecordKeyEnd(std::span<const std::byte> prefix, uint64_t record_bytes) {
  if (prefix.size() < kRecordFixedBytes || record_bytes < kRecordFixedBytes) {
    return DataLossError("record shorter than its header");
  }
  const size_t key_bytes = LoadLe<uint16_t>(prefix.data() + 8);
  const size_t num_fields = LoadLe<uint16_t>(prefix.data() + 10);
  const size_t end = kRecordFixedBytes + kRecordFieldEntryBytes * num_fields + key_bytes;
  if (LoadLe<uint32_t>(prefix.data() + 4) != record_bytes || key_bytes == 0 ||
      end > record_bytes) {
    return DataLossError("record header does not match its index entry of " +
                         std::to_string(record_bytes) + " bytes");
  }
  return end;
}

std::string_view RecordKey(std::span<const std::byte> prefix) {
  const size_t key_bytes = LoadLe<uint16_t>(prefix.data() + 8);
  const size_t num_fields = LoadLe<uint16_t>(prefix.data() + 10);
  const size_t start = kRecordFixedBytes + kRecordFieldEntryBytes * num_fields;
  return std::string_view(reinterpret_cast<const char*>(prefix.data() + start), key_bytes);
}

std::string EncodeShardHeader(uint32_t shard_number, uint64_t writer_id) {
  std::string h(kShardHeaderBytes, '\0');
  std::memcpy(h.data(), kShardMagic.data(), 8);
  StoreLe<uint32_t>(h.data() + 8, kFormatVersion);
  StoreLe<uint32_t>(h.data() + 12, shard_number);
  StoreLe<uint64_t>(h.data() + 16, writer_id);
  StoreLe<uint32_t>(h.data() + 28, Crc32c(h.data(), 28));
  return h;
}

Status CheckShardHeader(std::span<const std::byte> header, uint32_t shard_number,
                        uint64_t writer_id, std::string_view what) {
  const char* p = reinterpret_cast<const char*>(header.data());
  if (header.size() < kShardHeaderBytes || std::string_view(p, 8) != kShardMagic) {
    return DataLossError(Bytes(what) + ": not a granary dataset shard (bad header magic)");
  }
  if (Crc32c(p, 28) != LoadLe<uint32_t>(p + 28)) {
    return DataLossError(Bytes(what) + ": shard header crc32c mismatch");
  }
  const uint32_t version = LoadLe<uint32_t>(p + 8);
  if (version != kFormatVersion) return VersionError(version, what);
  if (LoadLe<uint32_t>(p + 12) != shard_number || LoadLe<uint64_t>(p + 16) != writer_id) {
    return DataLossError(Bytes(what) + ": shard header names another shard or writer (" +
                         std::to_string(LoadLe<uint32_t>(p + 12)) + ")");
  }
  return Status::OK();
}

std::string EncodeTableHeader(std::string_view magic, uint32_t entries_crc, uint64_t count) {
  std::string h(kIndexHeaderBytes, '\0');
  std::memcpy(h.data(), magic.data(), 8);
  StoreLe<uint32_t>(h.data() + 8, kFormatVersion);
  StoreLe<uint32_t>(h.data() + 12, entries_crc);
  StoreLe<uint64_t>(h.data() + 16, count);
  StoreLe<uint32_t>(h.data() + 28, Crc32c(h.data(), 28));
  return h;
}

Result<uint32_t> CheckTableHeader(std::span<const std::byte> header, std::string_view magic,
                                  uint64_t expected_count, std::string_view what) {
  const char* p = reinterpret_cast<const char*>(header.data());
  if (header.size() < kIndexHeaderBytes || std::string_view(p, 8) != magic) {
    return DataLossError(Bytes(what) + ": bad header magic (expected " + Bytes(magic) + ")");
  }
  if (Crc32c(p, 28) != LoadLe<uint32_t>(p + 28)) {
    return DataLossError(Bytes(what) + ": header crc32c mismatch");
  }
  const uint32_t version = LoadLe<uint32_t>(p + 8);
  if (version != kFormatVersion) return VersionError(version, what);
  const uint64_t count = LoadLe<uint64_t>(p + 16);
  if (count != expected_count) {
    return DataLossError(Bytes(what) + ": header counts " + std::to_string(count) +
                         " samples, manifest says " + std::to_string(expected_count));
  }
  return LoadLe<uint32_t>(p + 12);
}

}  // namespace granary::dataset
