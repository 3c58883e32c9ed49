// StagingRing: FIFO allocation, wrap-around, blocking while full, out-of-order frees, Cancel.
#include "checkpoint/staging_ring.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "core/testing/test_util.h"

namespace granary::checkpoint {
namespace {

constexpr uint64_t kPage = 4096;

std::unique_ptr<StagingRing> MakeRing(uint64_t capacity) {
  Result<std::unique_ptr<StagingRing>> ring = StagingRing::Create(capacity);
  EXPECT_TRUE(ring.ok()) << ring.status().ToString();
  return ring.ok() ? std::move(ring).value() : nullptr;
}

// Offset of a region within the ring whose first region (allocated on an empty ring) is `base`.
uint64_t OffsetOf(const StagingRing::Region& r, const std::byte* base) {
  return static_cast<uint64_t>(r.bytes.data() - base);
}

TEST(StagingRingTest, RoundsCapacityUpToPagesAndRejectsBadSizes) {
  auto ring = MakeRing(10000);
  ASSERT_NE(ring, nullptr);
  EXPECT_EQ(ring->capacity_bytes(), 3 * kPage);
  EXPECT_EQ(StagingRing::Create(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ring->Allocate(0).status().code(), StatusCode::kInvalidArgument);
  Result<StagingRing::Region> too_big = ring->Allocate(3 * kPage + 1);
  EXPECT_EQ(too_big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(ring->Idle());
  // Exactly the capacity fits.
  GRANARY_ASSERT_OK_AND_ASSIGN(auto whole, ring->Allocate(3 * kPage));
  EXPECT_EQ(whole.bytes.size(), 3 * kPage);
  ring->Free(whole.id);
  EXPECT_TRUE(ring->Idle());
}

TEST(StagingRingTest, AllocatesInOrderWithAlignedStarts) {
  auto ring = MakeRing(64 * kPage);
  ASSERT_NE(ring, nullptr);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto a, ring->Allocate(100));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ring->Allocate(kPage + 1));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto c, ring->Allocate(kPage));
  const std::byte* base = a.bytes.data();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(base) % kPage, 0u);
  EXPECT_EQ(a.bytes.size(), 100u);
  EXPECT_EQ(b.bytes.size(), kPage + 1);
  EXPECT_EQ(OffsetOf(b, base), kPage);       // a padded to a page
  EXPECT_EQ(OffsetOf(c, base), 3 * kPage);   // b padded to two pages
  EXPECT_LT(a.id, b.id);
  EXPECT_LT(b.id, c.id);
  EXPECT_FALSE(ring->Idle());
  ring->Free(a.id);
  ring->Free(b.id);
  ring->Free(c.id);
  EXPECT_TRUE(ring->Idle());
}

