// Retention and garbage collection through real stores (MemoryStore via mem://, LocalStore in a
// scratch directory).
#include "checkpoint/checkpoint_gc.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <ctime>

#include "checkpoint/checkpoint_format.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_test_util.h"
#include "checkpoint/checkpoint_verify.h"
#include "core/testing/test_util.h"
#include "store/testing/forwarding_store.h"

namespace granary::checkpoint {
namespace {

using testing::Keys;
using testing::StepSpec;
using testing::WriteStep;

class CheckpointGcTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const std::string url =
        GetParam() == "mem" ? "mem://checkpoint-gc-test-" + std::to_string(counter++) : dir_.path();
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, OpenStore(url));
  }
  bool IsLocal() const { return GetParam() == "local"; }

  // Commits `step` with tensors "a" (5000 bytes) and "b" (300 bytes) on `world` ranks.
  std::vector<RankManifest> Commit(uint64_t step, uint32_t world = 1) {
    StepSpec spec;
    spec.step = step;
    spec.world_size = world;
    spec.tensors = {{"a", 5000}, {"b", 300}};
    auto m = WriteStep(*store_, root_, spec);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? *m : std::vector<RankManifest>{};
  }
  std::vector<uint64_t> Committed() {
    auto steps = ListCommittedSteps(*store_, root_);
    EXPECT_TRUE(steps.ok()) << steps.status().ToString();
    return steps.ok() ? *steps : std::vector<uint64_t>{};
  }
  std::vector<std::string> StepKeys(uint64_t step) {
    return Keys(*store_, JoinKey(root_, StepDir(step)) + "/");
  }
  // Sets the mtime of every object of `step` (LocalStore only) `age_s` seconds into the past.
  void Age(uint64_t step, int64_t age_s) {
    ASSERT_TRUE(IsLocal());
    for (const std::string& key : StepKeys(step)) {
      struct timespec times[2];
      times[0].tv_sec = times[1].tv_sec = std::time(nullptr) - age_s;
      times[0].tv_nsec = times[1].tv_nsec = 0;
      ASSERT_EQ(::utimensat(AT_FDCWD, dir_.Join(key).c_str(), times, 0), 0) << key;
    }
  }

  granary::testing::ScratchDir dir_{"ckpt-gc"};
  std::unique_ptr<ObjectStore> store_;
  std::string root_ = "runs/exp1";
};

TEST_P(CheckpointGcTest, KeepLastKeepsTheNewestSteps) {
  for (uint64_t s = 1; s <= 6; ++s) Commit(s);
  RetentionPolicy policy;
  policy.keep_last = 3;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.kept_steps, (std::vector<uint64_t>{4, 5, 6}));
  EXPECT_EQ(report.removed_steps, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_TRUE(report.removed_uncommitted_steps.empty());
  EXPECT_EQ(report.objects_removed, 9u);  // COMMIT + manifest + one data file, three times
  EXPECT_GT(report.bytes_removed, 3 * 5300u);
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{4, 5, 6}));
  for (uint64_t s = 1; s <= 3; ++s) EXPECT_TRUE(StepKeys(s).empty()) << s;
  EXPECT_EQ(StepKeys(4).size(), 3u);
  // A second run finds nothing more to do.
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport again, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(again.objects_removed, 0u);
}

TEST_P(CheckpointGcTest, KeepEveryAlsoKeepsMultiples) {
  for (uint64_t s = 10; s <= 60; s += 10) Commit(s);
  RetentionPolicy policy;
  policy.keep_last = 2;
  policy.keep_every = 20;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.kept_steps, (std::vector<uint64_t>{20, 40, 50, 60}));
  EXPECT_EQ(report.removed_steps, (std::vector<uint64_t>{10, 30}));
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{20, 40, 50, 60}));
}

