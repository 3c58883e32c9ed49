#include "model/safetensors_format.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <functional>
#include <set>
#include <tuple>

#include "core/json_fields.h"

namespace granary::model {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the safetensors length prefix is read in place as little-endian");

using json::Json;

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t bits;
};

// Sizes from the reference crate's Dtype::bitsize.
constexpr std::array<DTypeInfo, 22> kDTypes = {{
    {DType::kBool, "BOOL", 8},     {DType::kF4, "F4", 4},
    {DType::kF6E2M3, "F6_E2M3", 6}, {DType::kF6E3M2, "F6_E3M2", 6},
    {DType::kU8, "U8", 8},         {DType::kI8, "I8", 8},
    {DType::kF8E5M2, "F8_E5M2", 8}, {DType::kF8E4M3, "F8_E4M3", 8},
    {DType::kF8E8M0, "F8_E8M0", 8}, {DType::kF8E4M3Fnuz, "F8_E4M3FNUZ", 8},
    {DType::kF8E5M2Fnuz, "F8_E5M2FNUZ", 8}, {DType::kI16, "I16", 16},
    {DType::kU16, "U16", 16},      {DType::kF16, "F16", 16},
    {DType::kBF16, "BF16", 16},    {DType::kI32, "I32", 32},
    {DType::kU32, "U32", 32},      {DType::kF32, "F32", 32},
    {DType::kC64, "C64", 64},      {DType::kF64, "F64", 64},
    {DType::kI64, "I64", 64},      {DType::kU64, "U64", 64},
}};

const DTypeInfo& Info(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }

// Names from a corrupt file can be huge or binary; show a bounded prefix.
std::string Quote(std::string_view s) {
  constexpr size_t kShown = 80;
  std::string out = "\"" + std::string(s.substr(0, kShown));
  if (s.size() > kShown) out += "...";
  return out + "\"";
}

Status Corrupt(std::string_view file, std::string_view what) {
  return DataLossError(std::string(file) + ": safetensors header: " + std::string(what));
}
Status CorruptTensor(std::string_view file, std::string_view tensor, std::string_view what) {
  return Corrupt(file, "tensor " + Quote(tensor) + ": " + std::string(what));
}

// JSON integers that are >= 0 and fit u64, as serde's usize takes them. "-0" is rejected like the
// reference, whose serde_json reads it as the float -0.0.
bool GetNonNegative(const Json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  *out = v.get<uint64_t>();
  return true;
}

// serde_json's default recursion limit: it fails on the 128th nested container.
constexpr int kMaxJsonDepth = 127;

// What nlohmann's parse accepts but the reference refuses, found during the parse:
// - nesting beyond serde_json's recursion limit;
// - repeated keys. nlohmann keeps the last one silently; serde rejects a repeated field inside a
//   struct. Depth 1 keys are tensor names (repeats rejected: see the header); depth 2 keys are
//   fields of a tensor entry unless under "__metadata__" (a map, where the reference also keeps
//   the last value).
struct JsonChecks {
  std::vector<std::set<std::string>> open_objects;
  bool too_deep = false;
  std::string top_key;
  std::string duplicate;  // first repeated key found, with its parent
  bool found = false;

  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth) too_deep = true;
        break;
      case Json::parse_event_t::object_start:
        if (depth >= kMaxJsonDepth) too_deep = true;
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key: {
        if (open_objects.empty() || !parsed.is_string()) break;
        const std::string& key = parsed.get_ref<const std::string&>();
        if (depth == 1) top_key = key;
        const bool checked = depth == 1 || (depth == 2 && top_key != kSafetensorsMetadataKey);
        if (checked && !open_objects.back().insert(key).second && !found) {
          found = true;
          duplicate = depth == 1 ? "tensor " + Quote(key) + " appears twice"
                                 : "tensor " + Quote(top_key) + ": field " + Quote(key) +
                                       " appears twice";
        }
        break;
      }
      default:
        break;
    }
    return true;  // keep everything; the verdict is read after the parse
  }
};

