#include "core/envelope.h"

#include <string>

#include <gtest/gtest.h>

#include "core/json_fields.h"

namespace granary {
namespace {

constexpr std::string_view kMagic = "GRNTSTEN";

TEST(EnvelopeTest, RoundTrip) {
  const std::string sealed = WrapEnvelope(kMagic, 3, R"({"a":1})");
  EXPECT_EQ(sealed.size(), kEnvelopeHeaderBytes + 7 + kEnvelopeTrailerBytes);
  Result<std::string_view> body = UnwrapEnvelope(sealed, kMagic, 3, 1 << 20, "thing", "k/x");
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  EXPECT_EQ(*body, R"({"a":1})");
}

TEST(EnvelopeTest, RejectsDamageAsDataLossNamingKey) {
  const std::string sealed = WrapEnvelope(kMagic, 1, "body");
  auto check = [&](std::string bytes, std::string_view why) {
    Result<std::string_view> r = UnwrapEnvelope(bytes, kMagic, 1, 1 << 20, "thing", "k/x");
    ASSERT_FALSE(r.ok()) << why;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << why;
    EXPECT_NE(r.status().message().find("thing k/x"), std::string::npos) << r.status().ToString();
  };
  check(sealed.substr(0, 10), "truncated header");
  check(sealed.substr(0, sealed.size() - 1), "truncated trailer");
  std::string bad_magic = sealed;
  bad_magic[0] = 'X';
  check(bad_magic, "magic");
  std::string flipped = sealed;
  flipped[kEnvelopeHeaderBytes + 1] ^= 1;
  check(flipped, "body bit");
  std::string version = sealed;
  version[8] = 2;  // crc no longer matches: corruption, not a newer version
  check(version, "version byte");
  // A body longer than the reader's limit.
  Result<std::string_view> r = UnwrapEnvelope(sealed, kMagic, 1, 3, "thing", "k/x");
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
}

TEST(EnvelopeTest, NewerVersionIsInvalidArgumentNamingBoth) {
  const std::string sealed = WrapEnvelope(kMagic, 7, "{}");
  Result<std::string_view> r = UnwrapEnvelope(sealed, kMagic, 1, 1 << 20, "thing", "k/x");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("k/x"), std::string::npos);
  EXPECT_NE(r.status().message().find("version 7"), std::string::npos);
  EXPECT_NE(r.status().message().find("version 1"), std::string::npos);
}

TEST(JsonFieldsTest, GettersRejectWrongTypes) {
  // Parsed from text, as decoders see it (non-negative numbers parse as unsigned).
  json::Json j = json::Json::parse(
      R"({"u": 5, "s": "x", "neg": -1, "big": 1099511627776, "arr": [1, 2]})");
  uint64_t u = 0;
  uint32_t u32 = 0;
  std::string s;
  std::vector<uint16_t> arr;
  EXPECT_TRUE(json::GetU64(j, "u", &u));
  EXPECT_EQ(u, 5u);
  EXPECT_FALSE(json::GetU64(j, "neg", &u));
  EXPECT_FALSE(json::GetU64(j, "s", &u));
  EXPECT_FALSE(json::GetU32(j, "big", &u32));
  EXPECT_TRUE(json::GetString(j, "s", &s));
  EXPECT_FALSE(json::GetString(j, "missing", &s));
  EXPECT_TRUE(json::GetArray(j, "arr", &arr));
  EXPECT_EQ(arr.size(), 2u);
  EXPECT_TRUE(json::GetArray(j, "missing", &arr, /*optional=*/true));
  EXPECT_FALSE(json::ParseObject("[1]", "thing", "k").ok());
}

}  // namespace
}  // namespace granary
