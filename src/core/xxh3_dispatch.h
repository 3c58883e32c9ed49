// Internal to src/core: the AVX2 build of XXH3 (xxh3_avx2.cc), chosen at run time by
// checksum.cc. Same results as the portable functions in checksum.h.
#ifndef GRANARY_CORE_XXH3_DISPATCH_H_
#define GRANARY_CORE_XXH3_DISPATCH_H_

#include <cstddef>

#include "core/checksum.h"

namespace granary::internal {

Hash128 Xxh3_128Avx2(const void* data, size_t size);
void* Xxh3Avx2NewState();
void Xxh3Avx2FreeState(void* state);
void Xxh3Avx2Update(void* state, const void* data, size_t size);
Hash128 Xxh3Avx2Digest(const void* state);

}  // namespace granary::internal

#endif  // GRANARY_CORE_XXH3_DISPATCH_H_
