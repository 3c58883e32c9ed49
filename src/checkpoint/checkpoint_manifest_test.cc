#include "checkpoint/checkpoint_manifest.h"

#include <gtest/gtest.h>

#include "checkpoint/checkpoint_format.h"
#include "core/testing/test_util.h"

namespace granary::checkpoint {
namespace {

RankManifest SampleManifest() {
  RankManifest m;
  m.step = 100;
  m.rank = 1;
  m.world_size = 2;
  m.chunk_bytes = 16;
  TensorEntry a;
  a.name = "model.layers.0.weight";
  a.dtype = "bfloat16";
  a.shape = {3, 5};
  a.global_shape = {6, 5};
  a.global_offset = {3, 0};
  a.key = DataKey(100, 1, 0);
  a.offset = 4096;
  a.length = 30;
  a.xxh3 = {0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  a.chunk_crc32c = {1, 0xffffffffu};
  TensorEntry b;
  b.name = "empty";
  b.dtype = "float32";
  b.shape = {0, 7};
  b.key = DataKey(90, 0, 3);  // an earlier step (incremental)
  b.length = 0;
  m.tensors = {a, b};
  m.user_metadata_json = R"({"lr":0.1,"epoch":3})";
  return m;
}

TEST(CheckpointManifestTest, KeysAreFixedWidth) {
  EXPECT_EQ(DataKey(100, 3, 2), "step-000000000100/rank-00003.data-00002");
  EXPECT_EQ(ManifestKey(7, 0), "step-000000000007/rank-00000.manifest");
  EXPECT_EQ(CommitKey(7), "step-000000000007/COMMIT");
  EXPECT_EQ(JoinKey("runs/x/", "a"), "runs/x/a");
  EXPECT_EQ(JoinKey("", "a"), "a");
  EXPECT_EQ(ParseCommitKey(CommitKey(42)), 42u);
  EXPECT_FALSE(ParseCommitKey("step-000000000042/COMMITX"));
  EXPECT_FALSE(ParseCommitKey("step-00000000042/COMMIT"));
  EXPECT_EQ(ParseDataKeyStep(DataKey(5, 1, 2)), 5u);
  EXPECT_FALSE(ParseDataKeyStep(ManifestKey(5, 1)));
}

TEST(CheckpointManifestTest, DtypeSizes) {
  EXPECT_EQ(*DtypeElementBytes("bfloat16"), 2u);
  EXPECT_EQ(*DtypeElementBytes("complex128"), 16u);
  EXPECT_EQ(*DtypeElementBytes("bool"), 1u);
  EXPECT_EQ(DtypeElementBytes("float").status().code(), StatusCode::kInvalidArgument);
}

TEST(CheckpointManifestTest, ManifestRoundTrip) {
  RankManifest m = SampleManifest();
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeManifest(m));
  EXPECT_EQ(bytes.substr(0, 8), kManifestMagic);
  GRANARY_ASSERT_OK_AND_ASSIGN(RankManifest d, DecodeManifest(bytes, "k"));
  EXPECT_EQ(d.step, m.step);
  EXPECT_EQ(d.rank, m.rank);
  EXPECT_EQ(d.world_size, m.world_size);
  EXPECT_EQ(d.chunk_bytes, m.chunk_bytes);
  ASSERT_EQ(d.tensors.size(), 2u);
  const TensorEntry& a = d.tensors[0];
  EXPECT_EQ(a.name, m.tensors[0].name);
  EXPECT_EQ(a.dtype, "bfloat16");
  EXPECT_EQ(a.shape, m.tensors[0].shape);
  EXPECT_EQ(a.global_shape, m.tensors[0].global_shape);
  EXPECT_EQ(a.global_offset, m.tensors[0].global_offset);
  EXPECT_EQ(a.key, m.tensors[0].key);
  EXPECT_EQ(a.offset, 4096u);
  EXPECT_EQ(a.length, 30u);
  EXPECT_EQ(a.xxh3, m.tensors[0].xxh3);
  EXPECT_EQ(a.chunk_crc32c, m.tensors[0].chunk_crc32c);
  EXPECT_EQ(d.tensors[1].key, DataKey(90, 0, 3));
  EXPECT_TRUE(d.tensors[1].global_shape.empty());
  EXPECT_NE(d.user_metadata_json.find("\"epoch\":3"), std::string::npos);
}

TEST(CheckpointManifestTest, EncodeRejectsBrokenInvariants) {
  auto expect_invalid = [](RankManifest m) {
    EXPECT_EQ(EncodeManifest(m).status().code(), StatusCode::kInvalidArgument);
  };
  RankManifest m = SampleManifest();
  m.tensors[0].length = 31;  // shape says 30
  expect_invalid(m);
  m = SampleManifest();
  m.tensors[0].chunk_crc32c.push_back(0);
  expect_invalid(m);
  m = SampleManifest();
  m.tensors[1].name = m.tensors[0].name;
  expect_invalid(m);
  m = SampleManifest();
  m.tensors[0].key = DataKey(101, 1, 0);  // a later step
  expect_invalid(m);
  m = SampleManifest();
  m.tensors[0].global_offset = {4, 0};  // 4 + 3 > 6
  expect_invalid(m);
  m = SampleManifest();
  m.rank = 2;
  expect_invalid(m);
  m = SampleManifest();
  m.user_metadata_json = "[1]";
  expect_invalid(m);
  m = SampleManifest();
  m.tensors[0].shape = {1ULL << 62, 8};
  expect_invalid(m);
  m = SampleManifest();
  m.tensors[0].name = "\xff\xfe";  // not UTF-8
  expect_invalid(m);
}

// Every single-byte corruption of a manifest is detected as DataLoss naming the key.
TEST(CheckpointManifestTest, DecodeRejectsEveryByteFlip) {
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeManifest(SampleManifest()));
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xff}) {
      std::string bad = bytes;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      Result<RankManifest> r = DecodeManifest(bad, "runs/x/m");
      ASSERT_EQ(r.status().code(), StatusCode::kDataLoss) << "byte " << i << " mask " << int(mask);
      ASSERT_NE(r.status().message().find("runs/x/m"), std::string::npos);
    }
  }
}

