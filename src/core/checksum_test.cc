#include "core/checksum.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace granary {
namespace {

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  // RFC 3720 B.4: 32 bytes of zeros and of 0xFF.
  std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones), 0x62A8AB43u);
}

TEST(Crc32cTest, ExtendsAcrossPieces) {
  std::string data(100000, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  uint32_t whole = Crc32c(data);
  for (size_t cut : {0ul, 1ul, 7ul, 4096ul, 99999ul}) {
    uint32_t part = Crc32c(data.data(), cut);
    EXPECT_EQ(Crc32c(data.data() + cut, data.size() - cut, part), whole) << cut;
  }
  data[500] ^= 1;
  EXPECT_NE(Crc32c(data), whole);
}

TEST(Xxh3Test, KnownAndStable) {
  // Reference values of the seedless XXH3 on the empty input (xxHash's sanity checks).
  EXPECT_EQ(Xxh3_64("", 0), 0x2D06800538D394C2ull);
  Hash128 empty = Xxh3_128("", 0);
  EXPECT_EQ(empty.high, 0x99AA06D3014798D8ull);
  EXPECT_EQ(empty.low, 0x6001C324468D497Full);
  EXPECT_EQ(empty.ToHex(), "99aa06d3014798d86001c324468d497f");
}

TEST(Xxh3Test, StreamingMatchesOneShot) {
  std::vector<char> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i ^ (i >> 9));
  Xxh3_128Hasher h;
  h.Update(data.data(), 1000);
  h.Update(data.data() + 1000, data.size() - 1000);
  EXPECT_EQ(h.Digest(), Xxh3_128(data.data(), data.size()));
  EXPECT_NE(Xxh3_128(data.data(), data.size() - 1), Xxh3_128(data.data(), data.size()));
}

}  // namespace
}  // namespace granary
