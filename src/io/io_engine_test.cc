#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/io.h"
#include "gtest/gtest.h"
#include "io/io_test_util.h"

namespace granary {
namespace {

using testing::PsyncForced;
using testing::RandomBytes;
using testing::ScratchDir;
using testing::WriteRawFile;

constexpr size_t kFileBytes = 8u << 20;

std::unique_ptr<IoEngine> MakeEngine(unsigned queue_depth = 32, bool record_latency = false) {
  IoEngineOptions options;
  options.queue_depth = queue_depth;
  options.record_latency = record_latency;
  Result<std::unique_ptr<IoEngine>> engine = IoEngine::Create(options);
  GRANARY_EXPECT_OK(engine);
  return engine.ok() ? std::move(engine).value() : nullptr;
}

File OpenOrDie(const std::string& path, File::Mode mode, bool direct) {
  Result<File> file = File::Open(path, {.mode = mode, .direct = direct});
  GRANARY_EXPECT_OK(file);
  return file.ok() ? std::move(file).value() : File();
}

TEST(IoEngineTest, KindFollowsEnvironment) {
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  if (PsyncForced()) {
    EXPECT_EQ(engine->name(), "psync");
    EXPECT_EQ(IoEngineKindFromEnv(), IoEngineKind::kPsync);
  } else {
    // This machine runs io_uring, so auto must pick it.
    EXPECT_EQ(engine->name(), "io_uring");
  }
  EXPECT_EQ(engine->queue_depth(), 32u);
  EXPECT_EQ(IoEngine::Default().name(), engine->name());
}

TEST(IoEngineTest, ExplicitKindsWork) {
  auto psync = IoEngine::Create({.kind = IoEngineKind::kPsync});
  GRANARY_ASSERT_OK(psync);
  EXPECT_EQ((*psync)->name(), "psync");
  auto uring = IoEngine::Create({.kind = IoEngineKind::kUring});
  GRANARY_ASSERT_OK(uring);
  EXPECT_EQ((*uring)->name(), "io_uring");
}

TEST(IoEngineTest, ValidatesQueueDepth) {
  auto engine = IoEngine::Create({.queue_depth = 0});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
}

// Random reads compared against pread, for buffered and O_DIRECT files and several depths.
class RandomIoTest : public ::testing::TestWithParam<std::tuple<bool, unsigned>> {};

TEST_P(RandomIoTest, ReadsMatchPread) {
  auto [direct, depth] = GetParam();
  ScratchDir dir;
  std::string path = dir.Join("data");
  std::vector<std::byte> content = RandomBytes(kFileBytes, 1);
  WriteRawFile(path, content);
  auto engine = MakeEngine(depth);
  File file = OpenOrDie(path, File::Mode::kRead, direct);
  ASSERT_TRUE(file.is_open());

  std::mt19937_64 rng(depth * 2 + direct);
  constexpr size_t kRequests = 300;
  auto buffer = AlignedBuffer::Allocate(kRequests * 64 * 1024);
  GRANARY_ASSERT_OK(buffer);
  std::vector<IoRequest> requests(kRequests);
  for (size_t i = 0; i < kRequests; ++i) {
    size_t blocks = 1 + rng() % 16;
    size_t length = direct ? blocks * 4096 : 1 + rng() % (64 * 1024);
    uint64_t offset = direct ? (rng() % (kFileBytes / 4096 - 16)) * 4096
                             : rng() % (kFileBytes - length);
    requests[i] = {.opcode = IoOpcode::kRead, .fd = file.fd(), .offset = offset,
                   .buffer = buffer->data() + i * 64 * 1024, .length = length};
  }
  GRANARY_ASSERT_OK(engine->Run(requests));
  std::vector<std::byte> expected(64 * 1024);
  int plain = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  for (const IoRequest& r : requests) {
    ASSERT_EQ(r.result, static_cast<int64_t>(r.length)) << "offset " << r.offset;
    ASSERT_EQ(::pread(plain, expected.data(), r.length, r.offset), (ssize_t)r.length);
    ASSERT_EQ(std::memcmp(r.buffer, expected.data(), r.length), 0) << "offset " << r.offset;
  }
  ::close(plain);
}

TEST_P(RandomIoTest, WritesLandWherePreadFindsThem) {
  auto [direct, depth] = GetParam();
  ScratchDir dir;
  std::string path = dir.Join("data");
  constexpr size_t kSlotBytes = 64 * 1024;
  constexpr size_t kSlots = 128;  // each request writes within its own slot: no overlaps
  std::vector<std::byte> model(kSlots * kSlotBytes);
  WriteRawFile(path, model);
  auto engine = MakeEngine(depth);
  File file = OpenOrDie(path, File::Mode::kReadWrite, direct);
  auto buffer = AlignedBuffer::Allocate(kSlots * kSlotBytes);
  GRANARY_ASSERT_OK(buffer);
  std::vector<std::byte> data = RandomBytes(kSlots * kSlotBytes, depth);
  std::memcpy(buffer->data(), data.data(), data.size());

  std::mt19937_64 rng(depth + 7 * direct);
  std::vector<IoRequest> requests;
  for (size_t slot = 0; slot < kSlots; ++slot) {
    size_t length = direct ? (1 + rng() % 16) * 4096 : 1 + rng() % kSlotBytes;
    size_t start = direct ? 0 : rng() % (kSlotBytes - length + 1);
    uint64_t offset = slot * kSlotBytes + start;
    requests.push_back({.opcode = IoOpcode::kWrite, .fd = file.fd(), .offset = offset,
                        .buffer = buffer->data() + offset, .length = length});
    std::memcpy(model.data() + offset, data.data() + offset, length);
  }
  std::shuffle(requests.begin(), requests.end(), rng);
  GRANARY_ASSERT_OK(engine->Run(requests));
  for (const IoRequest& r : requests) ASSERT_EQ(r.result, static_cast<int64_t>(r.length));
  EXPECT_EQ(testing::ReadRawFile(path), model);
}

INSTANTIATE_TEST_SUITE_P(BufferedAndDirect, RandomIoTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1u, 32u, 64u)));

