#include "checkpoint/checkpoint_manifest.h"

#include <charconv>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "checkpoint/checkpoint_format.h"
#include "core/envelope.h"
#include "core/json_fields.h"

namespace granary::checkpoint {
namespace {

using json::Dump;
using json::GetArray;
using json::GetString;
using json::GetU32;
using json::GetU64;
using json::Json;

// The checkpoint envelope is the generic one (core/envelope.h) with this format's constants.
static_assert(kEnvelopeHeaderBytes == ::granary::kEnvelopeHeaderBytes &&
              kEnvelopeTrailerBytes == ::granary::kEnvelopeTrailerBytes &&
              kMagicBytes == kEnvelopeMagicBytes);

struct DtypeInfo {
  std::string_view name;
  uint32_t bytes;
};
// torch dtype names as str(torch.dtype) prints them, without the "torch." prefix.
constexpr DtypeInfo kDtypes[] = {
    {"float64", 8},       {"float32", 4},         {"float16", 2},      {"bfloat16", 2},
    {"complex128", 16},   {"complex64", 8},       {"complex32", 4},    {"int64", 8},
    {"int32", 4},         {"int16", 2},           {"int8", 1},         {"uint64", 8},
    {"uint32", 4},        {"uint16", 2},          {"uint8", 1},        {"bool", 1},
    {"float8_e4m3fn", 1}, {"float8_e5m2", 1},     {"float8_e4m3fnuz", 1},
    {"float8_e5m2fnuz", 1}, {"float8_e8m0fnu", 1}, {"qint8", 1},       {"quint8", 1},
    {"qint32", 4},
};

std::string Wrap(std::string_view magic, std::string_view body) {
  return WrapEnvelope(magic, kFormatVersion, body);
}

Result<std::string_view> Unwrap(std::string_view bytes, std::string_view magic,
                                std::string_view kind, std::string_view key) {
  return UnwrapEnvelope(bytes, magic, kFormatVersion, kMaxBodyBytes, kind, key);
}

bool ParseHex128(std::string_view hex, Hash128* out) {
  if (hex.size() != 32) return false;
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  auto parse = [](std::string_view s, uint64_t* v) {
    return std::from_chars(s.data(), s.data() + s.size(), *v, 16).ec == std::errc();
  };
  return parse(hex.substr(0, 16), &out->high) && parse(hex.substr(16), &out->low);
}

bool ParseDigits(std::string_view s, size_t pos, int digits, uint64_t* out) {
  if (pos + digits > s.size()) return false;
  uint64_t v = 0;
  for (int i = 0; i < digits; ++i) {
    const char c = s[pos + i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = v;
  return true;
}

std::string Padded(uint64_t v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%0*llu", digits, static_cast<unsigned long long>(v));
  return buf;
}

// Converts an invariant failure found while decoding into DataLoss: the crc passed, so the bytes
// are what some writer produced, but no correct writer produces them.
Status AsDataLoss(const Status& s) {
  return s.ok() ? s : DataLossError(s.message());
}

}  // namespace

Result<uint32_t> DtypeElementBytes(std::string_view dtype) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.name == dtype) return d.bytes;
  }
  return InvalidArgumentError("unknown dtype \"" + std::string(dtype) + "\"");
}

std::string StepDir(uint64_t step) { return std::string(kStepPrefix) + Padded(step, kStepDigits); }
std::string DataKey(uint64_t step, uint32_t rank, uint32_t index) {
  return StepDir(step) + "/" + std::string(kRankPrefix) + Padded(rank, kRankDigits) +
         std::string(kDataInfix) + Padded(index, kDataIndexDigits);
}
std::string ManifestKey(uint64_t step, uint32_t rank) {
  return StepDir(step) + "/" + std::string(kRankPrefix) + Padded(rank, kRankDigits) +
         std::string(kManifestSuffix);
}
std::string CommitKey(uint64_t step) { return StepDir(step) + "/" + std::string(kCommitName); }

std::string JoinKey(std::string_view root, std::string_view relative) {
  while (!root.empty() && root.back() == '/') root.remove_suffix(1);
  if (root.empty()) return std::string(relative);
  return std::string(root) + "/" + std::string(relative);
}

