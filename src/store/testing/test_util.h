// Helpers for store tests: recognizable payloads and byte views of strings. Test-only. The
// scratch directory and the Status assertions are in core/testing/test_util.h.
#ifndef GRANARY_STORE_TESTING_TEST_UTIL_H_
#define GRANARY_STORE_TESTING_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace granary::testing {

// `size` bytes that depend on (seed, position), so a piece of one payload never equals the same
// piece of another.
inline std::string Payload(uint64_t seed, size_t size) {
  std::string out(size, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < size; ++i) {
    if (i % 8 == 0) {  // splitmix64 step every 8 bytes
      x += 0x9E3779B97F4A7C15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      x = z ^ (z >> 31);
    }
    out[i] = static_cast<char>(x >> (8 * (i % 8)));
  }
  return out;
}

inline std::span<const std::byte> AsBytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}
inline std::span<std::byte> AsWritableBytes(std::string& s) {
  return std::as_writable_bytes(std::span(s.data(), s.size()));
}

}  // namespace granary::testing

#endif  // GRANARY_STORE_TESTING_TEST_UTIL_H_
