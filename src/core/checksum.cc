#include "core/checksum.h"

#include <isa-l/crc.h>
#include <xxhash.h>

#include <cstdio>

#include "core/xxh3_dispatch.h"

namespace granary {
namespace {
// XXH3's AVX2 build is about twice as fast as the portable one libxxhash ships.
const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
}  // namespace

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  // ISA-L's crc32_iscsi takes and returns the register without the final inversion.
  return ~crc32_iscsi(static_cast<unsigned char*>(const_cast<void*>(data)),
                      static_cast<int>(size), ~crc);
}

uint64_t Xxh3_64(const void* data, size_t size) { return XXH3_64bits(data, size); }

Hash128 Xxh3_128(const void* data, size_t size) {
  if (kHaveAvx2) return internal::Xxh3_128Avx2(data, size);
  XXH128_hash_t h = XXH3_128bits(data, size);
  return Hash128{h.low64, h.high64};
}

std::string Hash128::ToHex() const {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%016llx%016llx", static_cast<unsigned long long>(high),
                static_cast<unsigned long long>(low));
  return std::string(buf, 32);
}

Xxh3_128Hasher::Xxh3_128Hasher()
    : state_(kHaveAvx2 ? internal::Xxh3Avx2NewState() : XXH3_createState()) {
  if (!kHaveAvx2) XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_));
}
Xxh3_128Hasher::~Xxh3_128Hasher() {
  if (kHaveAvx2) {
    internal::Xxh3Avx2FreeState(state_);
  } else {
    XXH3_freeState(static_cast<XXH3_state_t*>(state_));
  }
}
void Xxh3_128Hasher::Update(const void* data, size_t size) {
  if (kHaveAvx2) return internal::Xxh3Avx2Update(state_, data, size);
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), data, size);
}
Hash128 Xxh3_128Hasher::Digest() const {
  if (kHaveAvx2) return internal::Xxh3Avx2Digest(state_);
  XXH128_hash_t h = XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_));
  return Hash128{h.low64, h.high64};
}

}  // namespace granary