namespace {
// Parses "step-NNNNNNNNNNNN/" at the start of `relative`; returns the position after the '/'.
std::optional<uint64_t> ParseStepDir(std::string_view relative, size_t* after) {
  uint64_t step = 0;
  if (!relative.starts_with(kStepPrefix) ||
      !ParseDigits(relative, kStepPrefix.size(), kStepDigits, &step)) {
    return std::nullopt;
  }
  const size_t slash = kStepPrefix.size() + kStepDigits;
  if (relative.size() <= slash || relative[slash] != '/') return std::nullopt;
  *after = slash + 1;
  return step;
}
}  // namespace

std::optional<uint64_t> ParseCommitKey(std::string_view relative) {
  size_t after = 0;
  std::optional<uint64_t> step = ParseStepDir(relative, &after);
  if (!step || relative.substr(after) != kCommitName) return std::nullopt;
  return step;
}

std::optional<uint64_t> ParseDataKeyStep(std::string_view relative) {
  size_t pos = 0;
  std::optional<uint64_t> step = ParseStepDir(relative, &pos);
  if (!step) return std::nullopt;
  uint64_t rank = 0, index = 0;
  std::string_view rest = relative.substr(pos);
  if (!rest.starts_with(kRankPrefix) || !ParseDigits(rest, kRankPrefix.size(), kRankDigits, &rank)) {
    return std::nullopt;
  }
  rest.remove_prefix(kRankPrefix.size() + kRankDigits);
  if (!rest.starts_with(kDataInfix) || rest.size() != kDataInfix.size() + kDataIndexDigits ||
      !ParseDigits(rest, kDataInfix.size(), kDataIndexDigits, &index)) {
    return std::nullopt;
  }
  return step;
}

Status ValidateManifest(const RankManifest& m, std::string_view what) {
  const std::string where(what);
  if (m.step > kMaxStep) return InvalidArgumentError(where + ": step " + std::to_string(m.step) + " out of range");
  if (m.world_size < 1 || m.world_size > kMaxWorldSize || m.rank >= m.world_size) {
    return InvalidArgumentError(where + ": rank " + std::to_string(m.rank) + " / world_size " +
                                std::to_string(m.world_size) + " out of range");
  }
  if (m.chunk_bytes < 1 || m.chunk_bytes > kMaxChunkBytes) {
    return InvalidArgumentError(where + ": chunk_bytes " + std::to_string(m.chunk_bytes) + " out of range");
  }
  Json meta = Json::parse(m.user_metadata_json, nullptr, /*allow_exceptions=*/false);
  if (meta.is_discarded() || !meta.is_object()) {
    return InvalidArgumentError(where + ": user metadata is not a JSON object");
  }
  std::unordered_set<std::string_view> names;
  for (const TensorEntry& t : m.tensors) {
    const std::string tw = where + ": tensor \"" + t.name + "\"";
    if (t.name.empty()) return InvalidArgumentError(where + ": a tensor has an empty name");
    if (!names.insert(t.name).second) return InvalidArgumentError(tw + " appears twice");
    Result<uint32_t> elem = DtypeElementBytes(t.dtype);
    if (!elem.ok()) return elem.status().WithContext(tw);
    uint64_t bytes = *elem;
    for (uint64_t d : t.shape) {
      if (__builtin_mul_overflow(bytes, d, &bytes)) return InvalidArgumentError(tw + ": shape overflows");
    }
    if (bytes != t.length) {
      return InvalidArgumentError(tw + ": length " + std::to_string(t.length) + " but shape and dtype give " +
                                  std::to_string(bytes));
    }
    uint64_t end = 0;
    if (__builtin_add_overflow(t.offset, t.length, &end)) return InvalidArgumentError(tw + ": offset overflows");
    const uint64_t chunks = t.length / m.chunk_bytes + (t.length % m.chunk_bytes != 0 ? 1 : 0);
    if (t.chunk_crc32c.size() != chunks) {
      return InvalidArgumentError(tw + ": " + std::to_string(t.chunk_crc32c.size()) + " chunk crcs, expected " +
                                  std::to_string(chunks));
    }
    if (t.global_shape.size() != t.global_offset.size() ||
        (!t.global_shape.empty() && t.global_shape.size() != t.shape.size())) {
      return InvalidArgumentError(tw + ": global_shape/global_offset do not match the shape's rank");
    }
    for (size_t i = 0; i < t.global_shape.size(); ++i) {
      uint64_t hi = 0;
      if (__builtin_add_overflow(t.global_offset[i], t.shape[i], &hi) || hi > t.global_shape[i]) {
        return InvalidArgumentError(tw + ": shard exceeds global_shape in dimension " + std::to_string(i));
      }
    }
    std::optional<uint64_t> key_step = ParseDataKeyStep(t.key);
    if (!key_step || *key_step > m.step) {
      return InvalidArgumentError(tw + ": data key \"" + t.key + "\" is not a data file of this or an earlier step");
    }
  }
  return Status::OK();
}

