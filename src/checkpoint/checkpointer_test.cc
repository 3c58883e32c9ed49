// Checkpointer (include/granary/checkpoint.h) end to end over MemoryStore and LocalStore: round
// trips, streaming through a small budget, snapshot semantics, incremental saves, retention,
// if_busy, abandoned sessions, error reporting, damage detection and two ranks in one process.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpointer_test_util.h"
#include "core/testing/test_util.h"

namespace granary::checkpoint {
namespace {

using testing::Contains;
using testing::FlipByte;
using testing::Keys;
using testing::LoadsExactly;
using testing::MakeTensor;
using testing::Save;
using testing::SaveAndWait;
using testing::SpecsOf;
using testing::TestTensor;

constexpr uint64_t kMiB = 1u << 20;
constexpr char kRoot[] = "runs/exp1";

class CheckpointerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const std::string url = GetParam() == "mem"
                                ? "mem://checkpointer-test-" + std::to_string(counter++)
                                : dir_.path();
    GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> store, OpenStore(url));
    store_ = std::move(store);
  }

  std::unique_ptr<Checkpointer> Open(const CheckpointerOptions& options = {},
                                     std::string root = kRoot) {
    Result<std::unique_ptr<Checkpointer>> ckpt = Checkpointer::Open(store_, std::move(root), options);
    EXPECT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    return ckpt.ok() ? std::move(ckpt).value() : nullptr;
  }

  // The stored entry of `name` in rank `rank`'s manifest of committed `step`.
  TensorEntry EntryOf(uint64_t step, const std::string& name, uint32_t rank = 0) {
    Result<CommitRecord> commit = ReadCommit(*store_, kRoot, step);
    EXPECT_TRUE(commit.ok()) << commit.status().ToString();
    if (!commit.ok()) return {};
    Result<RankManifest> m = ReadManifest(*store_, kRoot, *commit, rank);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (!m.ok()) return {};
    for (const TensorEntry& e : m->tensors) {
      if (e.name == name) return e;
    }
    ADD_FAILURE() << "no tensor " << name << " in step " << step;
    return {};
  }

  std::vector<std::string> StepKeys(uint64_t step) {
    return Keys(*store_, JoinKey(kRoot, StepDir(step)) + "/");
  }

  granary::testing::ScratchDir dir_{"ckptr"};
  std::shared_ptr<ObjectStore> store_;
};

std::vector<TestTensor> SmallState(uint64_t seed) {
  return {MakeTensor("model.w", "float32", {256, 1024}, seed),   // 1 MiB
          MakeTensor("model.b", "bfloat16", {1000}, seed + 1),
          MakeTensor("optim.step", "int64", {}, seed + 2),
          MakeTensor("empty", "float16", {0, 7}, seed + 3)};
}

TEST_P(CheckpointerTest, RoundTripsEveryDtypeBitExactly) {
  std::vector<TestTensor> state;
  const std::vector<std::string> dtypes = {
      "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32",
      "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool",
      "float8_e4m3fn", "float8_e5m2"};
  uint64_t seed = 1;
  for (const std::string& dtype : dtypes) {
    state.push_back(MakeTensor("t." + dtype, dtype, {3, 5, 7}, seed++));
    state.push_back(MakeTensor("big." + dtype, dtype, {70001}, seed++));  // unaligned sizes
  }
  state.push_back(MakeTensor("scalar", "float32", {}, seed++));
  state.push_back(MakeTensor("zero.a", "float32", {0}, seed++));
  state.push_back(MakeTensor("zero.b", "int8", {4, 0, 3}, seed++));
  state.push_back(MakeTensor("large", "float32", {3 * kMiB + 5}, seed++));  // > 4 MiB chunks
  uint64_t total = 0;
  for (const TestTensor& t : state) total += t.bytes.size();

  auto ckpt = Open();
  ASSERT_NE(ckpt, nullptr);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto handle, Save(*ckpt, 10, state, R"({"epoch": 3})"));
  GRANARY_ASSERT_OK(handle->Wait());
  EXPECT_TRUE(handle->Done());
  EXPECT_FALSE(handle->Skipped());
  const SaveStats stats = handle->stats();
  EXPECT_EQ(stats.step, 10u);
  EXPECT_EQ(stats.tensors, state.size());
  EXPECT_EQ(stats.tensors_reused, 0u);
  EXPECT_EQ(stats.bytes_total, total);
  EXPECT_EQ(stats.bytes_written, total);
  GRANARY_EXPECT_OK(ckpt->WaitAll());

  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, ckpt->Steps());
  EXPECT_EQ(steps, std::vector<uint64_t>{10});
  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t latest, ckpt->Latest());
  EXPECT_EQ(latest, 10u);
  GRANARY_ASSERT_OK_AND_ASSIGN(StepInfo info, ckpt->Describe(10));
  EXPECT_EQ(info.step, 10u);
  EXPECT_EQ(info.world_size, 1u);
  EXPECT_TRUE(Contains(info.user_metadata_json, "epoch")) << info.user_metadata_json;
  ASSERT_EQ(info.tensors.size(), state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    EXPECT_EQ(info.tensors[i].name, state[i].name);
    EXPECT_EQ(info.tensors[i].dtype, state[i].dtype);
    EXPECT_EQ(info.tensors[i].shape, state[i].shape);
    EXPECT_EQ(info.tensors[i].length, state[i].bytes.size());
  }
  EXPECT_TRUE(LoadsExactly(*ckpt, 10, state));
  GRANARY_EXPECT_OK(ckpt->Verify(10));
  // Another Checkpointer (a restarted job) reads the same bytes.
  auto again = Open();
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(LoadsExactly(*again, 10, state));
}