TEST(CheckpointManifestTest, DecodeRejectsTruncation) {
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeManifest(SampleManifest()));
  for (size_t n = 0; n < bytes.size(); ++n) {
    ASSERT_EQ(DecodeManifest(bytes.substr(0, n), "k").status().code(), StatusCode::kDataLoss) << n;
  }
  EXPECT_EQ(DecodeManifest(bytes + "x", "k").status().code(), StatusCode::kDataLoss);
}

// Re-seals an envelope with a different version and a correct crc: a newer format, not damage.
TEST(CheckpointManifestTest, DecodeRejectsUnknownVersion) {
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeManifest(SampleManifest()));
  bytes[8] = 2;
  const size_t crc_pos = bytes.size() - 4;
  const uint32_t crc = Crc32c(std::string_view(bytes).substr(0, crc_pos));
  for (int i = 0; i < 4; ++i) bytes[crc_pos + i] = static_cast<char>((crc >> (8 * i)) & 0xff);
  Result<RankManifest> r = DecodeManifest(bytes, "key9");
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("version 2"), std::string::npos);
  EXPECT_NE(r.status().message().find("key9"), std::string::npos);
}

TEST(CheckpointManifestTest, DecodeRejectsWrongKindAndBadJson) {
  CommitRecord c{5, 1, {{0, ManifestKey(5, 0), 100, 7}}};
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string commit, EncodeCommit(c));
  EXPECT_EQ(DecodeManifest(commit, "k").status().code(), StatusCode::kDataLoss);
  GRANARY_ASSERT_OK_AND_ASSIGN(CommitRecord d, DecodeCommit(commit, "k"));
  EXPECT_EQ(d.step, 5u);
  EXPECT_EQ(d.manifests, c.manifests);
  // A correctly sealed envelope around garbage JSON, or JSON with out-of-range fields.
  auto seal = [](std::string_view magic, std::string body) {
    std::string out(magic);
    uint32_t v = kFormatVersion;
    uint64_t n = body.size();
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    out += body;
    uint32_t crc = Crc32c(out);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
    return out;
  };
  EXPECT_EQ(DecodeManifest(seal(kManifestMagic, "{not json"), "k").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeManifest(seal(kManifestMagic, "[]"), "k").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeManifest(seal(kManifestMagic,
                                R"({"step":1,"rank":3,"world_size":2,"chunk_bytes":4,"tensors":[],"user_metadata":{}})"),
                           "k").status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(DecodeManifest(seal(kManifestMagic,
                                R"({"step":-1,"rank":0,"world_size":1,"chunk_bytes":4,"tensors":[],"user_metadata":{}})"),
                           "k").status().code(),
            StatusCode::kDataLoss);
  GRANARY_EXPECT_OK(DecodeManifest(seal(kManifestMagic,
                                R"({"step":1,"rank":0,"world_size":1,"chunk_bytes":4,"tensors":[],"user_metadata":{}})"),
                           "k"));
  // COMMIT must list each rank once.
  EXPECT_EQ(DecodeCommit(seal(kCommitMagic, R"({"step":5,"world_size":2,"manifests":[]})"), "k")
                .status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeLatest(EncodeLatest(77), "k").value_or(0), 77u);
}

TEST(CheckpointManifestTest, CommitRejectsEveryByteFlip) {
  CommitRecord c{5, 2, {{0, ManifestKey(5, 0), 100, 7}, {1, ManifestKey(5, 1), 200, 8}}};
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeCommit(c));
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x04);
    ASSERT_EQ(DecodeCommit(bad, "k").status().code(), StatusCode::kDataLoss) << i;
  }
}

}  // namespace
}  // namespace granary::checkpoint
