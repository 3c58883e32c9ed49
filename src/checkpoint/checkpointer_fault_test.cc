// Checkpointer over a LocalStore on a FaultInjectingFileSystem: a full disk, EIO from writes and
// fsyncs and short writes surface on the save's handle naming the step and the file; the previous
// checkpoint stays intact and no new step appears; training continues once the fault clears; and
// a save whose Wait() returned OK survives power loss.
#include <gtest/gtest.h>

#include <cerrno>
#include <functional>
#include <map>
#include <optional>

#include "checkpoint/checkpointer_test_util.h"
#include "core/testing/test_util.h"
#include "io/fault_injection.h"
#include "io/file_system.h"
#include "store/local/local_store.h"

namespace granary::checkpoint {
namespace {

using testing::Contains;
using testing::LoadsExactly;
using testing::MakeTensor;
using testing::Save;
using testing::SaveAndWait;
using testing::TestTensor;

constexpr uint64_t kMiB = 1u << 20;

// A state of `big_bytes` in one tensor plus a few small ones.
std::vector<TestTensor> State(uint64_t seed, uint64_t big_bytes) {
  return {MakeTensor("small.a", "float32", {1000}, seed),
          MakeTensor("big", "uint8", {big_bytes}, seed + 1),
          MakeTensor("small.b", "int64", {3, 33}, seed + 2),
          MakeTensor("mid", "bfloat16", {300000}, seed + 3)};
}

class CheckpointerFaultTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  // A fresh store and Checkpointer over the same directory (as after a restart).
  void Reopen() {
    ckpt_.reset();
    store_.reset();
    GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store,
                                 NewLocalStore(dir_.Join("root"), StoreOptions{}, &fault_));
    store_ = std::move(store);
    GRANARY_ASSERT_OK_AND_ASSIGN(ckpt_, Checkpointer::Open(store_, "run", options_));
  }

  // A failed save of `step`: the handle names the step and one of its files; nothing new is
  // visible and every step of `committed` (with its state) still loads bit-exactly.
  void ExpectFailedCleanly(const Status& s, uint64_t step,
                           const std::map<uint64_t, std::vector<TestTensor>>& committed) {
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(Contains(s.message(), "step " + std::to_string(step))) << s.ToString();
    EXPECT_TRUE(Contains(s.message(), StepDir(step) + "/")) << "no file named: " << s.ToString();
    Result<std::vector<uint64_t>> steps = ckpt_->Steps();
    GRANARY_ASSERT_OK(steps);
    std::vector<uint64_t> expected;
    for (const auto& [st, state] : committed) expected.push_back(st);
    EXPECT_EQ(*steps, expected);
    for (const auto& [st, state] : committed) {
      EXPECT_TRUE(LoadsExactly(*ckpt_, st, state));
      GRANARY_EXPECT_OK(ckpt_->Verify(st));
    }
  }

  // Runs one save of `step` under `arm` (which arms a fault), then checks the failure and that
  // training continues: the same Checkpointer saves `step` again once faults are cleared.
  void FailThenRecover(uint64_t step, const std::function<void()>& arm,
                       std::optional<StatusCode> code = std::nullopt) {
    std::map<uint64_t, std::vector<TestTensor>> committed;
    committed[1] = State(1, 20 * kMiB);
    GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, 1, committed[1]));
    const std::vector<TestTensor> next = State(step * 10, 20 * kMiB);
    arm();
    Result<std::shared_ptr<SaveHandle>> handle = Save(*ckpt_, step, next);
    GRANARY_ASSERT_OK(handle);  // staging itself never fails on I/O
    const Status s = (*handle)->Wait();
    EXPECT_TRUE((*handle)->Done());
    if (code) {
      EXPECT_EQ(s.code(), *code) << s.ToString();
    }
    ExpectFailedCleanly(s, step, committed);
    fault_.ClearFaults();
    GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, step, next));
    EXPECT_TRUE(LoadsExactly(*ckpt_, step, next));
    EXPECT_TRUE(LoadsExactly(*ckpt_, 1, committed[1]));
  }

  granary::testing::ScratchDir dir_{"ckptfault"};
  FaultInjectingFileSystem fault_{&FileSystem::Default()};
  CheckpointerOptions options_ = [] {
    CheckpointerOptions o;
    o.budget_bytes = 16 * kMiB;  // a 20 MiB state streams: faults hit while staging blocks
    o.keep_last = 0;
    return o;
  }();
  std::shared_ptr<ObjectStore> store_;
  std::unique_ptr<Checkpointer> ckpt_;
};

TEST_F(CheckpointerFaultTest, DiskFullMidSaveIsResourceExhausted) {
  FailThenRecover(2, [&] { fault_.SetDiskFullAfter(6 * kMiB); }, StatusCode::kResourceExhausted);
}

TEST_F(CheckpointerFaultTest, EioOnTheNthWrite) {
  FailThenRecover(2, [&] { fault_.FailNthWrite(3, EIO); });
}

TEST_F(CheckpointerFaultTest, EioOnFsync) {
  FailThenRecover(2, [&] { fault_.FailNthSync(1, EIO); });
}

TEST_F(CheckpointerFaultTest, ShortWrites) {
  FailThenRecover(2, [&] { fault_.ShortWrites(true, EIO); });
}

