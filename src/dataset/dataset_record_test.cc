#include "dataset/dataset_record.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/checksum.h"
#include "core/testing/test_util.h"
#include "dataset/dataset_format.h"

namespace granary::dataset {
namespace {

std::span<const std::byte> B(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }
std::string_view S(std::span<const std::byte> b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

std::string Encode(std::string_view key, const std::vector<RecordField>& fields) {
  std::string out;
  EXPECT_TRUE(EncodeRecord(key, fields, &out).ok());
  return out;
}

TEST(DatasetRecordTest, RoundTripsKeysAndFields) {
  const std::string long_key(kMaxKeyBytes, 'k');
  const std::string big(100000, 'x');
  struct Case {
    std::string key;
    std::vector<std::string> data;
  };
  std::vector<Case> cases = {{"a", {}}, {"k1", {"", "v"}}, {long_key, {big, "", "3"}}};
  Case many{"many", {}};
  for (int i = 0; i < 300; ++i) many.data.push_back(std::string(i % 7, static_cast<char>('a' + i % 26)));
  cases.push_back(many);
  for (const Case& c : cases) {
    std::vector<RecordField> fields;
    for (size_t j = 0; j < c.data.size(); ++j) fields.push_back({static_cast<uint16_t>(j * 3), B(c.data[j])});
    const std::string rec = Encode(c.key, fields);
    GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t expected, RecordBytes(c.key, fields));
    EXPECT_EQ(rec.size(), expected);
    std::string_view key;
    std::vector<ParsedField> parsed = {ParsedField{}};  // parse appends after existing fields
    GRANARY_ASSERT_OK(ParseRecord(B(rec), true, &key, &parsed));
    EXPECT_EQ(key, c.key);
    ASSERT_EQ(parsed.size(), c.data.size() + 1);
    for (size_t j = 0; j < c.data.size(); ++j) {
      EXPECT_EQ(parsed[j + 1].id, j * 3);
      EXPECT_EQ(S(parsed[j + 1].data), c.data[j]);
    }
    GRANARY_ASSERT_OK_AND_ASSIGN(size_t key_end, RecordKeyEnd(B(rec), rec.size()));
    EXPECT_EQ(RecordKey(B(std::string_view(rec).substr(0, key_end))), c.key);
  }
}

TEST(DatasetRecordTest, EveryFlippedByteIsDetected) {
  const std::string rec = Encode("key-1", {{0, B("hello")}, {1, B("")}, {2, B("world!")}});
  for (size_t i = 0; i < rec.size(); ++i) {
    std::string bad = rec;
    bad[i] ^= 0x20;
    std::string_view key;
    std::vector<ParsedField> fields;
    Status s = ParseRecord(B(bad), true, &key, &fields);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << "byte " << i;
    EXPECT_TRUE(fields.empty()) << "byte " << i;
  }
}

TEST(DatasetRecordTest, StructuralDamageIsDataLossEvenWithoutCrc) {
  const std::string rec = Encode("key", {{0, B("abc")}});
  std::string_view key;
  std::vector<ParsedField> fields;
  // Shorter than the index says, or the length field disagrees with the index.
  EXPECT_EQ(ParseRecord(B(rec).first(rec.size() - 1), false, &key, &fields).code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseRecord(B(rec).first(8), false, &key, &fields).code(), StatusCode::kDataLoss);
  std::string longer = rec + "z";
  StoreLe<uint32_t>(longer.data() + 4, static_cast<uint32_t>(longer.size()));
  EXPECT_EQ(ParseRecord(B(longer), false, &key, &fields).code(), StatusCode::kDataLoss)
      << "trailing bytes after the fields";
  std::string big_field = rec;
  StoreLe<uint32_t>(big_field.data() + kRecordFixedBytes + 2, 1000);
  EXPECT_EQ(ParseRecord(B(big_field), false, &key, &fields).code(), StatusCode::kDataLoss);
  std::string no_key = rec;
  StoreLe<uint16_t>(no_key.data() + 8, 0);
  EXPECT_EQ(ParseRecord(B(no_key), false, &key, &fields).code(), StatusCode::kDataLoss);
  EXPECT_TRUE(fields.empty());
  EXPECT_EQ(RecordKeyEnd(B(rec), rec.size() + 1).status().code(), StatusCode::kDataLoss);
}

TEST(DatasetRecordTest, RejectsBadKeysAndTooManyFields) {
  EXPECT_EQ(RecordBytes("", {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RecordBytes(std::string(kMaxKeyBytes + 1, 'k'), {}).status().code(),
            StatusCode::kInvalidArgument);
  std::vector<RecordField> fields(kMaxFields + 1);
  Status s = RecordBytes("sample-7", fields).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sample-7"), std::string::npos) << s.ToString();
}

TEST(DatasetRecordTest, ShardAndTableHeaders) {
  const std::string shard = EncodeShardHeader(7, 0xabcdef);
  ASSERT_EQ(shard.size(), kShardHeaderBytes);
  GRANARY_EXPECT_OK(CheckShardHeader(B(shard), 7, 0xabcdef, "shard s"));
  EXPECT_EQ(CheckShardHeader(B(shard), 8, 0xabcdef, "shard s").code(), StatusCode::kDataLoss);
  EXPECT_EQ(CheckShardHeader(B(shard), 7, 1, "shard s").code(), StatusCode::kDataLoss);
  for (size_t i = 0; i < kShardHeaderBytes; ++i) {
    std::string bad = shard;
    bad[i] ^= 1;
    Status s = CheckShardHeader(B(bad), 7, 0xabcdef, "shard s");
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << i;
    EXPECT_NE(s.message().find("shard s"), std::string::npos);
  }
  const std::string table = EncodeTableHeader(kIndexMagic, 1234, 99);
  GRANARY_ASSERT_OK_AND_ASSIGN(uint32_t crc, CheckTableHeader(B(table), kIndexMagic, 99, "index i"));
  EXPECT_EQ(crc, 1234u);
  EXPECT_EQ(CheckTableHeader(B(table), kKeysMagic, 99, "k").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(CheckTableHeader(B(table), kIndexMagic, 98, "k").status().code(), StatusCode::kDataLoss);
  // A sealed header of a newer version is unsupported, not damaged.
  std::string newer = table;
  StoreLe<uint32_t>(newer.data() + 8, kFormatVersion + 1);
  StoreLe<uint32_t>(newer.data() + 28, Crc32c(newer.data(), 28));
  EXPECT_EQ(CheckTableHeader(B(newer), kIndexMagic, 99, "k").status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace granary::dataset