TEST_P(CheckpointerTest, StateOfOnlyZeroSizeTensorsRoundTrips) {
  const std::vector<TestTensor> state = {MakeTensor("a", "float32", {0}, 1),
                                         MakeTensor("b", "bfloat16", {0, 0}, 2)};
  auto ckpt = Open();
  ASSERT_NE(ckpt, nullptr);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 1, state));
  EXPECT_TRUE(LoadsExactly(*ckpt, 1, state));
  GRANARY_EXPECT_OK(ckpt->Verify(1));
}

// A 70 MiB tensor and many small ones through a 16 MiB budget: the save completes only if
// staging streams (the ring cannot hold the state), and every staged piece lies in one region of
// at most the budget.
TEST_P(CheckpointerTest, LargeStateStreamsThroughASmallBudget) {
  CheckpointerOptions options;
  options.budget_bytes = 16 * kMiB;
  auto ckpt = Open(options);
  ASSERT_NE(ckpt, nullptr);
  const std::byte* lo = nullptr;
  for (uint64_t step = 1; step <= 2; ++step) {
    std::vector<TestTensor> state;
    for (int i = 0; i < 30; ++i) {
      state.push_back(MakeTensor("small." + std::to_string(i), "float32", {1000u + 977u * i}, step * 100 + i));
    }
    state.push_back(MakeTensor("huge", "float32", {70 * kMiB / 4}, step));
    for (int i = 30; i < 60; ++i) {
      state.push_back(MakeTensor("small." + std::to_string(i), "uint8", {1u + 4099u * i}, step * 100 + i));
    }
    GRANARY_ASSERT_OK_AND_ASSIGN(auto session, ckpt->BeginSave(step, SpecsOf(state)));
    ASSERT_FALSE(session->skipped());
    EXPECT_GT(session->max_piece_bytes(), 0u);
    EXPECT_LE(session->max_piece_bytes(), options.budget_bytes);
    uint64_t staged = 0;
    const std::byte* hi = nullptr;
    for (size_t i = 0; i < state.size(); ++i) {
      const std::vector<std::byte>& src = state[i].bytes;
      for (uint64_t offset = 0; offset < src.size();) {
        GRANARY_ASSERT_OK_AND_ASSIGN(std::span<std::byte> piece, session->ReservePiece(i, offset));
        ASSERT_FALSE(piece.empty());
        ASSERT_LE(piece.size(), session->max_piece_bytes());
        ASSERT_LE(offset + piece.size(), src.size());
        if (lo == nullptr || piece.data() < lo) lo = piece.data();
        if (hi == nullptr || piece.data() + piece.size() > hi) hi = piece.data() + piece.size();
        std::copy(src.begin() + offset, src.begin() + offset + piece.size(), piece.begin());
        GRANARY_ASSERT_OK(session->CommitPiece());
        offset += piece.size();
        staged += piece.size();
      }
    }
    GRANARY_ASSERT_OK_AND_ASSIGN(auto handle, session->Finish());
    GRANARY_ASSERT_OK(handle->Wait());
    EXPECT_GT(staged, 4 * options.budget_bytes);
    // Peak staging memory: every piece of both saves within one budget-sized ring.
    EXPECT_LE(static_cast<uint64_t>(hi - lo), options.budget_bytes);
    EXPECT_EQ(handle->stats().bytes_total, staged);
    EXPECT_TRUE(LoadsExactly(*ckpt, step, state));
  }
  GRANARY_EXPECT_OK(ckpt->Verify(2));
}