TEST_P(CheckpointGcTest, KeepLastZeroKeepsEveryCommittedStepAndOneKeepsOnlyTheNewest) {
  for (uint64_t s = 1; s <= 4; ++s) Commit(s);
  RetentionPolicy all;
  all.keep_last = 0;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, all));
  EXPECT_TRUE(report.removed_steps.empty());
  EXPECT_EQ(report.objects_removed, 0u);
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{1, 2, 3, 4}));

  RetentionPolicy one;
  one.keep_last = 1;
  one.keep_every = 7;  // divides none of them: the newest still survives
  GRANARY_ASSERT_OK_AND_ASSIGN(report, CollectGarbage(*store_, root_, one));
  EXPECT_EQ(report.kept_steps, (std::vector<uint64_t>{4}));
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{4}));
}

TEST_P(CheckpointGcTest, IncrementalReferencesStayAliveAcrossRemoval) {
  // Step 1 writes a and b; step 2 reuses a; step 3 reuses a again (still step 1's file) and b
  // from step 2.
  StepSpec s1;
  s1.step = 1;
  s1.tensors = {{"a", 5000}, {"b", 300}};
  GRANARY_ASSERT_OK_AND_ASSIGN(auto m1, WriteStep(*store_, root_, s1));
  StepSpec s2;
  s2.step = 2;
  s2.tensors = {{"a", 5000}, {"b", 300}};
  s2.reuse_from = &m1;
  s2.reused = {"a"};
  GRANARY_ASSERT_OK_AND_ASSIGN(auto m2, WriteStep(*store_, root_, s2));
  StepSpec s3;
  s3.step = 3;
  s3.tensors = {{"a", 5000}, {"b", 300}, {"c", 100}};
  s3.reuse_from = &m2;
  s3.reused = {"a", "b"};
  GRANARY_ASSERT_OK_AND_ASSIGN(auto m3, WriteStep(*store_, root_, s3));
  ASSERT_EQ(m3[0].tensors[0].key, DataKey(1, 0, 0));
  ASSERT_EQ(m3[0].tensors[1].key, DataKey(2, 0, 0));

  RetentionPolicy policy;
  policy.keep_last = 1;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.removed_steps, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(report.data_files_kept_for_references, 2u);
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{3}));
  // Only the referenced data files of steps 1 and 2 remain.
  EXPECT_EQ(StepKeys(1), (std::vector<std::string>{JoinKey(root_, DataKey(1, 0, 0))}));
  EXPECT_EQ(StepKeys(2), (std::vector<std::string>{JoinKey(root_, DataKey(2, 0, 0))}));
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport verify, VerifyStep(*store_, root_, 3));
  GRANARY_EXPECT_OK(verify.ToStatus());
  EXPECT_EQ(verify.tensors, 3u);
}

// Forwards to a store but fails every Delete after the first `deletes_left`: a collector that
// dies midway (fault injection for the order of deletions).
class DeleteBudgetStore final : public granary::testing::ForwardingStore {
 public:
  DeleteBudgetStore(ObjectStore* base, int deletes_left)
      : ForwardingStore(base), left_(deletes_left) {}
  Status Delete(std::string_view k) override {
    if (left_-- <= 0) return UnavailableError("injected: collector died before deleting " + std::string(k));
    return ForwardingStore::Delete(k);
  }

 private:
  int left_;
};

