#include "core/thread_pool.h"

#include <atomic>
#include <vector>

#include <gtest/gtest.h>

namespace granary {
namespace {

TEST(ThreadPoolTest, RunsEveryTaskAndReturnsResults) {
  ThreadPool pool(4, "test");
  std::vector<std::future<int>> futures;
  for (int i = 0; i < 1000; ++i) futures.push_back(pool.Submit([i] { return i * i; }));
  long sum = 0;
  for (auto& f : futures) sum += f.get();
  long expect = 0;
  for (long i = 0; i < 1000; ++i) expect += i * i;
  EXPECT_EQ(sum, expect);
}

TEST(ThreadPoolTest, DestructorDrainsQueue) {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 500; ++i) pool.Enqueue([&] { ran.fetch_add(1); });
  }
  EXPECT_EQ(ran.load(), 500);
}

TEST(ThreadPoolTest, TasksMaySubmitTasks) {
  ThreadPool pool(2);
  std::atomic<int> ran{0};
  auto outer = pool.Submit([&] {
    ran++;
    return pool.Submit([&] { ran++; });
  });
  outer.get().get();
  EXPECT_EQ(ran.load(), 2);
}

TEST(ThreadPoolTest, ZeroThreadsMeansOne) {
  ThreadPool pool(0);
  EXPECT_EQ(pool.num_threads(), 1u);
  EXPECT_EQ(pool.Submit([] { return 5; }).get(), 5);
}

}  // namespace
}  // namespace granary
