// Writer + reader through real stores (MemoryStore via mem://, LocalStore in a scratch dir).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <random>

#include "checkpoint/checkpoint_format.h"
#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_writer.h"
#include "core/testing/test_util.h"

namespace granary::checkpoint {
namespace {

struct Case {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
};

std::vector<std::byte> Bytes(size_t n, uint32_t seed) {
  std::vector<std::byte> out(n);
  std::mt19937 rng(seed);
  for (auto& b : out) b = static_cast<std::byte>(rng());
  return out;
}

class CheckpointTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const std::string url = GetParam() == "mem"
        ? "mem://checkpoint-test-" + std::to_string(counter++)
        : dir_.path();
    auto store = OpenStore(url);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
  }

  // Writes the cases as one rank of `step`; returns the manifest and keeps the bytes.
  RankManifest WriteRank(const std::vector<Case>& cases, uint64_t step, uint32_t rank,
                         uint32_t world, const RankWriterOptions& options = {}) {
    auto writer = RankWriter::Create(store_.get(), root_, step, rank, world, options);
    EXPECT_TRUE(writer.ok()) << writer.status().ToString();
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      uint64_t n = *DtypeElementBytes(c.dtype);
      for (uint64_t d : c.shape) n *= d;
      data_[c.name] = Bytes(n, static_cast<uint32_t>(i + 17 * rank + 1000 * step));
      TensorData t{c.name, c.dtype, c.shape, {}, {}, data_[c.name]};
      Status s = (*writer)->Add(t);
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
    auto m = (*writer)->Finish();
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return *m;
  }

  void ExpectReadsBack(const RankManifest& m) {
    std::vector<std::vector<std::byte>> bufs;
    std::vector<TensorRead> reads;
    bufs.reserve(m.tensors.size());
    for (const TensorEntry& e : m.tensors) {
      bufs.emplace_back(e.length);
      reads.push_back({&e, bufs.back()});
    }
    GRANARY_ASSERT_OK(ReadTensors(*store_, root_, m, reads, /*verify_hash=*/true));
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      EXPECT_TRUE(bufs[i] == data_[m.tensors[i].name]) << m.tensors[i].name;
    }
  }

  granary::testing::ScratchDir dir_{"ckpt"};
  std::unique_ptr<ObjectStore> store_;
  std::string root_ = "runs/exp1";
  std::map<std::string, std::vector<std::byte>> data_;
};

std::vector<Case> ManyShapes() {
  return {{"scalar", "float32", {}},      {"empty", "float32", {0}},
          {"empty2d", "bfloat16", {4, 0}}, {"odd", "int8", {3, 7}},
          {"bf", "bfloat16", {129, 33}},   {"flag", "bool", {5}},
          {"big", "float32", {1000, 300}}, {"c", "complex128", {3}},
          {"f8", "float8_e4m3fn", {4097}}, {"mid", "float16", {32768}},
          {"tiny", "uint8", {1}}};
}

TEST_P(CheckpointTest, RoundTripManyShapes) {
  RankWriterOptions options;
  options.chunk_bytes = 100000;  // several chunks for "big", ragged last chunk
  RankManifest m = WriteRank(ManyShapes(), 100, 0, 1, options);
  GRANARY_ASSERT_OK(CommitStep(*store_, root_, std::span(&m, 1)));
  GRANARY_ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> steps, ListCommittedSteps(*store_, root_));
  EXPECT_EQ(steps, std::vector<uint64_t>{100});
  GRANARY_ASSERT_OK_AND_ASSIGN(CommitRecord commit, ReadCommit(*store_, root_, 100));
  GRANARY_ASSERT_OK_AND_ASSIGN(RankManifest loaded, ReadManifest(*store_, root_, commit, 0));
  ASSERT_EQ(loaded.tensors.size(), m.tensors.size());
  ExpectReadsBack(loaded);
}