TEST(IoEngineTest, ReadsStopAtEndOfFile) {
  for (bool direct : {false, true}) {
    ScratchDir dir;
    std::string path = dir.Join("short");
    std::vector<std::byte> content = RandomBytes(10000, 3);
    WriteRawFile(path, content);
    auto engine = MakeEngine();
    File file = OpenOrDie(path, File::Mode::kRead, direct);
    auto buffer = AlignedBuffer::Allocate(5 * 4096);
    GRANARY_ASSERT_OK(buffer);
    std::byte* b = buffer->data();
    std::vector<IoRequest> requests = {
        {.fd = file.fd(), .offset = 0, .buffer = b, .length = 12288},  // crosses EOF
        {.fd = file.fd(), .offset = 8192, .buffer = b + 12288, .length = 4096},
        {.fd = file.fd(), .offset = 12288, .buffer = b + 16384, .length = 4096},  // past EOF
    };
    GRANARY_ASSERT_OK(engine->Run(requests));
    EXPECT_EQ(requests[0].result, 10000) << "direct=" << direct;
    EXPECT_EQ(requests[1].result, 10000 - 8192) << "direct=" << direct;
    EXPECT_EQ(requests[2].result, 0) << "direct=" << direct;
    EXPECT_EQ(std::memcmp(b, content.data(), 10000), 0);
    EXPECT_EQ(std::memcmp(b + 12288, content.data() + 8192, 10000 - 8192), 0);
  }
}