Status ParseTensor(const std::string& name, const Json& entry, uint64_t data_bytes,
                   std::string_view file, TensorEntry* out) {
  if (name.empty()) return Corrupt(file, "empty tensor name");
  if (!entry.is_object()) return CorruptTensor(file, name, "entry is not a JSON object");
  out->name = name;

  std::string dtype_name;
  if (!json::GetString(entry, "dtype", &dtype_name)) {
    return CorruptTensor(file, name, "missing or non-string \"dtype\"");
  }
  Result<DType> dtype = ParseDType(dtype_name);
  if (!dtype.ok()) {
    return InvalidArgumentError(std::string(file) + ": safetensors header: tensor " + Quote(name) +
                                ": " + dtype.status().message());
  }
  out->dtype = *dtype;

  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) {
    return CorruptTensor(file, name, "missing or non-array \"shape\"");
  }
  // Element count and byte size checked for overflow as the reference does (usize::checked_mul).
  uint64_t elements = 1;
  bool overflow = false;
  out->shape.reserve(shape->size());
  for (const Json& dim : *shape) {
    uint64_t d = 0;
    if (!GetNonNegative(dim, &d)) {
      std::string shown = dim.dump();  // strings were UTF-8 checked by the parse: no throw
      if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
      return CorruptTensor(file, name,
                           "\"shape\" holds " + shown + ", not a non-negative integer");
    }
    out->shape.push_back(d);
    if (!overflow && __builtin_mul_overflow(elements, d, &elements)) overflow = true;
  }
  uint64_t bits = 0;
  if (overflow || __builtin_mul_overflow(elements, uint64_t{DTypeBits(out->dtype)}, &bits)) {
    return CorruptTensor(file, name, "element count of the shape overflows 64 bits");
  }
  if (bits % 8 != 0) {
    return CorruptTensor(file, name,
                         std::to_string(elements) + " elements of " + dtype_name +
                             " do not fill a whole number of bytes");
  }

  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
      !GetNonNegative((*offsets)[0], &out->begin) || !GetNonNegative((*offsets)[1], &out->end)) {
    return CorruptTensor(file, name, "\"data_offsets\" is not two non-negative integers");
  }
  if (out->begin > out->end) {
    return CorruptTensor(file, name, "data_offsets [" + std::to_string(out->begin) + ", " +
                                         std::to_string(out->end) + "] end before they begin");
  }
  if (out->end > data_bytes) {
    return CorruptTensor(file, name, "data_offsets end " + std::to_string(out->end) +
                                         " is past the data buffer of " +
                                         std::to_string(data_bytes) + " bytes");
  }
  if (out->end - out->begin != bits / 8) {
    return CorruptTensor(file, name, "data_offsets span " + std::to_string(out->end - out->begin) +
                                         " bytes but shape and " + dtype_name + " need " +
                                         std::to_string(bits / 8));
  }
  return Status();
}

Status ParseMetadata(const Json& value, std::string_view file, SafetensorsHeader* out) {
  if (value.is_null()) return Status();  // serde's Option: null is "no metadata"
  if (!value.is_object()) return Corrupt(file, "\"__metadata__\" is not a JSON object");
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it.value().is_string()) {
      return Corrupt(file, "\"__metadata__\" value of " + Quote(it.key()) + " is not a string");
    }
    out->metadata.emplace_back(it.key(), it.value().get<std::string>());
  }
  return Status();  // nlohmann objects iterate in key order: metadata comes out sorted
}

}  // namespace

Result<DType> ParseDType(std::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return InvalidArgumentError("unknown dtype " + Quote(name) +
                              " (known: BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, "
                              "F32, F64, C64, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, "
                              "F8_E5M2FNUZ, F6_E2M3, F6_E3M2, F4)");
}

std::string_view DTypeName(DType dtype) { return Info(dtype).name; }
size_t DTypeBits(DType dtype) { return Info(dtype).bits; }