TEST_P(CheckpointGcTest, ACollectorDyingMidwayNeverLeavesAVisibleStepWithMissingData) {
  // Steps 1..4; step 2 reuses step 1's "a", step 3 reuses step 2's "a" (step 1's file). With
  // keep_last = 1 steps 1-3 go; whenever the collector dies, every visible step must verify.
  for (int budget = 0; budget < 20; ++budget) {
    SCOPED_TRACE("deletes before the crash: " + std::to_string(budget));
    root_ = "gc-crash-" + std::to_string(budget);
    StepSpec spec;
    spec.tensors = {{"a", 5000}, {"b", 300}};
    spec.step = 1;
    GRANARY_ASSERT_OK_AND_ASSIGN(auto m1, WriteStep(*store_, root_, spec));
    spec.step = 2;
    spec.reuse_from = &m1;
    spec.reused = {"a"};
    GRANARY_ASSERT_OK_AND_ASSIGN(auto m2, WriteStep(*store_, root_, spec));
    spec.step = 3;
    spec.reuse_from = &m2;
    GRANARY_ASSERT_OK_AND_ASSIGN(auto m3, WriteStep(*store_, root_, spec));
    spec.step = 4;
    spec.reuse_from = nullptr;
    spec.reused = {};
    GRANARY_ASSERT_OK(WriteStep(*store_, root_, spec).status());
    DeleteBudgetStore dying(store_.get(), budget);
    RetentionPolicy policy;
    policy.keep_last = 1;
    CollectGarbage(dying, root_, policy).status().IgnoreError();  // dies midway (or finishes)
    for (uint64_t step : Committed()) {
      GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport verify, VerifyStep(*store_, root_, step));
      GRANARY_EXPECT_OK(verify.ToStatus()) << "step " << step;
    }
  }
}

TEST_P(CheckpointGcTest, CrashedSaveLeftoversAreRemoved) {
  Commit(1);
  // Step 2: data and manifest, no COMMIT. Step 3: a COMMIT that is garbage. Step 4: only a
  // data file (the writer died before its manifest).
  StepSpec crashed;
  crashed.step = 2;
  crashed.tensors = {{"a", 5000}};
  crashed.commit = false;
  GRANARY_ASSERT_OK(WriteStep(*store_, root_, crashed).status());
  Commit(3);
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, JoinKey(root_, CommitKey(3)), 30));
  {
    GRANARY_ASSERT_OK_AND_ASSIGN(auto w, RankWriter::Create(store_.get(), root_, 4, 0, 1));
    const std::string bytes(100, 'x');
    GRANARY_ASSERT_OK(w->Add({"a", "uint8", {100}, {}, {}, granary::testing::AsBytes(bytes)}));
    GRANARY_ASSERT_OK(w->Finish().status());
  }
  Commit(5);
  RetentionPolicy policy;  // keep_last 3 keeps every committed step
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.kept_steps, (std::vector<uint64_t>{1, 5}));
  EXPECT_TRUE(report.removed_steps.empty());
  EXPECT_EQ(report.removed_uncommitted_steps, (std::vector<uint64_t>{2, 3, 4}));
  for (uint64_t s : {2, 3, 4}) EXPECT_TRUE(StepKeys(s).empty()) << s;
  EXPECT_EQ(StepKeys(1).size(), 3u);
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{1, 5}));
}

TEST_P(CheckpointGcTest, LeftoversNewerThanTheNewestCommitWaitForTheGracePeriod) {
  Commit(1);
  StepSpec running;
  running.step = 2;
  running.tensors = {{"a", 5000}};
  running.commit = false;
  GRANARY_ASSERT_OK(WriteStep(*store_, root_, running).status());
  const std::vector<std::string> before = StepKeys(2);
  ASSERT_EQ(before.size(), 2u);

  RetentionPolicy policy;  // orphan_grace_s 3600: the objects were just written
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy));
  EXPECT_TRUE(report.removed_uncommitted_steps.empty());
  EXPECT_EQ(StepKeys(2), before);

  if (IsLocal()) {  // only LocalStore lets the test age objects
    Age(2, 7200);
  } else {
    policy.orphan_grace_s = 0;
  }
  GRANARY_ASSERT_OK_AND_ASSIGN(report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.removed_uncommitted_steps, (std::vector<uint64_t>{2}));
  EXPECT_TRUE(StepKeys(2).empty());
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{1}));
}