Status ValidateCommit(const CommitRecord& c, std::string_view what) {
  const std::string where(what);
  if (c.step > kMaxStep) return InvalidArgumentError(where + ": step out of range");
  if (c.world_size < 1 || c.world_size > kMaxWorldSize || c.manifests.size() != c.world_size) {
    return InvalidArgumentError(where + ": world_size " + std::to_string(c.world_size) + " with " +
                                std::to_string(c.manifests.size()) + " manifests");
  }
  for (uint32_t r = 0; r < c.world_size; ++r) {
    const ManifestRef& ref = c.manifests[r];
    if (ref.rank != r || ref.key != ManifestKey(c.step, r) ||
        ref.length < kEnvelopeHeaderBytes + kEnvelopeTrailerBytes) {
      return InvalidArgumentError(where + ": manifest entry " + std::to_string(r) + " is malformed");
    }
  }
  return Status::OK();
}

Result<std::string> EncodeManifest(const RankManifest& m) {
  const std::string what = "manifest of step " + std::to_string(m.step) + " rank " + std::to_string(m.rank);
  GRANARY_RETURN_IF_ERROR(ValidateManifest(m, what));
  Json tensors = Json::array();
  for (const TensorEntry& t : m.tensors) {
    Json e = {{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"key", t.key},
              {"offset", t.offset}, {"length", t.length}, {"xxh3_128", t.xxh3.ToHex()},
              {"chunk_crc32c", t.chunk_crc32c}};
    if (!t.global_shape.empty()) {
      e["global_shape"] = t.global_shape;
      e["global_offset"] = t.global_offset;
    }
    tensors.push_back(std::move(e));
  }
  Json body = {{"step", m.step}, {"rank", m.rank}, {"world_size", m.world_size},
               {"chunk_bytes", m.chunk_bytes}, {"tensors", std::move(tensors)},
               {"user_metadata", Json::parse(m.user_metadata_json, nullptr, false)}};
  if (!m.save_id.empty()) body["save_id"] = m.save_id;
  GRANARY_ASSIGN_OR_RETURN(std::string text, Dump(body, what));
  return Wrap(kManifestMagic, text);
}