// Finish returns once the bytes are in staging: changing the source afterwards (while the save
// persists) must not change what is saved, with a whole-state ring and with a streaming budget.
TEST_P(CheckpointerTest, ChangingSourceBytesAfterFinishDoesNotChangeTheSave) {
  for (uint64_t budget : {uint64_t{0}, 16 * kMiB}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    CheckpointerOptions options;
    options.budget_bytes = budget;
    auto ckpt = Open(options, std::string(kRoot) + "/budget-" + std::to_string(budget));
    ASSERT_NE(ckpt, nullptr);
    std::vector<TestTensor> state = SmallState(5);
    state.push_back(MakeTensor("big", "float32", {10 * kMiB}, 9));  // 40 MiB
    const std::vector<TestTensor> expected = state;
    GRANARY_ASSERT_OK_AND_ASSIGN(auto handle, Save(*ckpt, 1, state));
    for (TestTensor& t : state) std::fill(t.bytes.begin(), t.bytes.end(), std::byte{0x5A});
    state.clear();
    state.shrink_to_fit();  // and freed
    GRANARY_ASSERT_OK(handle->Wait());
    EXPECT_TRUE(LoadsExactly(*ckpt, 1, expected));
  }
}

TEST_P(CheckpointerTest, IncrementalSavesReuseUnchangedTensorsAfterTheBaseIsCollected) {
  CheckpointerOptions options;
  options.keep_last = 1;
  auto ckpt = Open(options);
  ASSERT_NE(ckpt, nullptr);
  std::vector<TestTensor> state = SmallState(1);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 1, state));

  state[0] = MakeTensor("model.w", "float32", {256, 1024}, 77);  // only this one changes
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h2, Save(*ckpt, 2, state));
  GRANARY_ASSERT_OK(h2->Wait());
  EXPECT_EQ(h2->stats().tensors, state.size());
  EXPECT_EQ(h2->stats().tensors_reused, state.size() - 1);
  EXPECT_EQ(h2->stats().bytes_written, state[0].bytes.size());
  // keep_last = 1: step 1 is no longer committed, but the data file step 2 points into stays.
  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, ckpt->Steps());
  EXPECT_EQ(steps, std::vector<uint64_t>{2});
  EXPECT_EQ(EntryOf(2, "model.b").key, DataKey(1, 0, 0));
  EXPECT_EQ(StepKeys(1), std::vector<std::string>{JoinKey(kRoot, DataKey(1, 0, 0))});
  EXPECT_TRUE(LoadsExactly(*ckpt, 2, state));
  GRANARY_EXPECT_OK(ckpt->Verify(2));

  // Nothing changes: nothing is written; step 2 is collected, the reused bytes survive.
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h3, Save(*ckpt, 3, state));
  GRANARY_ASSERT_OK(h3->Wait());
  EXPECT_EQ(h3->stats().tensors_reused, state.size());
  EXPECT_EQ(h3->stats().bytes_written, 0u);
  GRANARY_ASSERT_OK_AND_ASSIGN(steps, ckpt->Steps());
  EXPECT_EQ(steps, std::vector<uint64_t>{3});
  EXPECT_TRUE(LoadsExactly(*ckpt, 3, state));
  GRANARY_EXPECT_OK(ckpt->Verify(3));

  // A restarted job has no base until it loads a whole step; then it reuses again.
  auto restarted = Open(options);
  ASSERT_NE(restarted, nullptr);
  EXPECT_TRUE(LoadsExactly(*restarted, 3, state));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h4, Save(*restarted, 4, state));
  GRANARY_ASSERT_OK(h4->Wait());
  EXPECT_EQ(h4->stats().tensors_reused, state.size());
  EXPECT_TRUE(LoadsExactly(*restarted, 4, state));

  // incremental = false writes everything again.
  options.incremental = false;
  auto full = Open(options);
  ASSERT_NE(full, nullptr);
  EXPECT_TRUE(LoadsExactly(*full, 4, state));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h5, Save(*full, 5, state));
  GRANARY_ASSERT_OK(h5->Wait());
  EXPECT_EQ(h5->stats().tensors_reused, 0u);
  EXPECT_EQ(h5->stats().bytes_written, h5->stats().bytes_total);
  EXPECT_TRUE(LoadsExactly(*full, 5, state));
}