TEST(IoEngineTest, ShortReadsBeforeEndOfFileAreContinued) {
  // seq_file-backed /proc files return about one page per read: genuine short transfers.
  int plain = ::open("/proc/kallsyms", O_RDONLY | O_CLOEXEC);
  if (plain < 0) GTEST_SKIP() << "no /proc/kallsyms";
  constexpr size_t kWant = 64 * 1024;
  std::vector<std::byte> expected(kWant);
  size_t have = 0;
  while (have < kWant) {
    ssize_t n = ::read(plain, expected.data() + have, kWant - have);
    if (n <= 0) break;
    have += static_cast<size_t>(n);
  }
  ::close(plain);
  if (have < kWant) GTEST_SKIP() << "/proc/kallsyms is shorter than 64 KiB";

  File file = OpenOrDie("/proc/kallsyms", File::Mode::kRead, false);
  auto engine = MakeEngine(4);
  std::vector<std::byte> out(kWant);
  IoRequest r{.fd = file.fd(), .offset = 0, .buffer = out.data(), .length = kWant};
  GRANARY_ASSERT_OK(engine->Run({&r, 1}));
  EXPECT_EQ(r.result, static_cast<int64_t>(kWant));
  EXPECT_EQ(out, expected);
}

TEST(IoEngineTest, BadDescriptorFailsOnlyItsRequest) {
  ScratchDir dir;
  std::string path = dir.Join("f");
  WriteRawFile(path, RandomBytes(4096, 4));
  auto engine = MakeEngine();
  File file = OpenOrDie(path, File::Mode::kRead, false);
  std::vector<std::byte> a(4096), b(4096), c(4096);
  int closed_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ::close(closed_fd);
  std::vector<IoRequest> requests = {
      {.fd = -1, .buffer = a.data(), .length = 4096},
      {.fd = file.fd(), .buffer = b.data(), .length = 4096},
      {.opcode = IoOpcode::kWrite, .fd = file.fd(), .buffer = c.data(), .length = 4096},
      {.fd = closed_fd, .buffer = c.data(), .length = 4096},
  };
  GRANARY_ASSERT_OK(engine->Run(requests));
  EXPECT_EQ(requests[0].result, -EBADF);
  EXPECT_EQ(requests[1].result, 4096);
  EXPECT_EQ(requests[2].result, -EBADF);  // written through a read-only descriptor
  EXPECT_EQ(requests[3].result, -EBADF);
}

TEST(IoEngineTest, EmptyBatchAndZeroLength) {
  auto engine = MakeEngine();
  GRANARY_EXPECT_OK(engine->Run({}));
  IoRequest r{.fd = -1, .buffer = nullptr, .length = 0, .result = 77};
  GRANARY_ASSERT_OK(engine->Run({&r, 1}));
  EXPECT_EQ(r.result, 0);
}

TEST(IoEngineTest, ManyMoreRequestsThanQueueDepth) {
  ScratchDir dir;
  std::string path = dir.Join("f");
  std::vector<std::byte> content = RandomBytes(1 << 20, 5);
  WriteRawFile(path, content);
  for (unsigned depth : {1u, 3u, 64u}) {
    auto engine = MakeEngine(depth);
    File file = OpenOrDie(path, File::Mode::kRead, false);
    std::vector<std::byte> out(content.size());
    std::vector<IoRequest> requests;
    for (size_t off = 0; off < content.size(); off += 1000) {
      size_t len = std::min<size_t>(1000, content.size() - off);
      requests.push_back({.fd = file.fd(), .offset = off, .buffer = out.data() + off,
                          .length = len});
    }
    GRANARY_ASSERT_OK(engine->Run(requests));
    for (const IoRequest& r : requests) ASSERT_EQ(r.result, (int64_t)r.length);
    EXPECT_EQ(out, content) << "depth " << depth;
  }
}

