#include "dataset/dataset_manifest.h"

#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "core/envelope.h"
#include "core/json_fields.h"
#include "core/testing/test_util.h"
#include "dataset/dataset_format.h"

namespace granary::dataset {
namespace {

SegmentEntry MakeSegment(uint64_t version, uint64_t writer, uint64_t first, std::vector<uint64_t> counts) {
  SegmentEntry seg;
  seg.name = SegmentName(version, writer);
  seg.version = version;
  seg.writer_id = writer;
  seg.first_sample = first;
  uint64_t next = first;
  for (size_t j = 0; j < counts.size(); ++j) {
    ShardEntry sh;
    sh.key = ShardKey(seg.name, j);
    sh.first_sample = next;
    sh.num_samples = counts[j];
    sh.record_bytes = counts[j] * 100;
    sh.size_bytes = kShardHeaderBytes + sh.record_bytes;
    next += counts[j];
    seg.num_samples += counts[j];
    seg.record_bytes += sh.record_bytes;
    seg.shards.push_back(sh);
  }
  seg.index = {IndexKey(seg.name), 11, kIndexHeaderBytes + 8 * (seg.num_samples + 1)};
  seg.keys = {KeysKey(seg.name), 22, kKeysHeaderBytes + kKeyEntryBytes * seg.num_samples};
  return seg;
}

DatasetManifest MakeManifest() {
  DatasetManifest m;
  m.version = 2;
  m.created_unix_ns = 1700000000000000000;
  m.fields = {"jpg", "cls"};
  m.segments.push_back(MakeSegment(1, 0xfeedULL, 0, {3, 2}));
  m.segments.push_back(MakeSegment(2, 0xffffffffffffffffULL, 5, {4}));
  m.num_samples = 9;
  m.total_bytes = 900;
  return m;
}

// Re-seals a manifest whose JSON body was changed by `edit`, bypassing the encoder's checks.
template <typename F>
std::string Tampered(const DatasetManifest& m, F edit) {
  std::string bytes = EncodeManifest(m).value();
  std::string_view body = UnwrapEnvelope(bytes, kManifestMagic, kFormatVersion, 1 << 30, "m", "k").value();
  json::Json j = json::Json::parse(body);
  edit(j);
  return WrapEnvelope(kManifestMagic, kFormatVersion, j.dump());
}

TEST(DatasetManifestTest, KeyNaming) {
  EXPECT_EQ(ManifestKey(12), "manifest-000000000012");
  EXPECT_EQ(ParseManifestKey("manifest-000000000012"), 12u);
  EXPECT_EQ(ParseManifestKey("manifest-00000000012"), std::nullopt);
  EXPECT_EQ(ParseManifestKey("manifest-000000000012/x"), std::nullopt);
  EXPECT_EQ(ParseManifestKey("manifest-000000000000"), std::nullopt);
  const std::string seg = SegmentName(3, 0x0123456789abcdefULL);
  EXPECT_EQ(seg, "seg-000000000003-0123456789abcdef");
  uint64_t v = 0, w = 0;
  EXPECT_TRUE(ParseSegmentName(seg, &v, &w));
  EXPECT_EQ(v, 3u);
  EXPECT_EQ(w, 0x0123456789abcdefULL);
  EXPECT_FALSE(ParseSegmentName(seg + "0", &v, &w));
  EXPECT_FALSE(ParseSegmentName("seg-000000000003-0123456789ABCDEF", &v, &w));
  EXPECT_EQ(ShardKey(seg, 5), seg + "/shard-000005");
  EXPECT_EQ(JoinKey("a/b/", "x"), "a/b/x");
  EXPECT_EQ(JoinKey("", "x"), "x");
  GRANARY_EXPECT_OK(ValidateFieldName("jpg"));
  EXPECT_FALSE(ValidateFieldName("__key__").ok());
  EXPECT_FALSE(ValidateFieldName("a/b").ok());
  EXPECT_FALSE(ValidateFieldName("").ok());
  EXPECT_FALSE(ValidateFieldName(std::string(256, 'f')).ok());
}

TEST(DatasetManifestTest, RoundTrip) {
  const DatasetManifest m = MakeManifest();
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeManifest(m));
  GRANARY_ASSERT_OK_AND_ASSIGN(DatasetManifest d, DecodeManifest(bytes, "ds/manifest-000000000002"));
  EXPECT_EQ(d.version, 2u);
  EXPECT_EQ(d.created_unix_ns, m.created_unix_ns);
  EXPECT_EQ(d.fields, m.fields);
  EXPECT_EQ(d.num_samples, 9u);
  EXPECT_EQ(d.total_bytes, 900u);
  ASSERT_EQ(d.segments.size(), 2u);
  EXPECT_EQ(d.segments[1].writer_id, 0xffffffffffffffffULL);
  EXPECT_EQ(d.segments[0].shards[1].first_sample, 3u);
  EXPECT_EQ(d.segments[1].keys.crc32c, 22u);
  EXPECT_EQ(d.segments[1].index.key, m.segments[1].index.key);
}

TEST(DatasetManifestTest, UnknownFormatVersionNamesKeyAndBothVersions) {
  const DatasetManifest m = MakeManifest();
  const std::string sealed = EncodeManifest(m).value();
  const std::string body(
      UnwrapEnvelope(sealed, kManifestMagic, kFormatVersion, 1 << 30, "m", "k").value());
  const std::string newer = WrapEnvelope(kManifestMagic, kFormatVersion + 1, body);
  Status s = DecodeManifest(newer, "ds/manifest-000000000002").status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("ds/manifest-000000000002"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("version 2"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("version 1"), std::string::npos) << s.ToString();
  // The JSON's own format_version too.
  s = DecodeManifest(Tampered(m, [](json::Json& j) { j["format_version"] = 9; }), "k9").status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("format_version 9"), std::string::npos) << s.ToString();
}

TEST(DatasetManifestTest, InconsistentManifestsAreDataLossNamingTheObject) {
  const DatasetManifest m = MakeManifest();
  const std::vector<std::pair<std::string, std::function<void(json::Json&)>>> edits = {
      {"num_samples", [](json::Json& j) { j["num_samples"] = 10; }},
      {"total_bytes", [](json::Json& j) { j["total_bytes"] = 1; }},
      {"segment first", [](json::Json& j) { j["segments"][1]["first_sample"] = 4; }},
      {"shard count", [](json::Json& j) { j["segments"][0]["shards"][0]["num_samples"] = 2; }},
      {"shard size", [](json::Json& j) { j["segments"][0]["shards"][0]["size_bytes"] = 5; }},
      {"shard key", [](json::Json& j) { j["segments"][0]["shards"][1]["key"] = "seg-x/shard-000001"; }},
      {"index size", [](json::Json& j) { j["segments"][0]["index"]["size"] = 3; }},
      {"keys outside", [](json::Json& j) { j["segments"][0]["keys"]["key"] = "elsewhere"; }},
      {"version", [](json::Json& j) { j["segments"][1]["version"] = 1; }},
      {"writer id", [](json::Json& j) { j["segments"][1]["writer_id"] = "zz"; }},
      {"field ids", [](json::Json& j) { j["fields"][0]["id"] = 1; }},
      {"dup field", [](json::Json& j) { j["fields"][1]["name"] = "jpg"; }},
      {"no shards", [](json::Json& j) { j["segments"][1]["shards"] = json::Json::array(); }},
      {"format", [](json::Json& j) { j["format"] = "other"; }},
      {"mistyped", [](json::Json& j) { j["version"] = "2"; }},
  };
  for (const auto& [name, edit] : edits) {
    Status s = DecodeManifest(Tampered(m, edit), "ds/manifest-000000000002").status();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << name << ": " << s.ToString();
    EXPECT_NE(s.message().find("ds/manifest-000000000002"), std::string::npos) << name;
  }
  // Garbage and a manifest under another version's key.
  EXPECT_EQ(DecodeManifest("not a manifest at all, not at all", "k").status().code(), StatusCode::kDataLoss);
  std::string bytes = EncodeManifest(m).value();
  EXPECT_EQ(DecodeManifest(bytes, "ds/manifest-000000000003").status().code(), StatusCode::kDataLoss);
  bytes[30] ^= 1;
  EXPECT_EQ(DecodeManifest(bytes, "ds/manifest-000000000002").status().code(), StatusCode::kDataLoss);
}

TEST(DatasetManifestTest, EncoderRefusesBrokenInvariants) {
  DatasetManifest m = MakeManifest();
  m.num_samples = 8;
  EXPECT_EQ(EncodeManifest(m).status().code(), StatusCode::kInvalidArgument);
  m = MakeManifest();
  m.fields.push_back("a/b");
  EXPECT_EQ(EncodeManifest(m).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace granary::dataset