TEST_P(CheckpointGcTest, OneFreshObjectProtectsTheWholeStep) {
  if (!IsLocal()) GTEST_SKIP() << "needs settable mtimes";
  Commit(1);
  StepSpec running;
  running.step = 2;
  running.tensors = {{"a", 5000}};
  running.commit = false;
  GRANARY_ASSERT_OK(WriteStep(*store_, root_, running).status());
  Age(2, 7200);
  GRANARY_ASSERT_OK(store_->Put(JoinKey(root_, DataKey(2, 0, 1)), std::string_view("fresh")));
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, RetentionPolicy{}));
  EXPECT_TRUE(report.removed_uncommitted_steps.empty());
  EXPECT_EQ(StepKeys(2).size(), 3u);
}

TEST_P(CheckpointGcTest, InProgressStepIsNeverRemoved) {
  Commit(1);
  Commit(2);
  StepSpec running;
  running.step = 3;
  running.tensors = {{"a", 5000}};
  running.commit = false;
  GRANARY_ASSERT_OK(WriteStep(*store_, root_, running).status());
  RetentionPolicy policy;
  policy.keep_last = 1;
  policy.orphan_grace_s = 0;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy, 3));
  EXPECT_EQ(report.removed_steps, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(report.removed_uncommitted_steps.empty());
  EXPECT_EQ(StepKeys(3).size(), 2u);
  // Without the protection the same policy removes it.
  GRANARY_ASSERT_OK_AND_ASSIGN(report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.removed_uncommitted_steps, (std::vector<uint64_t>{3}));
  EXPECT_TRUE(StepKeys(3).empty());
}

TEST_P(CheckpointGcTest, DryRunDeletesNothing) {
  for (uint64_t s = 1; s <= 4; ++s) Commit(s);
  StepSpec crashed;
  crashed.step = 25;
  crashed.tensors = {{"a", 10}};
  crashed.commit = false;
  GRANARY_ASSERT_OK(WriteStep(*store_, root_, crashed).status());
  GRANARY_ASSERT_OK(WriteLatest(*store_, root_, 1));
  const std::vector<std::string> before = Keys(*store_, "");
  const std::string latest_before = *store_->GetAll(JoinKey(root_, kLatestName));
  RetentionPolicy policy;
  policy.keep_last = 1;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report,
                               CollectGarbage(*store_, root_, policy, std::nullopt, true));
  EXPECT_EQ(report.removed_steps, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_TRUE(report.removed_uncommitted_steps.empty());  // step 25 is newer and fresh
  EXPECT_EQ(report.objects_removed, 9u);
  EXPECT_GT(report.bytes_removed, 0u);
  EXPECT_EQ(Keys(*store_, ""), before);
  EXPECT_EQ(*store_->GetAll(JoinKey(root_, kLatestName)), latest_before);
}

TEST_P(CheckpointGcTest, DamagedManifestOfAKeptStepStopsGcBeforeDeletingAnything) {
  for (uint64_t s = 1; s <= 4; ++s) Commit(s);
  const std::string manifest = JoinKey(root_, ManifestKey(4, 0));
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, manifest, 40));
  const std::vector<std::string> before = Keys(*store_, "");
  RetentionPolicy policy;
  policy.keep_last = 2;
  auto report = CollectGarbage(*store_, root_, policy);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), StatusCode::kDataLoss) << report.status().ToString();
  EXPECT_TRUE(testing::Contains(report.status().message(), manifest)) << report.status().ToString();
  EXPECT_EQ(Keys(*store_, ""), before);

  // A missing manifest is just as unknown.
  GRANARY_ASSERT_OK(store_->Delete(manifest));
  report = CollectGarbage(*store_, root_, policy);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), StatusCode::kDataLoss) << report.status().ToString();
  EXPECT_TRUE(testing::Contains(report.status().message(), manifest)) << report.status().ToString();
}

TEST_P(CheckpointGcTest, DamagedManifestOfARemovedStepIsJustRemoved) {
  for (uint64_t s = 1; s <= 3; ++s) Commit(s, /*world=*/2);
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, JoinKey(root_, ManifestKey(1, 1)), 40));
  RetentionPolicy policy;
  policy.keep_last = 2;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.removed_steps, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(StepKeys(1).empty());
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{2, 3}));
}

