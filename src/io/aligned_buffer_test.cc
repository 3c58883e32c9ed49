#include <atomic>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/io.h"
#include "gtest/gtest.h"

namespace granary {
namespace {

TEST(AlignedBufferTest, AllocatesAlignedRoundedZeroedMemory) {
  for (size_t size : {size_t{1}, size_t{4096}, size_t{5000}, size_t{300000}, size_t{3} << 20}) {
    for (size_t alignment : {size_t{8}, size_t{512}, size_t{4096}, size_t{2} << 20}) {
      auto buffer = AlignedBuffer::Allocate(size, alignment);
      GRANARY_ASSERT_OK(buffer);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer->data()) % alignment, 0u);
      EXPECT_EQ(buffer->size() % kDirectIoAlignment, 0u);
      EXPECT_GE(buffer->size(), size);
      EXPECT_LT(buffer->size(), size + kDirectIoAlignment);
      for (size_t i = 0; i < buffer->size(); i += 1021) {
        ASSERT_EQ(buffer->data()[i], std::byte{0}) << i;
      }
      std::memset(buffer->data(), 0x5A, buffer->size());  // every byte is writable
    }
  }
}

TEST(AlignedBufferTest, RejectsBadAlignmentAndHandlesZeroSize) {
  auto bad = AlignedBuffer::Allocate(4096, 3000);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  auto empty = AlignedBuffer::Allocate(0);
  GRANARY_ASSERT_OK(empty);
  EXPECT_EQ(empty->size(), 0u);
  EXPECT_EQ(empty->data(), nullptr);
}

TEST(AlignedBufferTest, MovesOwnership) {
  auto a = AlignedBuffer::Allocate(1 << 20);
  GRANARY_ASSERT_OK(a);
  std::byte* p = a->data();
  AlignedBuffer b(std::move(a).value());
  EXPECT_EQ(b.data(), p);
  AlignedBuffer c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(b.size(), 0u);
  c = AlignedBuffer();
  EXPECT_EQ(c.data(), nullptr);
}

TEST(BufferPoolTest, ValidatesOptions) {
  EXPECT_FALSE(BufferPool::Create({.buffer_bytes = 0}).ok());
  EXPECT_FALSE(BufferPool::Create({.max_buffers = 0}).ok());
}

TEST(BufferPoolTest, AllocatesLazilyUpToTheBoundAndReuses) {
  auto pool = BufferPool::Create({.buffer_bytes = 10000, .max_buffers = 2});
  GRANARY_ASSERT_OK(pool);
  EXPECT_EQ((*pool)->buffer_bytes(), 12288u);
  EXPECT_EQ((*pool)->allocated_buffers(), 0u);
  std::set<std::byte*> seen;
  for (int i = 0; i < 50; ++i) {
    auto lease = (*pool)->Acquire();
    GRANARY_ASSERT_OK(lease);
    ASSERT_TRUE(*lease);
    EXPECT_EQ(lease->size(), 12288u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(lease->data()) % kDirectIoAlignment, 0u);
    seen.insert(lease->data());
  }
  EXPECT_EQ(seen.size(), 1u);  // released each time, so the same buffer comes back
  EXPECT_EQ((*pool)->allocated_buffers(), 1u);

  auto a = (*pool)->TryAcquire();
  auto b = (*pool)->TryAcquire();
  auto c = (*pool)->TryAcquire();
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(*a);
  EXPECT_TRUE(*b);
  EXPECT_FALSE(*c);  // exhausted: empty lease, no waiting
  EXPECT_EQ(c->data(), nullptr);
  EXPECT_NE(a->data(), b->data());
  EXPECT_EQ((*pool)->allocated_buffers(), 2u);
  *a = BufferPool::Lease();  // returns the buffer
  auto d = (*pool)->TryAcquire();
  GRANARY_ASSERT_OK(d);
  EXPECT_TRUE(*d);
}

TEST(BufferPoolTest, AcquireWaitsForARelease) {
  auto pool = BufferPool::Create({.buffer_bytes = 4096, .max_buffers = 1});
  GRANARY_ASSERT_OK(pool);
  auto held = (*pool)->Acquire();
  GRANARY_ASSERT_OK(held);
  std::atomic<bool> acquired{false};
  std::thread waiter([&] {
    auto lease = (*pool)->Acquire();
    GRANARY_EXPECT_OK(lease);
    acquired = true;
  });
  // Cannot become true while the only buffer is held, however long we wait.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(acquired.load());
  BufferPool::Lease moved = std::move(held).value();
  moved = BufferPool::Lease();
  waiter.join();
  EXPECT_TRUE(acquired.load());
  EXPECT_EQ((*pool)->allocated_buffers(), 1u);
}

TEST(BufferPoolTest, ThreadsNeverShareABuffer) {
  auto pool = BufferPool::Create({.buffer_bytes = 8192, .max_buffers = 3});
  GRANARY_ASSERT_OK(pool);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        auto lease = (*pool)->Acquire();
        if (!lease.ok() || !*lease) { ++errors; return; }
        std::byte tag{static_cast<unsigned char>(t * 31 + i)};
        std::memset(lease->data(), static_cast<int>(tag), lease->size());
        std::this_thread::yield();
        for (size_t j = 0; j < lease->size(); j += 512) {
          if (lease->data()[j] != tag) ++errors;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_LE((*pool)->allocated_buffers(), 3u);
}

}  // namespace
}  // namespace granary