TEST(IoEngineTest, ConcurrentRunsFromFourThreads) {
  ScratchDir dir;
  std::string path = dir.Join("f");
  std::vector<std::byte> content = RandomBytes(4 << 20, 6);
  WriteRawFile(path, content);
  auto engine = MakeEngine(8);
  File file = OpenOrDie(path, File::Mode::kRead, true);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      auto buffer = AlignedBuffer::Allocate(16 * 16384);
      if (!buffer.ok()) { ++mismatches; return; }
      for (int round = 0; round < 40; ++round) {
        std::vector<IoRequest> requests(16);
        for (size_t i = 0; i < requests.size(); ++i) {
          uint64_t offset = (rng() % (content.size() / 4096 - 4)) * 4096;
          requests[i] = {.fd = file.fd(), .offset = offset,
                         .buffer = buffer->data() + i * 16384, .length = 16384};
        }
        if (!engine->Run(requests).ok()) { ++mismatches; return; }
        for (const IoRequest& r : requests) {
          if (r.result != 16384 ||
              std::memcmp(r.buffer, content.data() + r.offset, r.length) != 0) {
            ++mismatches;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// nowait reads copy only what the page cache holds: a dropped file answers -EAGAIN (or what
// readahead brought in by then, bytes intact), a resident one reads fully, and nothing is ever
// resubmitted into a wait.
TEST(IoEngineTest, NowaitReadsOnlyResidentData) {
  ScratchDir dir;
  const std::string path = dir.path() + "/nowait.dat";
  std::vector<std::byte> data = RandomBytes(1u << 20, 7);
  WriteRawFile(path, data);
  auto engine = MakeEngine();
  ASSERT_NE(engine, nullptr);
  File file = OpenOrDie(path, File::Mode::kRead, /*direct=*/false);
  ASSERT_EQ(::fdatasync(file.fd()), 0);
  ASSERT_EQ(::posix_fadvise(file.fd(), 0, 0, POSIX_FADV_DONTNEED), 0);

  std::vector<std::byte> out(64 * 1024);
  IoRequest cold{.fd = file.fd(), .offset = 512 * 1024, .buffer = out.data(),
                 .length = out.size(), .nowait = true};
  GRANARY_ASSERT_OK(engine->Run(std::span(&cold, 1)));
  // Evicted pages: usually EAGAIN. But a nowait read still starts readahead (IOCB_NOWAIT is not
  // IOCB_NOIO), and on a fast device that I/O can finish before the kernel looks again, so a
  // short or even whole read is legal too; what must hold is that the bytes are right.
  EXPECT_TRUE(cold.result == -EAGAIN ||
              (cold.result >= 0 && static_cast<size_t>(cold.result) <= out.size()))
      << cold.result;
  if (cold.result > 0) {
    EXPECT_EQ(std::memcmp(out.data(), data.data() + 512 * 1024, cold.result), 0);
  }

  // Make the first half resident with an ordinary read, then ask again.
  std::vector<std::byte> warm_up(data.size());
  ASSERT_EQ(::pread(file.fd(), warm_up.data(), warm_up.size(), 0),
            static_cast<ssize_t>(warm_up.size()));
  IoRequest warm{.fd = file.fd(), .offset = 512 * 1024, .buffer = out.data(),
                 .length = out.size(), .nowait = true};
  GRANARY_ASSERT_OK(engine->Run(std::span(&warm, 1)));
  ASSERT_EQ(warm.result, static_cast<int64_t>(out.size()));
  EXPECT_EQ(0, std::memcmp(out.data(), data.data() + 512 * 1024, out.size()));
}

TEST(IoEngineTest, RecordsLatencyOnlyWhenAsked) {
  ScratchDir dir;
  std::string path = dir.Join("f");
  WriteRawFile(path, RandomBytes(1 << 20, 7));
  for (bool record : {false, true}) {
    auto engine = MakeEngine(4, record);
    File file = OpenOrDie(path, File::Mode::kRead, true);
    auto buffer = AlignedBuffer::Allocate(32 * 4096);
    GRANARY_ASSERT_OK(buffer);
    std::vector<IoRequest> requests(32);
    for (size_t i = 0; i < requests.size(); ++i) {
      requests[i] = {.fd = file.fd(), .offset = i * 4096, .buffer = buffer->data() + i * 4096,
                     .length = 4096, .latency_ns = 12345};
    }
    GRANARY_ASSERT_OK(engine->Run(requests));
    for (const IoRequest& r : requests) {
      EXPECT_EQ(r.result, 4096);
      if (record) {
        EXPECT_GT(r.latency_ns, 0u);
        EXPECT_NE(r.latency_ns, 12345u);
      } else {
        EXPECT_EQ(r.latency_ns, 0u);
      }
    }
  }
}

}  // namespace
}  // namespace granary