TEST_P(CheckpointerTest, RetentionKeepsTheNewestAndEveryNth) {
  CheckpointerOptions options;
  options.keep_last = 2;
  options.keep_every = 3;
  auto ckpt = Open(options);
  ASSERT_NE(ckpt, nullptr);
  std::vector<std::vector<TestTensor>> states;
  for (uint64_t step = 1; step <= 7; ++step) {
    states.push_back({MakeTensor("w", "float32", {5000}, step), MakeTensor("b", "int32", {10}, step + 50)});
    GRANARY_ASSERT_OK(SaveAndWait(*ckpt, step, states.back()));
  }
  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, ckpt->Steps());
  EXPECT_EQ(steps, (std::vector<uint64_t>{3, 6, 7}));
  for (uint64_t gone : {1, 2, 4, 5}) EXPECT_TRUE(StepKeys(gone).empty()) << "step " << gone;
  for (uint64_t kept : {3, 6, 7}) EXPECT_TRUE(LoadsExactly(*ckpt, kept, states[kept - 1]));

  options.keep_last = 0;  // keep everything
  options.keep_every = 0;
  auto all = Open(options, std::string(kRoot) + "/all");
  ASSERT_NE(all, nullptr);
  for (uint64_t step = 1; step <= 4; ++step) GRANARY_ASSERT_OK(SaveAndWait(*all, step, states[step - 1]));
  GRANARY_ASSERT_OK_AND_ASSIGN(steps, all->Steps());
  EXPECT_EQ(steps, (std::vector<uint64_t>{1, 2, 3, 4}));
}

// Rank 0 of two cannot commit before rank 1's manifest exists, so its save is deterministically
// still persisting until rank 1 saves.
TEST_P(CheckpointerTest, SkipReturnsASkippedHandleWhileASavePersists) {
  CheckpointerOptions options;
  options.world_size = 2;
  options.if_busy = IfBusy::kSkip;
  auto rank0 = Open(options);
  options.rank = 1;
  auto rank1 = Open(options);
  ASSERT_TRUE(rank0 && rank1);
  const std::vector<TestTensor> s0 = SmallState(10), s1 = SmallState(20);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h1, Save(*rank0, 1, s0));
  EXPECT_FALSE(h1->Done());

  GRANARY_ASSERT_OK_AND_ASSIGN(auto skipped, rank0->BeginSave(2, SpecsOf(s0)));
  EXPECT_TRUE(skipped->skipped());
  EXPECT_TRUE(skipped->handle()->Skipped());
  EXPECT_TRUE(skipped->handle()->Done());
  EXPECT_EQ(skipped->handle()->step(), 2u);
  EXPECT_EQ(skipped->CopyIn(0, s0[0].bytes).code(), StatusCode::kFailedPrecondition);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto sh, skipped->Finish());
  EXPECT_TRUE(sh->Skipped());
  GRANARY_EXPECT_OK(sh->Wait());
  EXPECT_TRUE(sh->stats().skipped);
  EXPECT_FALSE(h1->Done());  // the skip did not disturb the save in flight

  GRANARY_ASSERT_OK_AND_ASSIGN(auto h1b, Save(*rank1, 1, s1));
  GRANARY_EXPECT_OK(h1->Wait());
  GRANARY_EXPECT_OK(h1b->Wait());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, rank0->Steps());
  EXPECT_EQ(steps, std::vector<uint64_t>{1});  // the skipped step 2 was never saved
  EXPECT_TRUE(LoadsExactly(*rank0, 1, s0));
  EXPECT_TRUE(LoadsExactly(*rank1, 1, s1));

  // Nothing persisting now: the next BeginSave is a real save.
  GRANARY_ASSERT_OK_AND_ASSIGN(auto next, rank0->BeginSave(2, SpecsOf(s0)));
  EXPECT_FALSE(next->skipped());
}

