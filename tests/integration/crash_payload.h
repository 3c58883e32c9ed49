// Self-checking payloads for crash tests: a reader can tell a complete value from a torn,
// truncated or mixed one without knowing what was written.
//
// Layout (little-endian): [crc32c of bytes 4..end: u32][total size: u64][sequence: u64][filler]
// The filler depends on the sequence number, so two values never share a byte pattern.
#ifndef GRANARY_TESTS_INTEGRATION_CRASH_PAYLOAD_H_
#define GRANARY_TESTS_INTEGRATION_CRASH_PAYLOAD_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "core/checksum.h"

namespace granary::testing {

inline constexpr size_t kCrashPayloadHeaderBytes = 20;

inline std::string MakeCrashPayload(uint64_t sequence, size_t size) {
  if (size < kCrashPayloadHeaderBytes) size = kCrashPayloadHeaderBytes;
  std::string out(size, '\0');
  uint64_t total = size;
  std::memcpy(out.data() + 4, &total, 8);
  std::memcpy(out.data() + 12, &sequence, 8);
  uint64_t x = sequence * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (size_t i = kCrashPayloadHeaderBytes; i < size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, std::min<size_t>(8, size - i));
  }
  uint32_t crc = Crc32c(out.data() + 4, size - 4);
  std::memcpy(out.data(), &crc, 4);
  return out;
}

// True if `value` is one complete payload; `why` says what is wrong otherwise.
inline bool CheckCrashPayload(std::string_view value, std::string* why) {
  if (value.size() < kCrashPayloadHeaderBytes) {
    *why = "only " + std::to_string(value.size()) + " bytes";
    return false;
  }
  uint32_t crc;
  uint64_t total;
  std::memcpy(&crc, value.data(), 4);
  std::memcpy(&total, value.data() + 4, 8);
  if (total != value.size()) {
    *why = "header says " + std::to_string(total) + " bytes, object has " +
           std::to_string(value.size());
    return false;
  }
  if (Crc32c(value.data() + 4, value.size() - 4) != crc) {
    *why = "crc32c mismatch";
    return false;
  }
  return true;
}

}  // namespace granary::testing

#endif  // GRANARY_TESTS_INTEGRATION_CRASH_PAYLOAD_H_
