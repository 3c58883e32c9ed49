// Loader: order, exact splits across ranks and shares, resume, read-ahead bounds, restarts and
// the next-epoch cache, on a small dataset in a memory store and in a local directory.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/dataset.h"
#include "gtest/gtest.h"

namespace granary {
namespace {

constexpr uint64_t kSamples = 1000;

std::string Payload(uint64_t i) {
  // Variable sizes (40..~1100 bytes) so batches differ in bytes; content tied to the index.
  std::string s = "sample-" + std::to_string(i) + ":";
  s.append(40 + (i * 7919) % 1024, static_cast<char>('a' + i % 26));
  return s;
}

std::shared_ptr<Dataset> MakeDataset(const std::string& url) {
  auto store = OpenStore(url);
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  std::shared_ptr<ObjectStore> shared = std::move(store).value();
  DatasetWriterOptions wo;
  wo.shard_bytes = 64 * 1024;  // many shards
  auto writer = DatasetWriter::Create(shared, "ds", wo);
  EXPECT_TRUE(writer.ok()) << writer.status().ToString();
  for (uint64_t i = 0; i < kSamples; ++i) {
    std::string p = Payload(i);
    std::string label = std::to_string(i % 10);
    EXPECT_TRUE((*writer)->Add("k" + std::to_string(i), {{"v", p}, {"cls", label}}).ok());
  }
  auto stats = (*writer)->Finish();
  EXPECT_TRUE(stats.ok()) << stats.status().ToString();
  auto ds = Dataset::Open(shared, "ds");
  EXPECT_TRUE(ds.ok()) << ds.status().ToString();
  return std::shared_ptr<Dataset>(std::move(ds).value());
}

std::string Field(const Batch& b, size_t i, std::string_view name) {
  auto f = b.field(i, name);
  if (!f) return "<missing>";
  return std::string(reinterpret_cast<const char*>(f->data()), f->size());
}

// Every sample of the remaining epoch, checking contents on the way.
std::vector<uint64_t> Drain(Loader& loader, size_t* batches = nullptr) {
  std::vector<uint64_t> out;
  size_t n = 0;
  while (true) {
    auto b = loader.Next();
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    if (!b.ok() || *b == nullptr) break;
    ++n;
    const Batch& batch = **b;
    for (size_t i = 0; i < batch.size(); ++i) {
      uint64_t index = batch.index(i);
      EXPECT_EQ(Field(batch, i, "v"), Payload(index));
      EXPECT_EQ(batch.key(i), "k" + std::to_string(index));
      out.push_back(index);
    }
  }
  if (batches) *batches = n;
  return out;
}

std::unique_ptr<Loader> MakeLoader(std::shared_ptr<Dataset> ds, LoaderOptions o) {
  auto l = Loader::Create(std::move(ds), o);
  EXPECT_TRUE(l.ok()) << l.status().ToString();
  return l.ok() ? std::move(l).value() : nullptr;
}

class LoaderTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      dir_ = std::make_unique<testing::ScratchDir>();
      ds_ = MakeDataset("file://" + dir_->path());
    } else {
      ds_ = MakeDataset("mem://loader-test-" + std::to_string(reinterpret_cast<uintptr_t>(this)));
    }
    ASSERT_NE(ds_, nullptr);
    ASSERT_EQ(ds_->size(), kSamples);
    ASSERT_GT(ds_->shards().size(), 4u);
  }
  std::unique_ptr<testing::ScratchDir> dir_;
  std::shared_ptr<Dataset> ds_;
};

TEST_P(LoaderTest, OneEpochFollowsTheOrderExactlyOnce) {
  LoaderOptions o;
  o.batch_size = 64;
  o.order.seed = 42;
  o.epoch = 3;
  auto loader = MakeLoader(ds_, o);
  size_t batches = 0;
  std::vector<uint64_t> got = Drain(*loader, &batches);
  auto order = EpochOrder::Create(kSamples, 3, o.order);
  GRANARY_ASSERT_OK(order);
  ASSERT_EQ(got.size(), kSamples);
  for (uint64_t p = 0; p < kSamples; ++p) ASSERT_EQ(got[p], order->At(p)) << p;
  EXPECT_EQ(batches, (kSamples + 63) / 64);
  EXPECT_EQ(std::set<uint64_t>(got.begin(), got.end()).size(), kSamples);
  // The next epoch is a different order, after StartEpoch.
  GRANARY_ASSERT_OK(loader->StartEpoch(4));
  std::vector<uint64_t> next = Drain(*loader);
  ASSERT_EQ(next.size(), kSamples);
  EXPECT_NE(next, got);
  EXPECT_EQ(loader->stats().samples, 2 * kSamples);
}