TEST_P(CheckpointerTest, WaitBlocksBeginSaveUntilThePreviousSaveIsDurable) {
  CheckpointerOptions options;
  options.world_size = 2;
  options.if_busy = IfBusy::kWait;
  auto rank0 = Open(options);
  options.rank = 1;
  auto rank1 = Open(options);
  ASSERT_TRUE(rank0 && rank1);
  const std::vector<TestTensor> s0 = SmallState(10), s1 = SmallState(20);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h1, Save(*rank0, 1, s0));

  std::atomic<bool> rank1_started{false};
  bool saw_rank1 = false, saw_done = false, saw_committed = false;
  std::unique_ptr<SaveSession> second;
  std::thread waiter([&] {
    Result<std::unique_ptr<SaveSession>> s = rank0->BeginSave(2, SpecsOf(s0));
    saw_rank1 = rank1_started.load();
    saw_done = h1->Done();
    Result<std::vector<uint64_t>> steps = rank0->Steps();
    saw_committed = steps.ok() && *steps == std::vector<uint64_t>{1};
    if (s.ok()) second = std::move(s).value();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  rank1_started = true;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h1b, Save(*rank1, 1, s1));
  waiter.join();
  EXPECT_TRUE(saw_rank1) << "BeginSave returned before the previous save could be durable";
  EXPECT_TRUE(saw_done);
  EXPECT_TRUE(saw_committed);
  ASSERT_NE(second, nullptr);
  EXPECT_FALSE(second->skipped());
  GRANARY_EXPECT_OK(h1->Wait());
  GRANARY_EXPECT_OK(h1b->Wait());
  auto h2 = second->handle();
  second.reset();  // abandon step 2 (rank 1 never saves it)
  EXPECT_EQ(h2->Wait().code(), StatusCode::kCancelled);
}

// Checkpointer methods are thread-safe: BeginSave from several threads while a save persists
// must still persist one save at a time (each returns only once every earlier save is done).
TEST_P(CheckpointerTest, ConcurrentBeginSavesPersistOneAtATime) {
  CheckpointerOptions options;
  options.world_size = 2;
  auto rank0 = Open(options);
  options.rank = 1;
  auto rank1 = Open(options);
  ASSERT_TRUE(rank0 && rank1);
  const std::vector<TestTensor> s0 = SmallState(10), s1 = SmallState(20);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h1, Save(*rank0, 1, s0));

  std::mutex mu;
  std::vector<std::shared_ptr<SaveHandle>> started = {h1};
  std::atomic<int> overlaps{0}, errors{0};
  std::vector<std::thread> threads;
  for (uint64_t step = 2; step <= 4; ++step) {
    threads.emplace_back([&, step] {
      Result<std::unique_ptr<SaveSession>> s = rank0->BeginSave(step, SpecsOf(s0));
      if (!s.ok()) {
        errors++;
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        for (const auto& h : started) {
          if (!h->Done()) overlaps++;
        }
        started.push_back((*s)->handle());
      }
      s->reset();  // abandon: the next BeginSave may proceed
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h1b, Save(*rank1, 1, s1));
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(overlaps.load(), 0) << "BeginSave returned while an earlier save was persisting";
  EXPECT_EQ(errors.load(), 0);
  GRANARY_EXPECT_OK(h1->Wait());
  GRANARY_EXPECT_OK(h1b->Wait());
  EXPECT_EQ(started.size(), 4u);
  EXPECT_TRUE(LoadsExactly(*rank0, 1, s0));
}

TEST_P(CheckpointerTest, AbandonedSessionCommitsNothingAndTheNextSaveWorks) {
  for (uint64_t budget : {uint64_t{0}, 16 * kMiB}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    CheckpointerOptions options;
    options.budget_bytes = budget;
    auto ckpt = Open(options, std::string(kRoot) + "/budget-" + std::to_string(budget));
    ASSERT_NE(ckpt, nullptr);
    const std::vector<TestTensor> s1 = SmallState(1);
    GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 1, s1));

    std::vector<TestTensor> s2 = SmallState(2);
    s2.insert(s2.begin(), MakeTensor("big", "uint8", {12 * kMiB}, 3));  // most of the ring
    std::shared_ptr<SaveHandle> abandoned;
    {
      GRANARY_ASSERT_OK_AND_ASSIGN(auto session, ckpt->BeginSave(2, SpecsOf(s2)));
      abandoned = session->handle();
      GRANARY_ASSERT_OK(session->CopyIn(0, s2[0].bytes));
      GRANARY_ASSERT_OK(session->CopyIn(1, s2[1].bytes));
      GRANARY_ASSERT_OK_AND_ASSIGN(auto piece, session->ReservePiece(2, 0));  // left pending
      EXPECT_FALSE(piece.empty());
    }
    EXPECT_EQ(abandoned->Wait().code(), StatusCode::kCancelled);
    EXPECT_TRUE(abandoned->Done());
    GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, ckpt->Steps());
    EXPECT_EQ(steps, std::vector<uint64_t>{1});
    EXPECT_EQ(ckpt->WaitAll().code(), StatusCode::kCancelled);  // the last save's outcome

    // The ring is idle again: the same step, then a later one, save fine.
    GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 2, s2));
    EXPECT_TRUE(LoadsExactly(*ckpt, 2, s2));
    EXPECT_TRUE(LoadsExactly(*ckpt, 1, s1));
  }
}

