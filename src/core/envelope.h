// The envelope every granary manifest-like object is sealed in (checkpoint manifest, COMMIT,
// latest; dataset manifest): magic, format version and body length up front, crc32c at the end.
//
//   [0, 8)          magic (8 ASCII bytes, one per object kind)
//   [8, 12)         format version, u32 little-endian
//   [12, 20)        body length n, u64 little-endian; must equal object size - 24
//   [20, 20+n)      body (UTF-8 JSON for every current user)
//   [20+n, 24+n)    crc32c of bytes [0, 20+n), u32 little-endian
//
// The JSON bodies are decoded with the accessors of core/json_fields.h. Pure functions;
// thread-safe.
#ifndef GRANARY_CORE_ENVELOPE_H_
#define GRANARY_CORE_ENVELOPE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "granary/status.h"

namespace granary {

inline constexpr size_t kEnvelopeMagicBytes = 8;
inline constexpr size_t kEnvelopeHeaderBytes = 20;
inline constexpr size_t kEnvelopeTrailerBytes = 4;

// Seals `body` under `magic` (exactly kEnvelopeMagicBytes) and `version`.
std::string WrapEnvelope(std::string_view magic, uint32_t version, std::string_view body);

// Checks the envelope of `bytes`, the object of kind `kind` ("manifest") stored under `key`, and
// returns a view of its body. Checks in order: size, magic, body length (<= max_body_bytes),
// crc32c, then version. DataLoss naming kind and key for anything damaged; InvalidArgument
// naming both versions for a correctly sealed object of another version (the version is checked
// after the crc so that a flipped version byte reads as corruption, a genuine newer object as
// unsupported).
Result<std::string_view> UnwrapEnvelope(std::string_view bytes, std::string_view magic,
                                        uint32_t version, uint64_t max_body_bytes,
                                        std::string_view kind, std::string_view key);

}  // namespace granary

#endif  // GRANARY_CORE_ENVELOPE_H_