TEST_P(LoaderTest, DropLastBatch) {
  LoaderOptions o;
  o.batch_size = 300;
  o.drop_last_batch = true;
  auto loader = MakeLoader(ds_, o);
  EXPECT_EQ(loader->num_batches(), 3u);
  EXPECT_EQ(Drain(*loader).size(), 900u);
}

TEST_P(LoaderTest, RanksTogetherReadEverySampleOnce) {
  for (uint32_t world : {2u, 3u, 7u}) {
    std::map<uint64_t, int> seen;
    for (uint32_t r = 0; r < world; ++r) {
      LoaderOptions o;
      o.batch_size = 50;
      o.order.rank = r;
      o.order.world_size = world;
      o.order.remainder = Remainder::kUneven;
      auto loader = MakeLoader(ds_, o);
      for (uint64_t i : Drain(*loader)) ++seen[i];
    }
    ASSERT_EQ(seen.size(), kSamples) << world;
    for (auto& [i, c] : seen) ASSERT_EQ(c, 1) << i;
  }
}

// Shares (DataLoader workers) produce interleaved batches that, collected round-robin, equal
// one loader's sequence.
TEST_P(LoaderTest, SharesInterleaveToTheSingleLoaderSequence) {
  LoaderOptions o;
  o.batch_size = 32;
  o.order.seed = 7;
  std::vector<uint64_t> single = Drain(*MakeLoader(ds_, o));
  for (uint32_t shares : {2u, 3u}) {
    std::vector<std::unique_ptr<Loader>> workers;
    for (uint32_t s = 0; s < shares; ++s) {
      LoaderOptions w = o;
      w.share = s;
      w.num_shares = shares;
      workers.push_back(MakeLoader(ds_, w));
    }
    std::vector<uint64_t> merged;
    for (size_t turn = 0;; ++turn) {
      auto b = workers[turn % shares]->Next();
      GRANARY_ASSERT_OK(b);
      if (*b == nullptr) break;
      for (size_t i = 0; i < (*b)->size(); ++i) merged.push_back((*b)->index(i));
    }
    EXPECT_EQ(merged, single) << shares;
  }
}

TEST_P(LoaderTest, ResumeContinuesAtTheNextSample) {
  LoaderOptions o;
  o.batch_size = 40;
  o.order.seed = 3;
  o.epoch = 1;
  std::vector<uint64_t> full = Drain(*MakeLoader(ds_, o));
  auto first = MakeLoader(ds_, o);
  std::vector<uint64_t> got;
  for (int k = 0; k < 5; ++k) {
    auto b = first->Next();
    GRANARY_ASSERT_OK(b);
    for (size_t i = 0; i < (*b)->size(); ++i) got.push_back((*b)->index(i));
  }
  LoaderState state = first->state();
  EXPECT_EQ(state.position, 200u);
  EXPECT_EQ(state.epoch, 1u);
  first.reset();
  // A fresh loader (epoch 0 by default, different batch size) restores and continues.
  LoaderOptions o2 = o;
  o2.epoch = 0;
  o2.batch_size = 64;
  auto second = MakeLoader(ds_, o2);
  GRANARY_ASSERT_OK(second->Restore(state));
  std::vector<uint64_t> rest = Drain(*second);
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(got, full);
  // Restoring into two shares continues the same way.
  std::vector<std::unique_ptr<Loader>> workers;
  for (uint32_t s = 0; s < 2; ++s) {
    LoaderOptions w = o;
    w.share = s;
    w.num_shares = 2;
    workers.push_back(MakeLoader(ds_, w));
    GRANARY_ASSERT_OK(workers.back()->Restore(state));
  }
  std::vector<uint64_t> merged(full.begin(), full.begin() + 200);
  for (size_t turn = 0;; ++turn) {
    auto b = workers[turn % 2]->Next();
    GRANARY_ASSERT_OK(b);
    if (*b == nullptr) break;
    for (size_t i = 0; i < (*b)->size(); ++i) merged.push_back((*b)->index(i));
  }
  EXPECT_EQ(merged, full);
}