TEST_P(CheckpointerTest, StagingMistakesAreRejectedAndTheSessionRecovers) {
  auto ckpt = Open();
  ASSERT_NE(ckpt, nullptr);
  const std::vector<TestTensor> state = SmallState(4);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto session, ckpt->BeginSave(1, SpecsOf(state)));
  Status s = session->CopyIn(1, state[1].bytes);  // tensor 0 comes first
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "model.b")) << s.ToString();
  std::vector<std::byte> short_bytes(state[0].bytes.begin(), state[0].bytes.end() - 1);
  s = session->CopyIn(0, short_bytes);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "model.w")) << s.ToString();
  EXPECT_EQ(session->CopyIn(9, state[0].bytes).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(session->Finish().status().code(), StatusCode::kFailedPrecondition);
  GRANARY_ASSERT_OK(session->CopyIn(0, state[0].bytes));
  s = session->CopyIn(0, state[0].bytes);  // twice
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  for (size_t i = 1; i < state.size(); ++i) GRANARY_ASSERT_OK(session->CopyIn(i, state[i].bytes));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto handle, session->Finish());
  EXPECT_EQ(session->Finish().status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(session->CopyIn(0, state[0].bytes).code(), StatusCode::kFailedPrecondition);
  GRANARY_ASSERT_OK(handle->Wait());
  EXPECT_TRUE(LoadsExactly(*ckpt, 1, state));
}

