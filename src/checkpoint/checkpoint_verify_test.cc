// Full verification of committed steps through real stores.
#include "checkpoint/checkpoint_verify.h"

#include <gtest/gtest.h>

#include <atomic>

#include "checkpoint/checkpoint_format.h"
#include "checkpoint/checkpoint_test_util.h"
#include "core/testing/test_util.h"

namespace granary::checkpoint {
namespace {

using testing::Contains;
using testing::StepSpec;
using testing::WriteStep;

class CheckpointVerifyTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const std::string url = GetParam() == "mem"
                                ? "mem://checkpoint-verify-test-" + std::to_string(counter++)
                                : dir_.path();
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, OpenStore(url));
  }

  // One step with small and large tensors and small checksum chunks, so that with a small
  // buffer a large tensor spans several batches.
  std::vector<RankManifest> WriteMixed(uint64_t step, uint32_t world) {
    StepSpec spec;
    spec.step = step;
    spec.world_size = world;
    spec.tensors = {{"embed", 70'000}, {"bias", 33}, {"empty", 0}, {"w", 200'000}, {"norm", 4096}};
    spec.options.chunk_bytes = 4096;
    spec.options.align_threshold_bytes = 4096;
    auto m = WriteStep(*store_, root_, spec);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? *m : std::vector<RankManifest>{};
  }
  const TensorEntry& Entry(const RankManifest& m, std::string_view name) {
    for (const TensorEntry& e : m.tensors) {
      if (e.name == name) return e;
    }
    ADD_FAILURE() << "no tensor " << name;
    return m.tensors.front();
  }

  granary::testing::ScratchDir dir_{"ckpt-verify"};
  std::unique_ptr<ObjectStore> store_;
  std::string root_ = "runs/exp1";
};

constexpr uint64_t kMixedBytes = 70'000 + 33 + 0 + 200'000 + 4096;

TEST_P(CheckpointVerifyTest, CleanStepVerifiesWithAnyBufferSize) {
  WriteMixed(100, 1);
  // 1 byte is raised to one chunk; 10000 holds two chunks; 64 MiB holds everything.
  for (size_t buffer_bytes : {size_t{1}, size_t{10'000}, size_t{64} << 20}) {
    GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyStep(*store_, root_, 100, buffer_bytes));
    EXPECT_TRUE(r.ok()) << r.ToStatus().ToString();
    GRANARY_EXPECT_OK(r.ToStatus());
    EXPECT_EQ(r.step, 100u);
    EXPECT_EQ(r.world_size, 1u);
    EXPECT_EQ(r.tensors, 5u);
    EXPECT_EQ(r.bytes, kMixedBytes) << buffer_bytes;
  }
}

TEST_P(CheckpointVerifyTest, FlippedByteIsReportedNamingTensorAndFile) {
  auto m = WriteMixed(100, 1);
  const TensorEntry& w = Entry(m[0], "w");
  const std::string key = JoinKey(root_, w.key);
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, key, w.offset + 150'000));
  for (size_t buffer_bytes : {size_t{8192}, size_t{64} << 20}) {
    GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyStep(*store_, root_, 100, buffer_bytes));
    ASSERT_EQ(r.problems.size(), 1u) << r.ToStatus().ToString();
    EXPECT_EQ(r.problems[0].rank, 0u);
    EXPECT_EQ(r.problems[0].tensor, "w");
    EXPECT_EQ(r.problems[0].data_key, key);
    EXPECT_TRUE(Contains(r.problems[0].message, "crc32c mismatch in chunk 36"))
        << r.problems[0].message;
    const Status s = r.ToStatus();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    EXPECT_TRUE(Contains(s.message(), "\"w\"") && Contains(s.message(), key)) << s.ToString();
    EXPECT_TRUE(Contains(s.message(), "1 damaged tensor;")) << s.ToString();
  }
}

TEST_P(CheckpointVerifyTest, KeepsGoingPastDamageToReportEveryBadTensor) {
  auto m = WriteMixed(100, 1);
  const std::string key = JoinKey(root_, m[0].tensors[0].key);
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, key, Entry(m[0], "embed").offset + 5));
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, key, Entry(m[0], "norm").offset + 4095));
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyStep(*store_, root_, 100, 8192));
  ASSERT_EQ(r.problems.size(), 2u) << r.ToStatus().ToString();
  EXPECT_EQ(r.problems[0].tensor, "embed");
  EXPECT_EQ(r.problems[1].tensor, "norm");
  EXPECT_TRUE(Contains(r.ToStatus().message(), "2 damaged tensors")) << r.ToStatus().ToString();
}