TEST_P(LoaderTest, RestoreRejectsAnotherSetup) {
  LoaderOptions o;
  o.order.seed = 1;
  auto loader = MakeLoader(ds_, o);
  LoaderState s = loader->state();
  s.seed = 2;
  EXPECT_EQ(loader->Restore(s).code(), StatusCode::kInvalidArgument);
  s = loader->state();
  s.num_samples += 1;
  EXPECT_EQ(loader->Restore(s).code(), StatusCode::kInvalidArgument);
  s = loader->state();
  s.position = kSamples + 1;
  EXPECT_EQ(loader->Restore(s).code(), StatusCode::kOutOfRange);
}

TEST_P(LoaderTest, TinyPrefetchBudgetStillProgresses) {
  LoaderOptions o;
  o.batch_size = 100;
  o.prefetch_bytes = 1;
  o.io_threads = 3;
  EXPECT_EQ(Drain(*MakeLoader(ds_, o)).size(), kSamples);
}

TEST_P(LoaderTest, StartEpochDropsReadAhead) {
  LoaderOptions o;
  o.batch_size = 10;
  auto loader = MakeLoader(ds_, o);
  for (int k = 0; k < 3; ++k) GRANARY_ASSERT_OK(loader->Next());
  GRANARY_ASSERT_OK(loader->StartEpoch(9, 5));
  auto order = EpochOrder::Create(kSamples, 9, o.order);
  GRANARY_ASSERT_OK(order);
  std::vector<uint64_t> got = Drain(*loader);
  ASSERT_EQ(got.size(), kSamples - 5);
  for (size_t p = 0; p < got.size(); ++p) ASSERT_EQ(got[p], order->At(p + 5));
}

// The cache keeps samples needed soonest in the next epoch: with room for about half the data,
// later epochs hit often, and what they return is still the right bytes in the right order.
TEST_P(LoaderTest, NextEpochCacheHitsAndStaysCorrect) {
  LoaderOptions o;
  o.batch_size = 50;
  o.order.seed = 11;
  o.cache_bytes = ds_->total_bytes() / 2 + 200 * kSamples / 2;
  auto loader = MakeLoader(ds_, o);
  EXPECT_EQ(Drain(*loader).size(), kSamples);
  LoaderStats after_first = loader->stats();
  EXPECT_EQ(after_first.cache_hits, 0u);
  EXPECT_GT(after_first.cache_bytes, 0u);
  EXPECT_LE(after_first.cache_bytes, o.cache_bytes);
  for (uint64_t epoch = 1; epoch <= 3; ++epoch) {
    GRANARY_ASSERT_OK(loader->StartEpoch(epoch));
    std::vector<uint64_t> got = Drain(*loader);
    auto order = EpochOrder::Create(kSamples, epoch, o.order);
    GRANARY_ASSERT_OK(order);
    ASSERT_EQ(got.size(), kSamples);
    for (uint64_t p = 0; p < kSamples; ++p) ASSERT_EQ(got[p], order->At(p));
  }
  LoaderStats s = loader->stats();
  double hit_rate = double(s.cache_hits) / double(s.cache_hits + s.cache_misses);
  // About half the bytes fit; Belady's rule hits at least ~40% here (LRU would be far lower
  // under a fresh shuffle: it keeps what was read last, which is needed at random times).
  EXPECT_GT(hit_rate, 0.3) << s.cache_hits << " hits, " << s.cache_misses << " misses";
  EXPECT_LE(s.cache_bytes, o.cache_bytes);
}

INSTANTIATE_TEST_SUITE_P(Stores, LoaderTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Local" : "Memory"; });

}  // namespace
}  // namespace granary