TEST_P(CheckpointerTest, CopyInManyStagesGroupsAndChecksEverythingFirst) {
  for (uint64_t budget : {uint64_t{0}, uint64_t{16} << 20}) {
    SCOPED_TRACE("budget " + std::to_string(budget));
    CheckpointerOptions options;
    options.budget_bytes = budget;
    auto ckpt = Open(options, "copy-in-many-" + std::to_string(budget));
    ASSERT_NE(ckpt, nullptr);
    // Many small tensors, one larger than a piece of the budgeted ring, a zero-size one.
    std::vector<TestTensor> state;
    for (int i = 0; i < 40; ++i) state.push_back(MakeTensor("small." + std::to_string(i), "float32", {25000}, i));
    state.push_back(MakeTensor("big", "bfloat16", {9u << 20}, 99));
    state.push_back(MakeTensor("empty", "int64", {0, 3}, 100));
    state.push_back(MakeTensor("tail", "uint8", {12345}, 101));
    GRANARY_ASSERT_OK_AND_ASSIGN(auto session, ckpt->BeginSave(1, SpecsOf(state)));
    std::vector<SaveSession::CopySource> sources;
    for (size_t i = 0; i < state.size(); ++i) sources.push_back({i, state[i].bytes});
    // A wrong size anywhere rejects the whole call before anything is staged.
    std::vector<std::byte> short_bytes(state[7].bytes.begin(), state[7].bytes.end() - 4);
    std::vector<SaveSession::CopySource> bad = sources;
    bad[7].bytes = short_bytes;
    Status s = session->CopyInMany(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_TRUE(Contains(s.message(), "small.7")) << s.ToString();
    std::vector<SaveSession::CopySource> gap = {sources[0], sources[2]};
    EXPECT_EQ(session->CopyInMany(gap).code(), StatusCode::kInvalidArgument);
    GRANARY_ASSERT_OK(session->CopyInMany(std::span(sources).first(10)));
    GRANARY_ASSERT_OK(session->CopyInMany(std::span(sources).subspan(10)));
    GRANARY_ASSERT_OK_AND_ASSIGN(auto handle, session->Finish());
    GRANARY_ASSERT_OK(handle->Wait());
    EXPECT_TRUE(LoadsExactly(*ckpt, 1, state));
  }
}

TEST_P(CheckpointerTest, BeginSaveRejectsBadSpecsAndStepsNamingThem) {
  auto ckpt = Open();
  ASSERT_NE(ckpt, nullptr);
  std::vector<TensorSpec> dup = {{"x", "float32", {2}, {}, {}}, {"x", "float32", {2}, {}, {}}};
  Result<std::unique_ptr<SaveSession>> r = ckpt->BeginSave(1, dup);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.status().message(), "\"x\"")) << r.status().ToString();
  r = ckpt->BeginSave(1, {{"weird", "float13", {2}, {}, {}}});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.status().message(), "weird")) << r.status().ToString();
  EXPECT_EQ(ckpt->BeginSave(kMaxStep + 1, {}).status().code(), StatusCode::kInvalidArgument);

  const std::vector<TestTensor> state = SmallState(1);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 5, state));
  r = ckpt->BeginSave(5, SpecsOf(state));
  EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists) << r.status().ToString();
  // The contract: FailedPrecondition if the step is not above every committed step.
  r = ckpt->BeginSave(3, SpecsOf(state));
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().ToString();
  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, ckpt->Steps());
  EXPECT_EQ(steps, std::vector<uint64_t>{5});
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 6, state));
  EXPECT_TRUE(LoadsExactly(*ckpt, 6, state));
}

TEST_P(CheckpointerTest, LoadRejectsWrongSizesAndUnknownNamesNamingTheTensor) {
  auto ckpt = Open();
  ASSERT_NE(ckpt, nullptr);
  const std::vector<TestTensor> state = SmallState(1);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 1, state));
  std::vector<std::byte> small(state[1].bytes.size() - 2);
  std::vector<LoadTarget> targets = {{"model.b", small}};
  Status s = ckpt->Load(1, targets);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "model.b")) << s.ToString();
  std::vector<std::byte> any(16);
  targets = {{"no.such.tensor", any}};
  s = ckpt->Load(1, targets);
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "no.such.tensor")) << s.ToString();
  EXPECT_EQ(ckpt->Load(2, {}).code(), StatusCode::kNotFound);
  EXPECT_EQ(ckpt->Describe(2).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ckpt->Verify(2).code(), StatusCode::kNotFound);
}

TEST_P(CheckpointerTest, FlippedDataByteIsDataLossNamingTensorAndFile) {
  auto ckpt = Open();
  ASSERT_NE(ckpt, nullptr);
  const std::vector<TestTensor> state = SmallState(1);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 1, state));
  const TensorEntry e = EntryOf(1, "model.b");
  const std::string data_key = JoinKey(kRoot, e.key);
  GRANARY_ASSERT_OK(FlipByte(*store_, data_key, e.offset + e.length / 2));

  Status s = ckpt->Load(1, std::vector<LoadTarget>{});  // nothing requested: nothing read
  GRANARY_EXPECT_OK(s);
  std::vector<std::byte> buf(e.length);
  std::vector<LoadTarget> targets = {{"model.b", buf}};
  s = ckpt->Load(1, targets);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "model.b")) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), data_key)) << s.ToString();
  s = ckpt->Verify(1);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "model.b")) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), data_key)) << s.ToString();
  // The undamaged tensors still load.
  EXPECT_TRUE(LoadsExactly(*ckpt, 1, {state[0], state[2], state[3]}));
}