Result<uint64_t> ParseHeaderLength(std::span<const std::byte, 8> first8, uint64_t file_size,
                                   std::string_view file) {
  uint64_t n = 0;
  std::memcpy(&n, first8.data(), sizeof(n));
  if (file_size < kSafetensorsLengthBytes) {
    return Corrupt(file, "file of " + std::to_string(file_size) +
                             " bytes is shorter than the 8-byte length");
  }
  if (n == 0) return Corrupt(file, "header length is 0");
  if (n > kMaxSafetensorsHeaderBytes) {
    return Corrupt(file, "header length " + std::to_string(n) + " exceeds the limit of " +
                             std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (n > file_size - kSafetensorsLengthBytes) {
    return Corrupt(file, "header length " + std::to_string(n) + " runs past the end of the " +
                             std::to_string(file_size) + "-byte file");
  }
  return n;
}

Result<SafetensorsHeader> ParseHeader(std::string_view json, uint64_t header_bytes,
                                      uint64_t file_size, std::string_view file) {
  // Re-check the length so callers cannot skip ParseHeaderLength's limits.
  if (header_bytes == 0 || header_bytes > kMaxSafetensorsHeaderBytes ||
      file_size < kSafetensorsLengthBytes ||
      header_bytes > file_size - kSafetensorsLengthBytes) {
    return Corrupt(file, "header length " + std::to_string(header_bytes) +
                             " is invalid for a file of " + std::to_string(file_size) + " bytes");
  }
  if (json.size() != header_bytes) {
    return Corrupt(file, "header of " + std::to_string(json.size()) + " bytes, expected " +
                             std::to_string(header_bytes));
  }
  SafetensorsHeader header;
  header.header_bytes = header_bytes;
  header.data_start = kSafetensorsLengthBytes + header_bytes;
  const uint64_t data_bytes = file_size - header.data_start;

  // nlohmann rejects invalid UTF-8 inside strings and any non-ASCII byte outside them, and allows
  // surrounding whitespace (the space padding), so this matches the reference's from_utf8 +
  // serde_json::from_str, with two exceptions handled first: nlohmann skips a leading UTF-8 byte
  // order mark, and its lexer takes a NUL byte for the end of input, accepting "{}\0garbage".
  // JSON text never holds a raw NUL (it must be escaped inside strings), so any NUL is damage.
  if (json.starts_with("\xEF\xBB\xBF")) return Corrupt(file, "not valid JSON (byte order mark)");
  if (json.find('\0') != std::string_view::npos) {
    return Corrupt(file, "not valid JSON (NUL byte at " + std::to_string(json.find('\0')) + ")");
  }
  JsonChecks checks;
  Json root = Json::parse(json.begin(), json.end(), std::ref(checks),
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) return Corrupt(file, "not valid UTF-8 JSON");
  if (!root.is_object()) return Corrupt(file, "not a JSON object");
  if (checks.too_deep) {
    return Corrupt(file, "JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  if (checks.found) return Corrupt(file, checks.duplicate);

  header.tensors.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == kSafetensorsMetadataKey) {
      GRANARY_RETURN_IF_ERROR(ParseMetadata(it.value(), file, &header));
      continue;
    }
    TensorEntry entry;
    GRANARY_RETURN_IF_ERROR(ParseTensor(it.key(), it.value(), data_bytes, file, &entry));
    entry.data_start = header.data_start;
    header.tensors.push_back(std::move(entry));
  }

  // The reference sorts by (begin, end) and requires the tensors to tile the buffer: no overlap,
  // no gap, nothing after the last one.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  uint64_t expected_begin = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& t : header.tensors) {
    if (t.begin != expected_begin) {
      std::string where = previous == nullptr ? "the start of the data buffer"
                                              : "the end of tensor " + Quote(previous->name);
      return CorruptTensor(file, t.name,
                           (t.begin < expected_begin ? "overlaps: begins at " : "gap: begins at ") +
                               std::to_string(t.begin) + " but " + where + " is " +
                               std::to_string(expected_begin));
    }
    expected_begin = t.end;
    previous = &t;
  }
  if (expected_begin != data_bytes) {
    return Corrupt(file, "tensors cover " + std::to_string(expected_begin) +
                             " bytes of a data buffer of " + std::to_string(data_bytes) +
                             " bytes" +
                             (previous ? " (last tensor " + Quote(previous->name) + ")" : ""));
  }
  return header;
}

Status LayoutTensors(std::vector<TensorEntry>* tensors) {
  std::sort(tensors->begin(), tensors->end(), [](const TensorEntry& a, const TensorEntry& b) {
    if (a.dtype != b.dtype) return a.dtype > b.dtype;
    return a.name < b.name;
  });
  uint64_t offset = 0;
  for (TensorEntry& t : *tensors) {
    uint64_t bits = DTypeBits(t.dtype);
    bool overflow = false;
    for (uint64_t d : t.shape) overflow |= __builtin_mul_overflow(bits, d, &bits);
    if (overflow || bits % 8 != 0 || __builtin_add_overflow(offset, bits / 8, &t.end)) {
      return InvalidArgumentError("safetensors tensor " + Quote(t.name) + ": shape of " +
                                  std::string(DTypeName(t.dtype)) +
                                  " overflows or is not a whole number of bytes");
    }
    t.begin = offset;
    offset = t.end;
  }
  return Status();
}

Result<std::string> EncodeHeader(std::span<const TensorEntry> tensors,
                                 std::span<const std::pair<std::string, std::string>> metadata) {
  std::vector<const TensorEntry*> order;
  order.reserve(tensors.size());
  for (const TensorEntry& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorEntry* a, const TensorEntry* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });

  // Written by hand rather than by dumping an nlohmann object, which would sort the keys; the
  // reference emits "__metadata__" first, then tensors by offset, fields dtype/shape/data_offsets.
  // Json(string).dump() escapes strings exactly as serde_json does (\" \\ \b \f \n \r \t, other
  // controls as \u00xx, everything else raw) and throws on invalid UTF-8, caught by json::Dump.
  std::string body = "{";
  if (!metadata.empty()) {
    std::set<std::string_view> keys;
    body += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      const auto& [key, value] = metadata[i];
      if (!keys.insert(key).second) {
        return InvalidArgumentError("safetensors metadata key " + Quote(key) + " repeats");
      }
      GRANARY_ASSIGN_OR_RETURN(std::string k, json::Dump(Json(key), "safetensors metadata key"));
      GRANARY_ASSIGN_OR_RETURN(
          std::string v, json::Dump(Json(value), "safetensors metadata value of " + Quote(key)));
      if (i > 0) body += ',';
      body += k + ':' + v;
    }
    body += '}';
  }
  for (const TensorEntry* t : order) {
    GRANARY_ASSIGN_OR_RETURN(std::string name,
                             json::Dump(Json(t->name), "safetensors tensor " + Quote(t->name)));
    if (body.size() > 1) body += ',';
    body += name + ":{\"dtype\":\"" + std::string(DTypeName(t->dtype)) + "\",\"shape\":[";
    for (size_t i = 0; i < t->shape.size(); ++i) {
      if (i > 0) body += ',';
      body += std::to_string(t->shape[i]);
    }
    body += "],\"data_offsets\":[" + std::to_string(t->begin) + ',' + std::to_string(t->end) +
            "]}";
  }
  body += '}';
  body.append((kSafetensorsHeaderAlignment - body.size() % kSafetensorsHeaderAlignment) %
                  kSafetensorsHeaderAlignment,
              ' ');

  // Validate by parsing what we wrote: whatever we emit, we (and the reference) can read back.
  const uint64_t n = body.size();
  const uint64_t data_bytes = order.empty() ? 0 : order.back()->end;
  if (n > kMaxSafetensorsHeaderBytes) {
    return InvalidArgumentError("safetensors header of " + std::to_string(n) +
                                " bytes exceeds the limit of " +
                                std::to_string(kMaxSafetensorsHeaderBytes));
  }
  Result<SafetensorsHeader> check =
      ParseHeader(body, n, kSafetensorsLengthBytes + n + data_bytes, "<encoded>");
  if (!check.ok()) return InvalidArgumentError(check.status().message());

  std::string out(kSafetensorsLengthBytes, '\0');
  std::memcpy(out.data(), &n, sizeof(n));
  out += body;
  return out;
}

}  // namespace granary::model