TEST_P(CheckpointGcTest, LatestHintNamingARemovedStepIsRewritten) {
  for (uint64_t s = 1; s <= 3; ++s) Commit(s);
  const std::string key = JoinKey(root_, kLatestName);
  GRANARY_ASSERT_OK(WriteLatest(*store_, root_, 1));
  RetentionPolicy policy;
  policy.keep_last = 1;
  GRANARY_ASSERT_OK(CollectGarbage(*store_, root_, policy).status());
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, store_->GetAll(key));
  EXPECT_EQ(DecodeLatest(bytes, key).value_or(0), 3u);
}

TEST_P(CheckpointGcTest, RemoveStepRefusesTheNewestAndKeepsReferencedData) {
  StepSpec s1;
  s1.step = 1;
  s1.tensors = {{"a", 5000}, {"b", 300}};
  GRANARY_ASSERT_OK_AND_ASSIGN(auto m1, WriteStep(*store_, root_, s1));
  StepSpec s2;
  s2.step = 2;
  s2.tensors = {{"a", 5000}, {"b", 300}};
  s2.reuse_from = &m1;
  s2.reused = {"a"};
  GRANARY_ASSERT_OK(WriteStep(*store_, root_, s2).status());
  GRANARY_ASSERT_OK(WriteLatest(*store_, root_, 2));

  Status s = RemoveStep(*store_, root_, 2);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_EQ(StepKeys(2).size(), 3u);
  EXPECT_EQ(RemoveStep(*store_, root_, 7).code(), StatusCode::kNotFound);

  GRANARY_ASSERT_OK(RemoveStep(*store_, root_, 1));
  EXPECT_EQ(StepKeys(1), (std::vector<std::string>{JoinKey(root_, DataKey(1, 0, 0))}));
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{2}));
  GRANARY_ASSERT_OK_AND_ASSIGN(VerifyReport verify, VerifyStep(*store_, root_, 2));
  GRANARY_EXPECT_OK(verify.ToStatus());

  GRANARY_ASSERT_OK(RemoveStep(*store_, root_, 2, /*allow_newest=*/true));
  EXPECT_TRUE(Committed().empty());
  EXPECT_TRUE(StepKeys(2).empty());
  // The hint named step 2 and no committed step is left: it is gone too.
  EXPECT_EQ(store_->Stat(JoinKey(root_, kLatestName)).status().code(), StatusCode::kNotFound);
  // Step 1's data file is no longer referenced; removing step 1 again cleans it.
  GRANARY_ASSERT_OK(RemoveStep(*store_, root_, 1));
  EXPECT_TRUE(Keys(*store_, "").empty());
}

TEST_P(CheckpointGcTest, WorksAtTheStoreRoot) {
  root_ = "";
  for (uint64_t s = 1; s <= 3; ++s) Commit(s);
  GRANARY_ASSERT_OK(store_->Put("notes.txt", std::string_view("not a checkpoint object")));
  RetentionPolicy policy;
  policy.keep_last = 1;
  GRANARY_ASSERT_OK_AND_ASSIGN(GcReport report, CollectGarbage(*store_, root_, policy));
  EXPECT_EQ(report.removed_steps, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(Committed(), (std::vector<uint64_t>{3}));
  GRANARY_EXPECT_OK(store_->Stat("notes.txt").status());
}

INSTANTIATE_TEST_SUITE_P(Stores, CheckpointGcTest, ::testing::Values("mem", "local"),
                         [](const auto& info) { return info.param; });

TEST(RetentionPolicyTest, Validate) {
  GRANARY_EXPECT_OK(RetentionPolicy{}.Validate());
  RetentionPolicy bad;
  bad.orphan_grace_s = -1;
  EXPECT_EQ(bad.Validate().code(), StatusCode::kInvalidArgument);
  auto store = OpenStore("mem://checkpoint-gc-validate");
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(CollectGarbage(**store, "", bad).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace granary::checkpoint