TEST_P(CheckpointerTest, FlippedManifestByteIsDataLossNamingTheManifest) {
  auto ckpt = Open();
  ASSERT_NE(ckpt, nullptr);
  const std::vector<TestTensor> state = SmallState(1);
  GRANARY_ASSERT_OK(SaveAndWait(*ckpt, 1, state));
  const std::string manifest_key = JoinKey(kRoot, ManifestKey(1, 0));
  GRANARY_ASSERT_OK(FlipByte(*store_, manifest_key, 40));
  std::vector<std::byte> buf(state[0].bytes.size());
  std::vector<LoadTarget> targets = {{"model.w", buf}};
  for (Status s : {ckpt->Load(1, targets), ckpt->Verify(1), ckpt->Describe(1).status()}) {
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_TRUE(Contains(s.message(), manifest_key)) << s.ToString();
  }
}

TEST_P(CheckpointerTest, TwoRanksCommitOnlyAfterBoth) {
  CheckpointerOptions options;
  options.world_size = 2;
  auto rank0 = Open(options);
  options.rank = 1;
  auto rank1 = Open(options);
  ASSERT_TRUE(rank0 && rank1);
  const std::vector<TestTensor> s0 = SmallState(100);
  const std::vector<TestTensor> s1 = {MakeTensor("model.w", "float32", {128, 1024}, 200),
                                      MakeTensor("rank1.only", "int8", {333}, 201)};
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h0, Save(*rank0, 7, s0));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, rank0->Steps());
  EXPECT_TRUE(steps.empty()) << "visible before rank 1 saved";
  EXPECT_FALSE(h0->Done());

  Status s1_status = InternalError("not run");
  std::thread t([&] {
    Result<std::shared_ptr<SaveHandle>> h1 = Save(*rank1, 7, s1);
    s1_status = h1.ok() ? (*h1)->Wait() : h1.status();
  });
  GRANARY_EXPECT_OK(h0->Wait());
  t.join();
  GRANARY_EXPECT_OK(s1_status);
  GRANARY_ASSERT_OK_AND_ASSIGN(steps, rank1->Steps());
  EXPECT_EQ(steps, std::vector<uint64_t>{7});
  GRANARY_ASSERT_OK_AND_ASSIGN(StepInfo info1, rank1->Describe(7));
  EXPECT_EQ(info1.world_size, 2u);
  ASSERT_EQ(info1.tensors.size(), 2u);
  EXPECT_EQ(info1.tensors[1].name, "rank1.only");
  EXPECT_TRUE(LoadsExactly(*rank0, 7, s0));
  EXPECT_TRUE(LoadsExactly(*rank1, 7, s1));
  GRANARY_EXPECT_OK(rank0->Verify(7));  // every rank's tensors
}

TEST_P(CheckpointerTest, RankManifestOfAnotherSaveIdIsNotCommitted) {
  CheckpointerOptions options;
  options.world_size = 2;
  options.commit_timeout_s = 1;
  auto rank0 = Open(options);
  options.rank = 1;
  auto rank1 = Open(options);
  ASSERT_TRUE(rank0 && rank1);
  const std::vector<TestTensor> s0 = SmallState(1), s1 = SmallState(2);
  Status st1 = InternalError("not run");
  std::thread t([&] {
    Result<std::shared_ptr<SaveHandle>> h = Save(*rank1, 3, s1, "{}", "attempt-b");
    st1 = h.ok() ? (*h)->Wait() : h.status();
  });
  GRANARY_ASSERT_OK_AND_ASSIGN(auto h0, Save(*rank0, 3, s0, "{}", "attempt-a"));
  Status st0 = h0->Wait();
  t.join();
  EXPECT_EQ(st0.code(), StatusCode::kDeadlineExceeded) << st0.ToString();
  EXPECT_TRUE(Contains(st0.message(), "step 3")) << st0.ToString();
  EXPECT_FALSE(st1.ok());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto steps, rank0->Steps());
  EXPECT_TRUE(steps.empty());
}

INSTANTIATE_TEST_SUITE_P(Stores, CheckpointerTest, ::testing::Values("mem", "local"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace granary::checkpoint
