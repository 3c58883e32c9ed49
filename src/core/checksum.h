// Checksums and content hashes used by every on-disk format.
//   Crc32c: CRC-32C (Castagnoli), hardware-accelerated through ISA-L. Per chunk/record checks.
//   Xxh3_64 / Xxh3_128: seedless XXH3 (libxxhash), for content names that must match across
//   processes and machines.
// All functions are pure and thread-safe.
#ifndef GRANARY_CORE_CHECKSUM_H_
#define GRANARY_CORE_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace granary {

// CRC-32C of `data`; Crc32c("123456789") == 0xE3069283. Pass a previous result as `crc` to
// extend: Crc32c(b, Crc32c(a)) == Crc32c(a + b).
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);
inline uint32_t Crc32c(std::string_view s, uint32_t crc = 0) {
  return Crc32c(s.data(), s.size(), crc);
}

uint64_t Xxh3_64(const void* data, size_t size);

struct Hash128 {
  uint64_t low = 0;
  uint64_t high = 0;
  friend bool operator==(const Hash128&, const Hash128&) = default;
  // 32 lowercase hex digits, high word first (stable across machines).
  std::string ToHex() const;
};
Hash128 Xxh3_128(const void* data, size_t size);

// Streaming XXH3-128 for data that arrives in pieces. Not thread-safe.
class Xxh3_128Hasher {
 public:
  Xxh3_128Hasher();
  ~Xxh3_128Hasher();
  Xxh3_128Hasher(const Xxh3_128Hasher&) = delete;
  Xxh3_128Hasher& operator=(const Xxh3_128Hasher&) = delete;
  void Update(const void* data, size_t size);
  Hash128 Digest() const;

 private:
  void* state_;  // XXH3_state_t, kept opaque so xxhash.h stays out of this header.
};

}  // namespace granary

#endif  // GRANARY_CORE_CHECKSUM_H_