TEST(StagingRingTest, WrapsAroundWhenTheEndIsTooShort) {
  auto ring = MakeRing(4 * kPage);
  ASSERT_NE(ring, nullptr);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto a, ring->Allocate(2 * kPage));  // [0, 2)
  const std::byte* base = a.bytes.data();
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ring->Allocate(kPage));      // [2, 3)
  EXPECT_EQ(OffsetOf(b, base), 2 * kPage);
  ring->Free(a.id);
  // One page left at the end, two free at the start: a two-page region wraps to offset 0.
  GRANARY_ASSERT_OK_AND_ASSIGN(auto c, ring->Allocate(2 * kPage));
  EXPECT_EQ(OffsetOf(c, base), 0u);
  // Wrapped: c ends where b starts, so the ring is full until b is freed; then c is the oldest
  // region and [2, 4) is free again.
  std::atomic<bool> b_freed{false};
  Result<StagingRing::Region> d = InternalError("not run");
  std::thread t([&] {
    d = ring->Allocate(kPage);
    EXPECT_TRUE(b_freed.load()) << "allocated over a live region";
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  b_freed = true;
  ring->Free(b.id);
  t.join();
  GRANARY_ASSERT_OK(d);
  EXPECT_EQ(OffsetOf(*d, base), 2 * kPage);
  ring->Free(c.id);
  ring->Free(d->id);
  EXPECT_TRUE(ring->Idle());
}

TEST(StagingRingTest, AllocateBlocksWhileFullAndResumesOnFreeFromAnotherThread) {
  auto ring = MakeRing(4 * kPage);
  ASSERT_NE(ring, nullptr);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto a, ring->Allocate(2 * kPage));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ring->Allocate(2 * kPage));
  std::atomic<bool> freed{false};
  std::atomic<bool> allocated{false};
  Result<StagingRing::Region> c = InternalError("not run");
  std::thread t([&] {
    c = ring->Allocate(kPage);
    // The ring was full until `a` was freed: an allocation before that is a bug.
    EXPECT_TRUE(freed.load());
    allocated = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(allocated.load()) << "Allocate returned while the ring was full";
  freed = true;
  ring->Free(a.id);
  t.join();
  GRANARY_ASSERT_OK(c);
  EXPECT_EQ(c->bytes.data(), a.bytes.data());  // reuses the freed oldest region
  ring->Free(b.id);
  ring->Free(c->id);
  EXPECT_TRUE(ring->Idle());
}

TEST(StagingRingTest, OutOfOrderFreesReclaimOnlyFromTheOldest) {
  auto ring = MakeRing(4 * kPage);
  ASSERT_NE(ring, nullptr);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto a, ring->Allocate(kPage));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ring->Allocate(kPage));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto c, ring->Allocate(2 * kPage));
  const std::byte* base = a.bytes.data();
  // Freeing b and c while a (the oldest) is live reclaims nothing: the ring stays full.
  ring->Free(c.id);
  ring->Free(b.id);
  ring->Free(b.id);  // a second free of the same id is ignored
  EXPECT_FALSE(ring->Idle());
  std::atomic<bool> done{false};
  Result<StagingRing::Region> d = InternalError("not run");
  std::thread t([&] {
    d = ring->Allocate(3 * kPage);
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_FALSE(done.load()) << "space behind a live oldest region was reused";
  ring->Free(a.id);  // now a, b and c all go at once
  t.join();
  GRANARY_ASSERT_OK(d);
  EXPECT_EQ(OffsetOf(*d, base), 0u);  // the emptied ring starts over
  ring->Free(d->id);
  EXPECT_TRUE(ring->Idle());
}

TEST(StagingRingTest, CancelWakesABlockedAllocateUntilReset) {
  auto ring = MakeRing(2 * kPage);
  ASSERT_NE(ring, nullptr);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto a, ring->Allocate(2 * kPage));
  Result<StagingRing::Region> blocked = InternalError("not run");
  std::thread t([&] { blocked = ring->Allocate(kPage); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ring->Cancel();
  t.join();
  EXPECT_EQ(blocked.status().code(), StatusCode::kCancelled) << blocked.status().ToString();
  // Future allocations fail too, even ones that would fit, until Reset.
  ring->Free(a.id);
  EXPECT_EQ(ring->Allocate(kPage).status().code(), StatusCode::kCancelled);
  ring->Reset();
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ring->Allocate(kPage));
  ring->Free(b.id);
  EXPECT_TRUE(ring->Idle());
}

TEST(StagingRingTest, WaitIdleReturnsOnceEveryRegionIsFreed) {
  auto ring = MakeRing(8 * kPage);
  ASSERT_NE(ring, nullptr);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 4; ++i) {
    GRANARY_ASSERT_OK_AND_ASSIGN(auto r, ring->Allocate(kPage));
    ids.push_back(r.id);
  }
  std::atomic<int> freed{0};
  std::thread t([&] {
    for (size_t i = ids.size(); i-- > 0;) {  // newest first
      freed++;
      ring->Free(ids[i]);
    }
  });
  ring->WaitIdle();
  EXPECT_EQ(freed.load(), 4);
  EXPECT_TRUE(ring->Idle());
  t.join();
}

// A producer allocates regions of random sizes and fills each with its id; a consumer frees them
// in random order after checking the bytes. Overlapping live regions would corrupt the bytes.
TEST(StagingRingTest, LiveRegionsNeverOverlapUnderConcurrentRandomFrees) {
  auto ring = MakeRing(64 * kPage);
  ASSERT_NE(ring, nullptr);
  constexpr int kRegions = 3000;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<StagingRing::Region> handed;
  bool producer_done = false;
  std::thread producer([&] {
    std::mt19937 rng(7);
    for (int i = 0; i < kRegions; ++i) {
      const uint64_t n = 1 + rng() % (20 * kPage);
      Result<StagingRing::Region> r = ring->Allocate(n);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      std::memset(r->bytes.data(), static_cast<int>(r->id & 0xff), r->bytes.size());
      std::lock_guard<std::mutex> lock(mu);
      handed.push_back(*r);
      cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    producer_done = true;
    cv.notify_all();
  });
  std::mt19937 rng(11);
  std::vector<StagingRing::Region> live;
  int freed = 0;
  int corrupted = 0;
  while (freed < kRegions) {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (live.empty()) cv.wait(lock, [&] { return !handed.empty() || producer_done; });
      while (!handed.empty()) {
        live.push_back(handed.front());
        handed.pop_front();
      }
      if (live.empty() && producer_done) break;
    }
    if (live.empty()) continue;
    const size_t pick = rng() % live.size();
    const StagingRing::Region r = live[pick];
    live.erase(live.begin() + pick);
    const std::byte expect = static_cast<std::byte>(r.id & 0xff);
    for (std::byte b : r.bytes) {
      if (b != expect) {
        corrupted++;
        break;
      }
    }
    ring->Free(r.id);
    freed++;
  }
  producer.join();
  EXPECT_EQ(freed, kRegions);
  EXPECT_EQ(corrupted, 0);
  EXPECT_TRUE(ring->Idle());
}

}  // namespace
}  // namespace granary::checkpoint