TEST_P(CheckpointTest, PackingAndAlignmentInvariants) {
  RankWriterOptions options;
  options.data_file_bytes = 1 << 20;  // forces several data files
  options.align_threshold_bytes = 1000;
  std::vector<Case> cases;
  for (int i = 0; i < 40; ++i) {
    cases.push_back({"t" + std::to_string(i), i % 2 ? "float32" : "int8", {uint64_t(i * i * 37 + 1)}});
  }
  cases.push_back({"huge", "float32", {300000}});
  RankManifest m = WriteRank(cases, 7, 0, 1, options);
  std::map<std::string, std::vector<std::pair<uint64_t, uint64_t>>> by_file;
  for (const TensorEntry& e : m.tensors) {
    if (e.length >= options.align_threshold_bytes) {
      EXPECT_EQ(e.offset % kLargeAlignBytes, 0u) << e.name;
    } else {
      EXPECT_EQ(e.offset % kSmallAlignBytes, 0u) << e.name;
    }
    by_file[e.key].push_back({e.offset, e.offset + e.length});
  }
  EXPECT_GE(by_file.size(), 2u);  // rolled over to a new data file
  for (auto& [key, ranges] : by_file) {
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first) << key;
    GRANARY_ASSERT_OK_AND_ASSIGN(ObjectInfo info, store_->Stat(JoinKey(root_, key)));
    EXPECT_EQ(info.size_bytes, ranges.back().second) << key;  // no trailing padding
  }
  // Small tensors share files: far fewer files than tensors.
  EXPECT_LT(by_file.size(), 10u);
  ExpectReadsBack(m);
}

TEST_P(CheckpointTest, FlippedDataByteIsDataLossNamingTensorAndKey) {
  RankManifest m = WriteRank({{"a", "float32", {1000}}, {"victim", "float32", {5000}}}, 3, 0, 1);
  const TensorEntry& v = m.tensors[1];
  const std::string key = JoinKey(root_, v.key);
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string file, store_->GetAll(key));
  file[v.offset + 4321] ^= 0x10;
  GRANARY_ASSERT_OK(store_->Put(key, file));
  std::vector<std::byte> buf(v.length);
  TensorRead read{&v, buf};
  Status s = ReadTensors(*store_, root_, m, std::span(&read, 1));
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("victim"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find(key), std::string::npos) << s.ToString();
  // The undamaged tensor still reads.
  std::vector<std::byte> ok(m.tensors[0].length);
  TensorRead good{&m.tensors[0], ok};
  GRANARY_EXPECT_OK(ReadTensors(*store_, root_, m, std::span(&good, 1)));
  // A truncated data file is DataLoss too.
  GRANARY_ASSERT_OK(store_->Put(key, std::string_view(file).substr(0, v.offset + 10)));
  EXPECT_EQ(ReadTensors(*store_, root_, m, std::span(&read, 1)).code(), StatusCode::kDataLoss);
  // Wrong destination size.
  std::vector<std::byte> small(3);
  TensorRead wrong{&v, small};
  EXPECT_EQ(ReadTensors(*store_, root_, m, std::span(&wrong, 1)).code(), StatusCode::kInvalidArgument);
}

TEST_P(CheckpointTest, StepWithoutCommitIsInvisible) {
  RankManifest m0 = WriteRank({{"a", "int32", {10}}}, 1, 0, 2);
  RankManifest m1 = WriteRank({{"b", "int32", {10}}}, 1, 1, 2);
  GRANARY_ASSERT_OK_AND_ASSIGN(ManifestRef r0, WriteManifest(*store_, root_, m0));
  GRANARY_ASSERT_OK_AND_ASSIGN(ManifestRef r1, WriteManifest(*store_, root_, m1));
  // Data and manifests exist, no COMMIT yet.
  GRANARY_ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> steps, ListCommittedSteps(*store_, root_));
  EXPECT_TRUE(steps.empty());
  EXPECT_EQ(ReadCommit(*store_, root_, 1).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ReadLatestStep(*store_, root_).status().code(), StatusCode::kNotFound);
  // A COMMIT missing a rank is refused before publication.
  EXPECT_EQ(PublishCommit(*store_, root_, 1, 2, {r0}).code(), StatusCode::kInvalidArgument);
  GRANARY_ASSERT_OK(PublishCommit(*store_, root_, 1, 2, {r1, r0}));
  EXPECT_EQ(PublishCommit(*store_, root_, 1, 2, {r0, r1}).code(), StatusCode::kAlreadyExists);
  GRANARY_ASSERT_OK_AND_ASSIGN(steps, ListCommittedSteps(*store_, root_));
  EXPECT_EQ(steps, std::vector<uint64_t>{1});
  GRANARY_ASSERT_OK_AND_ASSIGN(CommitRecord c, ReadCommit(*store_, root_, 1));
  GRANARY_ASSERT_OK_AND_ASSIGN(RankManifest back1, ReadManifest(*store_, root_, c, 1));
  ExpectReadsBack(back1);
}