// Every write, every fsync and a range of disk sizes in turn: whatever the point of failure, a
// save either succeeds and is committed and loadable, or fails naming its step and a file with
// nothing new visible, and the next save succeeds.
TEST_F(CheckpointerFaultTest, EveryFailurePointIsReportedOrCommitted) {
  options_.budget_bytes = 0;
  Reopen();
  std::map<uint64_t, std::vector<TestTensor>> committed;
  uint64_t step = 1;
  committed[step] = State(step, 5 * kMiB);
  const uint64_t writes0 = fault_.writes(), syncs0 = fault_.syncs(), bytes0 = fault_.bytes_written();
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, step, committed[step]));
  const uint64_t writes = fault_.writes() - writes0, syncs = fault_.syncs() - syncs0;
  const uint64_t bytes = fault_.bytes_written() - bytes0;
  ASSERT_GT(writes, 2u);
  ASSERT_GT(syncs, 2u);

  struct Fault {
    std::string what;
    std::function<void()> arm;
  };
  std::vector<Fault> faults;
  for (uint64_t n = 1; n <= writes + 1; ++n) {
    faults.push_back({"write " + std::to_string(n), [this, n] { fault_.FailNthWrite(n, EIO); }});
  }
  for (uint64_t n = 1; n <= syncs + 1; ++n) {
    faults.push_back({"sync " + std::to_string(n), [this, n] { fault_.FailNthSync(n, EIO); }});
  }
  for (uint64_t b : std::vector<uint64_t>{0, 1, 4096, bytes / 4, bytes / 2, bytes - 4096, bytes - 100,
                     bytes - 1}) {
    faults.push_back({"disk full after " + std::to_string(b), [this, b] { fault_.SetDiskFullAfter(b); }});
  }
  int failed = 0;
  for (const Fault& f : faults) {
    SCOPED_TRACE(f.what);
    ++step;
    const std::vector<TestTensor> state = State(step, 5 * kMiB);
    f.arm();
    Result<std::shared_ptr<SaveHandle>> handle = Save(*ckpt_, step, state);
    GRANARY_ASSERT_OK(handle);
    const Status s = (*handle)->Wait();
    fault_.ClearFaults();
    if (s.ok()) {
      committed[step] = state;
      GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, ckpt_->Steps());
      EXPECT_EQ(steps.back(), step);
      EXPECT_EQ(ckpt_->Latest().value_or(0), step);  // even if writing the `latest` hint failed
      EXPECT_TRUE(LoadsExactly(*ckpt_, step, state));
      continue;
    }
    ++failed;
    ExpectFailedCleanly(s, step, committed);
    if (f.what.starts_with("disk full")) {
      EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
    }
    if (HasFailure()) return;  // one clear report is enough
  }
  // Most points must actually fail the save (the faults hit the save, not something else).
  EXPECT_GT(failed, static_cast<int>(faults.size() / 2));
  ++step;
  committed[step] = State(step, 5 * kMiB);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, step, committed[step]));
  EXPECT_TRUE(LoadsExactly(*ckpt_, step, committed[step]));
}

// Power loss right after Wait() returned OK: the step is committed and loads bit-exactly,
// including an incremental step that points into an earlier step's data file.
TEST_F(CheckpointerFaultTest, SaveIsDurableOnceWaitReturns) {
  const std::vector<TestTensor> s1 = State(1, 3 * kMiB);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, 1, s1));
  std::vector<TestTensor> s2 = s1;
  s2[0] = MakeTensor("small.a", "float32", {1000}, 99);  // the rest is reused from step 1
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h2, Save(*ckpt_, 2, s2));
  GRANARY_ASSERT_OK(h2->Wait());
  EXPECT_EQ(h2->stats().tensors_reused, s2.size() - 1);
  GRANARY_ASSERT_OK(fault_.Crash());
  Reopen();
  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, ckpt_->Steps());
  EXPECT_EQ(steps, (std::vector<uint64_t>{1, 2}));
  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t latest, ckpt_->Latest());
  EXPECT_EQ(latest, 2u);
  EXPECT_TRUE(LoadsExactly(*ckpt_, 2, s2));
  EXPECT_TRUE(LoadsExactly(*ckpt_, 1, s1));
  GRANARY_EXPECT_OK(ckpt_->Verify(2));
  // And saving continues after the restart.
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, 3, s1));
  EXPECT_TRUE(LoadsExactly(*ckpt_, 3, s1));
}

// Power loss in the middle of a save (nothing waited for): the previous step stays the newest.
TEST_F(CheckpointerFaultTest, CrashBeforeCommitLeavesThePreviousStepNewest) {
  const std::vector<TestTensor> s1 = State(1, 3 * kMiB);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, 1, s1));
  // The save of step 2 fails on a full disk; the crash then drops whatever was not durable.
  const std::vector<TestTensor> s2 = State(2, 3 * kMiB);
  fault_.SetDiskFullAfter(1 * kMiB);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h2, Save(*ckpt_, 2, s2));
  EXPECT_FALSE(h2->Wait().ok());
  fault_.ClearFaults();
  GRANARY_ASSERT_OK(fault_.Crash());
  Reopen();
  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t latest, ckpt_->Latest());
  EXPECT_EQ(latest, 1u);
  EXPECT_TRUE(LoadsExactly(*ckpt_, 1, s1));
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt_, 2, s2));
  EXPECT_TRUE(LoadsExactly(*ckpt_, 2, s2));
}

}  // namespace
}  // namespace granary::checkpoint