TEST_P(CheckpointVerifyTest, TruncatedDataFileIsReported) {
  auto m = WriteMixed(100, 1);
  const TensorEntry& w = Entry(m[0], "w");
  const std::string key = JoinKey(root_, w.key);
  GRANARY_ASSERT_OK(testing::Truncate(*store_, key, w.offset + 1000));
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyStep(*store_, root_, 100));
  ASSERT_FALSE(r.ok());
  // "w" and everything packed after it.
  EXPECT_EQ(r.problems[0].tensor, "w");
  EXPECT_EQ(r.problems[0].data_key, key);
  EXPECT_TRUE(Contains(r.problems[0].message, "truncated")) << r.problems[0].message;
  EXPECT_EQ(r.problems.back().tensor, "norm");
}

TEST_P(CheckpointVerifyTest, MissingDataFileIsReported) {
  auto m = WriteMixed(100, 1);
  GRANARY_ASSERT_OK(store_->Delete(JoinKey(root_, m[0].tensors[0].key)));
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyStep(*store_, root_, 100));
  EXPECT_EQ(r.problems.size(), 4u) << r.ToStatus().ToString();  // all but the empty tensor
  EXPECT_EQ(r.ToStatus().code(), StatusCode::kDataLoss);
}

TEST_P(CheckpointVerifyTest, HashMismatchIsFoundWhenEveryChunkCrcMatches) {
  // A writer that recorded the wrong content hash: only the XXH3-128 check can tell.
  RankWriterOptions options;
  options.chunk_bytes = 1024;
  auto writer = RankWriter::Create(store_.get(), root_, 5, 0, 1, options);
  ASSERT_TRUE(writer.ok());
  const std::string bytes = granary::testing::Payload(1, 10'000);
  GRANARY_ASSERT_OK(
      (*writer)->Add({"t", "uint8", {10'000}, {}, {}, granary::testing::AsBytes(bytes)}));
  GRANARY_ASSERT_OK_AND_ASSIGN(RankManifest m, (*writer)->Finish());
  m.tensors[0].xxh3.low ^= 1;
  GRANARY_ASSERT_OK(CommitStep(*store_, root_, std::span(&m, 1)).status());
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyStep(*store_, root_, 5, 2048));
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_TRUE(Contains(r.problems[0].message, "XXH3-128")) << r.problems[0].message;
}

TEST_P(CheckpointVerifyTest, CorruptedManifestIsDataLossNamingTheManifest) {
  WriteMixed(100, 2);
  const std::string manifest = JoinKey(root_, ManifestKey(100, 1));
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, manifest, 50));
  auto r = VerifyStep(*store_, root_, 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(r.status().message(), manifest)) << r.status().ToString();

  GRANARY_ASSERT_OK(store_->Delete(manifest));
  r = VerifyStep(*store_, root_, 100);
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(r.status().message(), manifest)) << r.status().ToString();
}

TEST_P(CheckpointVerifyTest, MultiRankStepReportsTheDamagedRank) {
  auto m = WriteMixed(100, 3);
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport clean, VerifyStep(*store_, root_, 100, 8192));
  EXPECT_TRUE(clean.ok());
  EXPECT_EQ(clean.world_size, 3u);
  EXPECT_EQ(clean.tensors, 15u);
  EXPECT_EQ(clean.bytes, 3 * kMixedBytes);

  const TensorEntry& bias = Entry(m[2], "bias");
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, JoinKey(root_, bias.key), bias.offset));
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyStep(*store_, root_, 100, 8192));
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_EQ(r.problems[0].rank, 2u);
  EXPECT_EQ(r.problems[0].tensor, "bias");
  EXPECT_EQ(r.problems[0].data_key, JoinKey(root_, DataKey(100, 2, 0)));
}

TEST_P(CheckpointVerifyTest, UncommittedStepIsNotFound) {
  StepSpec spec;
  spec.step = 7;
  spec.tensors = {{"a", 10}};
  spec.commit = false;
  GRANARY_ASSERT_OK(WriteStep(*store_, root_, spec).status());
  EXPECT_EQ(VerifyStep(*store_, root_, 7).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(VerifyStep(*store_, root_, 8).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(VerifyStep(*store_, root_, 7, 0).status().code(), StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Stores, CheckpointVerifyTest, ::testing::Values("mem", "local"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace granary::checkpoint