TEST_P(CheckpointTest, DamagedCommitOrManifestIsDetected) {
  RankManifest m = WriteRank({{"a", "int32", {10}}}, 2, 0, 1);
  GRANARY_ASSERT_OK_AND_ASSIGN(CommitRecord c, CommitStep(*store_, root_, std::span(&m, 1)));
  // Manifest replaced by another valid one: caught by the COMMIT's crc.
  RankManifest other = m;
  other.user_metadata_json = R"({"x":1})";
  GRANARY_ASSERT_OK(WriteManifest(*store_, root_, other));
  EXPECT_EQ(ReadManifest(*store_, root_, c, 0).status().code(), StatusCode::kDataLoss);
  // Damaged COMMIT: step disappears from the listing.
  const std::string ckey = JoinKey(root_, CommitKey(2));
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string cbytes, store_->GetAll(ckey));
  cbytes[30] ^= 1;
  GRANARY_ASSERT_OK(store_->Put(ckey, cbytes));
  GRANARY_ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> steps, ListCommittedSteps(*store_, root_));
  EXPECT_TRUE(steps.empty());
  EXPECT_EQ(ReadCommit(*store_, root_, 2).status().code(), StatusCode::kDataLoss);
}

TEST_P(CheckpointTest, IncrementalReferenceAndLatest) {
  RankManifest m5 = WriteRank({{"frozen", "float32", {4096}}, {"w", "float32", {10}}}, 5, 0, 1);
  GRANARY_ASSERT_OK(CommitStep(*store_, root_, std::span(&m5, 1)));
  GRANARY_ASSERT_OK(WriteLatest(*store_, root_, 5));
  auto writer = RankWriter::Create(store_.get(), root_, 6, 0, 1);
  GRANARY_ASSERT_OK(writer);
  GRANARY_ASSERT_OK((*writer)->AddExisting(m5.tensors[0]));  // points into step 5's data file
  data_["w"] = Bytes(40, 99);
  GRANARY_ASSERT_OK((*writer)->Add({"w", "float32", {10}, {}, {}, data_["w"]}));
  GRANARY_ASSERT_OK((*writer)->SetUserMetadata(R"({"step":6})"));
  EXPECT_EQ((*writer)->Add({"w", "float32", {10}, {}, {}, data_["w"]}).code(), StatusCode::kInvalidArgument);
  GRANARY_ASSERT_OK_AND_ASSIGN(RankManifest m6, (*writer)->Finish());
  GRANARY_ASSERT_OK(CommitStep(*store_, root_, std::span(&m6, 1)));
  // The hint lags (still 5); readers still find 6.
  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t latest, ReadLatestStep(*store_, root_));
  EXPECT_EQ(latest, 6u);
  GRANARY_ASSERT_OK_AND_ASSIGN(CommitRecord c, ReadCommit(*store_, root_, 6));
  GRANARY_ASSERT_OK_AND_ASSIGN(RankManifest back, ReadManifest(*store_, root_, c, 0));
  EXPECT_EQ(back.tensors[0].key, DataKey(5, 0, 0));
  EXPECT_EQ(back.user_metadata_json, R"({"step":6})");
  ExpectReadsBack(back);
}

TEST_P(CheckpointTest, AddRejectsMismatchedSize) {
  auto writer = RankWriter::Create(store_.get(), root_, 1, 0, 1);
  GRANARY_ASSERT_OK(writer);
  std::vector<std::byte> b(7);
  Status s = (*writer)->Add({"bad", "float32", {2}, {}, {}, b});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bad"), std::string::npos);
  EXPECT_EQ((*writer)->Add({"x", "nope", {7}, {}, {}, b}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RankWriter::Create(store_.get(), root_, 1, 1, 1).status().code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Stores, CheckpointTest, ::testing::Values("mem", "local"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace granary::checkpoint