Result<RankManifest> DecodeManifest(std::string_view bytes, std::string_view key) {
  GRANARY_ASSIGN_OR_RETURN(std::string_view body, Unwrap(bytes, kManifestMagic, "manifest", key));
  GRANARY_ASSIGN_OR_RETURN(Json json, json::ParseObject(body, "manifest", key));
  const std::string where = "manifest " + std::string(key);
  RankManifest m;
  auto meta = json.find("user_metadata");
  auto tensors = json.find("tensors");
  if (!GetU64(json, "step", &m.step) || !GetU32(json, "rank", &m.rank) ||
      !GetU32(json, "world_size", &m.world_size) || !GetU64(json, "chunk_bytes", &m.chunk_bytes) ||
      meta == json.end() || !meta->is_object() || tensors == json.end() || !tensors->is_array()) {
    return DataLossError(where + ": missing or mistyped top-level field");
  }
  GRANARY_ASSIGN_OR_RETURN(m.user_metadata_json, Dump(*meta, where));
  if (json.contains("save_id") && !GetString(json, "save_id", &m.save_id)) {
    return DataLossError(where + ": save_id is not a string");
  }
  m.tensors.reserve(tensors->size());
  for (const Json& e : *tensors) {
    TensorEntry t;
    std::string hex;
    if (!e.is_object() || !GetString(e, "name", &t.name) || !GetString(e, "dtype", &t.dtype) ||
        !GetArray(e, "shape", &t.shape) || !GetString(e, "key", &t.key) ||
        !GetU64(e, "offset", &t.offset) || !GetU64(e, "length", &t.length) ||
        !GetString(e, "xxh3_128", &hex) || !ParseHex128(hex, &t.xxh3) ||
        !GetArray(e, "chunk_crc32c", &t.chunk_crc32c) ||
        !GetArray(e, "global_shape", &t.global_shape, /*optional=*/true) ||
        !GetArray(e, "global_offset", &t.global_offset, /*optional=*/true)) {
      return DataLossError(where + ": tensor entry " + std::to_string(m.tensors.size()) +
                           " has a missing or mistyped field");
    }
    m.tensors.push_back(std::move(t));
  }
  GRANARY_RETURN_IF_ERROR(AsDataLoss(ValidateManifest(m, where)));
  return m;
}

Result<std::string> EncodeCommit(const CommitRecord& c) {
  const std::string what = "COMMIT of step " + std::to_string(c.step);
  GRANARY_RETURN_IF_ERROR(ValidateCommit(c, what));
  Json manifests = Json::array();
  for (const ManifestRef& r : c.manifests) {
    manifests.push_back({{"rank", r.rank}, {"key", r.key}, {"length", r.length}, {"crc32c", r.crc32c}});
  }
  Json body = {{"step", c.step}, {"world_size", c.world_size}, {"manifests", std::move(manifests)}};
  GRANARY_ASSIGN_OR_RETURN(std::string text, Dump(body, what));
  return Wrap(kCommitMagic, text);
}

Result<CommitRecord> DecodeCommit(std::string_view bytes, std::string_view key) {
  GRANARY_ASSIGN_OR_RETURN(std::string_view body, Unwrap(bytes, kCommitMagic, "COMMIT", key));
  GRANARY_ASSIGN_OR_RETURN(Json json, json::ParseObject(body, "COMMIT", key));
  const std::string where = "COMMIT " + std::string(key);
  CommitRecord c;
  auto manifests = json.find("manifests");
  if (!GetU64(json, "step", &c.step) || !GetU32(json, "world_size", &c.world_size) ||
      manifests == json.end() || !manifests->is_array()) {
    return DataLossError(where + ": missing or mistyped top-level field");
  }
  for (const Json& e : *manifests) {
    ManifestRef r;
    if (!e.is_object() || !GetU32(e, "rank", &r.rank) || !GetString(e, "key", &r.key) ||
        !GetU64(e, "length", &r.length) || !GetU32(e, "crc32c", &r.crc32c)) {
      return DataLossError(where + ": manifest entry has a missing or mistyped field");
    }
    c.manifests.push_back(std::move(r));
  }
  GRANARY_RETURN_IF_ERROR(AsDataLoss(ValidateCommit(c, where)));
  return c;
}

std::string EncodeLatest(uint64_t step) {
  return Wrap(kLatestMagic, Json({{"step", step}}).dump());
}

Result<uint64_t> DecodeLatest(std::string_view bytes, std::string_view key) {
  GRANARY_ASSIGN_OR_RETURN(std::string_view body, Unwrap(bytes, kLatestMagic, "latest", key));
  GRANARY_ASSIGN_OR_RETURN(Json json, json::ParseObject(body, "latest", key));
  uint64_t step = 0;
  if (!GetU64(json, "step", &step) || step > kMaxStep) {
    return DataLossError("latest " + std::string(key) + ": missing or out-of-range step");
  }
  return step;
}

}  // namespace granary::checkpoint
