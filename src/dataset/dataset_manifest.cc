#include "dataset/dataset_manifest.h"

#include <charconv>
#include <cstdio>
#include <unordered_set>

#include "core/envelope.h"
#include "core/json_fields.h"
#include "dataset/dataset_format.h"

namespace granary::dataset {
namespace {

using json::GetI64;
using json::GetString;
using json::GetU32;
using json::GetU64;
using json::Json;

constexpr std::string_view kFormatName = "granary.dataset";
constexpr int kWriterIdHexDigits = 16;

std::string Padded(uint64_t v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%0*llu", digits, static_cast<unsigned long long>(v));
  return buf;
}

std::string Hex16(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool ParseDigits(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return std::from_chars(s.data(), s.data() + s.size(), *out).ec == std::errc();
}

bool ParseHex16(std::string_view s, uint64_t* out) {
  if (s.size() != kWriterIdHexDigits) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return std::from_chars(s.data(), s.data() + s.size(), *out, 16).ec == std::errc();
}

Status Invalid(std::string_view what, const std::string& detail) {
  return InvalidArgumentError(std::string(what) + ": " + detail);
}

Json RefToJson(const ObjectRef& r) {
  return Json{{"key", r.key}, {"crc32c", r.crc32c}, {"size", r.size}};
}
bool RefFromJson(const Json& obj, const char* field, ObjectRef* r) {
  auto it = obj.find(field);
  return it != obj.end() && it->is_object() && GetString(*it, "key", &r->key) &&
         GetU32(*it, "crc32c", &r->crc32c) && GetU64(*it, "size", &r->size);
}

Status ValidateSegment(const SegmentEntry& seg, uint64_t manifest_version, uint64_t first_sample,
                       std::string_view what) {
  const std::string sw = std::string(what) + ": segment \"" + seg.name + "\"";
  uint64_t name_version = 0, name_writer = 0;
  if (!ParseSegmentName(seg.name, &name_version, &name_writer) || name_version != seg.version ||
      name_writer != seg.writer_id) {
    return InvalidArgumentError(sw + ": name does not match its version and writer id");
  }
  if (seg.version < 1 || seg.version > manifest_version) {
    return InvalidArgumentError(sw + ": version " + std::to_string(seg.version) +
                                " is not in [1, " + std::to_string(manifest_version) + "]");
  }
  // Bounded so that no size computed below can overflow, whatever a faulty writer produced.
  constexpr uint64_t kMaxCount = 1ULL << 48;
  if (seg.first_sample != first_sample || seg.num_samples == 0 || seg.num_samples > kMaxCount ||
      seg.record_bytes > (kMaxCount << 8)) {
    return InvalidArgumentError(sw + ": first_sample " + std::to_string(seg.first_sample) +
                                " / num_samples " + std::to_string(seg.num_samples) +
                                ", expected first_sample " + std::to_string(first_sample) +
                                " and at least one sample");
  }
  if (seg.index.key != IndexKey(seg.name) || seg.keys.key != KeysKey(seg.name)) {
    return InvalidArgumentError(sw + ": index or keys object is not inside the segment");
  }
  if (seg.index.size != kIndexHeaderBytes + 8 * (seg.num_samples + 1) ||
      seg.keys.size != kKeysHeaderBytes + kKeyEntryBytes * seg.num_samples) {
    return InvalidArgumentError(sw + ": index or keys size does not match " +
                                std::to_string(seg.num_samples) + " samples");
  }
  if (seg.shards.empty()) return InvalidArgumentError(sw + ": no shards");
  uint64_t next = seg.first_sample, bytes = 0;
  for (size_t j = 0; j < seg.shards.size(); ++j) {
    const ShardEntry& sh = seg.shards[j];
    const std::string hw = std::string(what) + ": shard \"" + sh.key + "\"";
    if (sh.key != ShardKey(seg.name, static_cast<uint32_t>(j))) {
      return InvalidArgumentError(hw + ": expected key " + ShardKey(seg.name, j));
    }
    if (sh.first_sample != next || sh.num_samples == 0 ||
        sh.num_samples > sh.record_bytes / kRecordFixedBytes ||
        sh.size_bytes != kShardHeaderBytes + sh.record_bytes) {
      return InvalidArgumentError(hw + ": inconsistent first_sample " +
                                  std::to_string(sh.first_sample) + ", num_samples " +
                                  std::to_string(sh.num_samples) + ", record_bytes " +
                                  std::to_string(sh.record_bytes) + " or size_bytes " +
                                  std::to_string(sh.size_bytes));
    }
    next += sh.num_samples;
    bytes += sh.record_bytes;
  }
  if (next != seg.first_sample + seg.num_samples || bytes != seg.record_bytes) {
    return InvalidArgumentError(sw + ": shards hold " + std::to_string(next - seg.first_sample) +
                                " samples / " + std::to_string(bytes) + " bytes, segment says " +
                                std::to_string(seg.num_samples) + " / " +
                                std::to_string(seg.record_bytes));
  }
  return Status::OK();
}

}  // namespace

std::string ManifestKey(uint64_t version) {
  return std::string(kManifestPrefix) + Padded(version, kVersionDigits);
}

std::optional<uint64_t> ParseManifestKey(std::string_view relative) {
  if (!relative.starts_with(kManifestPrefix)) return std::nullopt;
  std::string_view digits = relative.substr(kManifestPrefix.size());
  uint64_t v = 0;
  if (digits.size() != kVersionDigits || !ParseDigits(digits, &v) || v < 1) return std::nullopt;
  return v;
}

std::string SegmentName(uint64_t version, uint64_t writer_id) {
  return std::string(kSegmentPrefix) + Padded(version, kVersionDigits) + "-" + Hex16(writer_id);
}

bool ParseSegmentName(std::string_view name, uint64_t* version, uint64_t* writer_id) {
  const size_t digits_end = kSegmentPrefix.size() + kVersionDigits;
  if (!name.starts_with(kSegmentPrefix) || name.size() != digits_end + 1 + kWriterIdHexDigits ||
      name[digits_end] != '-') {
    return false;
  }
  return ParseDigits(name.substr(kSegmentPrefix.size(), kVersionDigits), version) &&
         ParseHex16(name.substr(digits_end + 1), writer_id);
}

std::string ShardKey(std::string_view segment, uint32_t shard_number) {
  return std::string(segment) + "/" + std::string(kShardPrefix) + Padded(shard_number, kShardDigits);
}
std::string IndexKey(std::string_view segment) {
  return std::string(segment) + "/" + std::string(kIndexName);
}
std::string KeysKey(std::string_view segment) {
  return std::string(segment) + "/" + std::string(kKeysName);
}

std::string JoinKey(std::string_view prefix, std::string_view relative) {
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  if (prefix.empty()) return std::string(relative);
  return std::string(prefix) + "/" + std::string(relative);
}

Status ValidateFieldName(std::string_view name) {
  if (name.empty() || name.size() > kMaxFieldNameBytes || name == "__key__" ||
      name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("field name \"" + std::string(name.substr(0, 64)) +
                                "\" is invalid (1-255 bytes, no '/' or NUL, not \"__key__\")");
  }
  return Status::OK();
}

Status ValidateManifest(const DatasetManifest& m, std::string_view what) {
  if (m.version < 1 || m.version > kMaxVersion) {
    return Invalid(what, "version " + std::to_string(m.version) + " out of range");
  }
  if (m.fields.size() > 65535) {
    return Invalid(what, std::to_string(m.fields.size()) + " fields, at most 65535");
  }
  std::unordered_set<std::string_view> names;
  for (const std::string& f : m.fields) {
    Status s = ValidateFieldName(f);
    if (!s.ok()) return s.WithContext(what);
    if (!names.insert(f).second) return Invalid(what, "field \"" + f + "\" appears twice");
  }
  uint64_t samples = 0, bytes = 0;
  std::unordered_set<std::string_view> segment_names;
  for (const SegmentEntry& seg : m.segments) {
    if (!segment_names.insert(seg.name).second) {
      return Invalid(what, "segment \"" + seg.name + "\" appears twice");
    }
    GRANARY_RETURN_IF_ERROR(ValidateSegment(seg, m.version, samples, what));
    samples += seg.num_samples;
    bytes += seg.record_bytes;
  }
  if (samples != m.num_samples || bytes != m.total_bytes) {
    return Invalid(what, "segments hold " + std::to_string(samples) + " samples / " +
                             std::to_string(bytes) + " bytes, manifest says " +
                             std::to_string(m.num_samples) + " / " +
                             std::to_string(m.total_bytes));
  }
  return Status::OK();
}

Result<std::string> EncodeManifest(const DatasetManifest& m) {
  const std::string what = "manifest of dataset version " + std::to_string(m.version);
  GRANARY_RETURN_IF_ERROR(ValidateManifest(m, what));
  Json fields = Json::array();
  for (size_t id = 0; id < m.fields.size(); ++id) {
    fields.push_back({{"id", id}, {"name", m.fields[id]}});
  }
  Json segments = Json::array();
  for (const SegmentEntry& seg : m.segments) {
    Json shards = Json::array();
    for (const ShardEntry& sh : seg.shards) {
      shards.push_back({{"key", sh.key}, {"first_sample", sh.first_sample},
                        {"num_samples", sh.num_samples}, {"record_bytes", sh.record_bytes},
                        {"size_bytes", sh.size_bytes}});
    }
    segments.push_back({{"name", seg.name}, {"version", seg.version},
                        {"writer_id", Hex16(seg.writer_id)}, {"first_sample", seg.first_sample},
                        {"num_samples", seg.num_samples}, {"record_bytes", seg.record_bytes},
                        {"index", RefToJson(seg.index)}, {"keys", RefToJson(seg.keys)},
                        {"shards", std::move(shards)}});
  }
  Json body = {{"format", kFormatName}, {"format_version", kFormatVersion},
               {"version", m.version}, {"created_unix_ns", m.created_unix_ns},
               {"fields", std::move(fields)}, {"num_samples", m.num_samples},
               {"total_bytes", m.total_bytes}, {"segments", std::move(segments)}};
  GRANARY_ASSIGN_OR_RETURN(std::string text, json::Dump(body, what));
  return WrapEnvelope(kManifestMagic, kFormatVersion, text);
}

Result<DatasetManifest> DecodeManifest(std::string_view bytes, std::string_view key) {
  GRANARY_ASSIGN_OR_RETURN(
      std::string_view body,
      UnwrapEnvelope(bytes, kManifestMagic, kFormatVersion, kMaxManifestBytes, "manifest", key));
  GRANARY_ASSIGN_OR_RETURN(Json json, json::ParseObject(body, "manifest", key));
  const std::string where = "manifest " + std::string(key);
  std::string format;
  uint32_t format_version = 0;
  if (!GetString(json, "format", &format) || format != kFormatName) {
    return DataLossError(where + ": \"format\" is not \"granary.dataset\"");
  }
  if (!GetU32(json, "format_version", &format_version)) {
    return DataLossError(where + ": missing or mistyped format_version");
  }
  if (format_version != kFormatVersion) {
    return InvalidArgumentError(where + ": format_version " + std::to_string(format_version) +
                                " is not supported (this build reads version " +
                                std::to_string(kFormatVersion) + ")");
  }
  DatasetManifest m;
  auto fields = json.find("fields");
  auto segments = json.find("segments");
  if (!GetU64(json, "version", &m.version) || !GetI64(json, "created_unix_ns", &m.created_unix_ns) ||
      !GetU64(json, "num_samples", &m.num_samples) ||
      !GetU64(json, "total_bytes", &m.total_bytes) || fields == json.end() ||
      !fields->is_array() || segments == json.end() || !segments->is_array()) {
    return DataLossError(where + ": missing or mistyped top-level field");
  }
  for (const Json& f : *fields) {
    uint64_t id = 0;
    std::string name;
    if (!f.is_object() || !GetU64(f, "id", &id) || !GetString(f, "name", &name) ||
        id != m.fields.size()) {
      return DataLossError(where + ": field table entry " + std::to_string(m.fields.size()) +
                           " is malformed (ids must be 0, 1, 2, ... in order)");
    }
    m.fields.push_back(std::move(name));
  }
  for (const Json& e : *segments) {
    SegmentEntry seg;
    std::string writer_hex;
    auto shards = e.is_object() ? e.find("shards") : e.end();
    if (!e.is_object() || !GetString(e, "name", &seg.name) || !GetU64(e, "version", &seg.version) ||
        !GetString(e, "writer_id", &writer_hex) || !ParseHex16(writer_hex, &seg.writer_id) ||
        !GetU64(e, "first_sample", &seg.first_sample) ||
        !GetU64(e, "num_samples", &seg.num_samples) ||
        !GetU64(e, "record_bytes", &seg.record_bytes) || !RefFromJson(e, "index", &seg.index) ||
        !RefFromJson(e, "keys", &seg.keys) || shards == e.end() || !shards->is_array()) {
      return DataLossError(where + ": segment entry " + std::to_string(m.segments.size()) +
                           " has a missing or mistyped field");
    }
    for (const Json& s : *shards) {
      ShardEntry sh;
      if (!s.is_object() || !GetString(s, "key", &sh.key) ||
          !GetU64(s, "first_sample", &sh.first_sample) ||
          !GetU64(s, "num_samples", &sh.num_samples) ||
          !GetU64(s, "record_bytes", &sh.record_bytes) ||
          !GetU64(s, "size_bytes", &sh.size_bytes)) {
        return DataLossError(where + ": shard entry " + std::to_string(seg.shards.size()) +
                             " of segment \"" + seg.name + "\" has a missing or mistyped field");
      }
      seg.shards.push_back(std::move(sh));
    }
    m.segments.push_back(std::move(seg));
  }
  Status s = ValidateManifest(m, where);
  if (!s.ok()) return DataLossError(s.message());
  // The key names the version; a manifest copied under another version's key is garbage.
  std::string_view base = key.substr(key.rfind('/') == std::string_view::npos ? 0 : key.rfind('/') + 1);
  if (std::optional<uint64_t> v = ParseManifestKey(base); v && *v != m.version) {
    return DataLossError(where + ": holds version " + std::to_string(m.version) +
                         " under the key of version " + std::to_string(*v));
  }
  return m;
}

}  // namespace granary::dataset
