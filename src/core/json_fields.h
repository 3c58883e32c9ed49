// Non-throwing access to nlohmann::json objects for the JSON bodies of granary's envelopes
// (core/envelope.h). Private to src/: nlohmann never appears in public headers.
// Every getter returns false when the field is missing or of the wrong type, so decoders turn
// any malformed body into one DataLoss naming the object instead of an exception.
#ifndef GRANARY_CORE_JSON_FIELDS_H_
#define GRANARY_CORE_JSON_FIELDS_H_

#include <cstdint>
#include <exception>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "granary/status.h"

namespace granary::json {

using Json = nlohmann::json;

// The body as a JSON object; DataLoss naming "<kind> <key>" otherwise.
inline Result<Json> ParseObject(std::string_view body, std::string_view kind,
                                std::string_view key) {
  Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return DataLossError(std::string(kind) + " " + std::string(key) +
                         ": body is not a JSON object");
  }
  return json;
}

// Serializes without exceptions escaping (dump throws on invalid UTF-8 in strings).
inline Result<std::string> Dump(const Json& json, std::string_view what) {
  try {
    return json.dump();
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string(what) + ": cannot encode: " + e.what());
  }
}

inline bool GetU64(const Json& obj, const char* field, uint64_t* out) {
  auto it = obj.find(field);
  if (it == obj.end() || !it->is_number_unsigned()) return false;
  *out = it->get<uint64_t>();
  return true;
}
inline bool GetU32(const Json& obj, const char* field, uint32_t* out) {
  uint64_t v = 0;
  if (!GetU64(obj, field, &v) || v > UINT32_MAX) return false;
  *out = static_cast<uint32_t>(v);
  return true;
}
inline bool GetI64(const Json& obj, const char* field, int64_t* out) {
  auto it = obj.find(field);
  if (it == obj.end() || !it->is_number_integer()) return false;
  *out = it->get<int64_t>();
  return true;
}
inline bool GetString(const Json& obj, const char* field, std::string* out) {
  auto it = obj.find(field);
  if (it == obj.end() || !it->is_string()) return false;
  *out = it->get<std::string>();
  return true;
}
// An array of unsigned integers that fit T; a missing field is fine when `optional`.
template <typename T>
bool GetArray(const Json& obj, const char* field, std::vector<T>* out, bool optional = false) {
  auto it = obj.find(field);
  if (it == obj.end()) return optional;
  if (!it->is_array()) return false;
  out->clear();
  out->reserve(it->size());
  for (const Json& v : *it) {
    if (!v.is_number_unsigned()) return false;
    const uint64_t x = v.get<uint64_t>();
    if (x > std::numeric_limits<T>::max()) return false;
    out->push_back(static_cast<T>(x));
  }
  return true;
}

}  // namespace granary::json

#endif  // GRANARY_CORE_JSON_FIELDS_H_
