// IoEngine::ReadAt / WriteAt on buffered and O_DIRECT files, over sweeps of unaligned offsets,
// lengths and memory addresses.
#include <cstring>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/io.h"
#include "gtest/gtest.h"
#include "io/io_test_util.h"

namespace granary {
namespace {

using testing::RandomBytes;
using testing::ReadRawFile;
using testing::ScratchDir;
using testing::WriteRawFile;

constexpr size_t kContentBytes = 64 * 1024 + 1000;  // ends mid-block

std::unique_ptr<IoEngine> MakeEngine() {
  auto engine = IoEngine::Create({.queue_depth = 8});
  GRANARY_EXPECT_OK(engine);
  return std::move(engine).value();
}

File OpenOrDie(const std::string& path, File::Mode mode, bool direct) {
  Result<File> file = File::Open(path, {.mode = mode, .direct = direct});
  GRANARY_EXPECT_OK(file);
  return std::move(file).value();
}

class ReadWriteAtTest : public ::testing::TestWithParam<bool> {};

TEST_P(ReadWriteAtTest, ReadAtAnyRangeIntoAnyAddress) {
  const bool direct = GetParam();
  ScratchDir dir;
  std::string path = dir.Join("content");
  std::vector<std::byte> content = RandomBytes(kContentBytes, 11);
  WriteRawFile(path, content);
  auto engine = MakeEngine();
  File file = OpenOrDie(path, File::Mode::kRead, direct);
  auto backing = AlignedBuffer::Allocate(4 * 4096 + 32 * 1024);
  GRANARY_ASSERT_OK(backing);

  const uint64_t offsets[] = {0, 1, 511, 4095, 4096, 4097, 8191, 12000, 61440,
                              kContentBytes - 10, kContentBytes, kContentBytes + 5000};
  const size_t lengths[] = {1, 100, 4095, 4096, 4097, 8192, 9000, 20000};
  const size_t chunks[] = {4096, 8192, 4u << 20};
  for (uint64_t offset : offsets) {
    for (size_t length : lengths) {
      for (size_t shift : {size_t{0}, size_t{1}, size_t{512}, size_t(offset % 4096)}) {
        for (size_t chunk : chunks) {
          std::byte* dest = backing->data() + shift;
          std::memset(backing->data(), 0xEE, backing->size());
          Result<size_t> n = engine->ReadAt(file, offset, {dest, length}, chunk);
          GRANARY_ASSERT_OK(n);
          size_t expected = offset >= kContentBytes
                                ? 0
                                : std::min<size_t>(length, kContentBytes - offset);
          SCOPED_TRACE(::testing::Message() << "offset " << offset << " length " << length
                                            << " shift " << shift << " chunk " << chunk);
          ASSERT_EQ(*n, expected);
          ASSERT_EQ(std::memcmp(dest, content.data() + offset, expected), 0);
          // Bytes before the destination are never touched.
          for (size_t i = 0; i < shift; ++i) ASSERT_EQ(backing->data()[i], std::byte{0xEE});
        }
      }
    }
  }
}

TEST_P(ReadWriteAtTest, WriteAtOverEmptyAndExistingFiles) {
  const bool direct = GetParam();
  ScratchDir dir;
  auto engine = MakeEngine();
  auto backing = AlignedBuffer::Allocate(32 * 1024);
  GRANARY_ASSERT_OK(backing);
  std::vector<std::byte> data = RandomBytes(20000, 12);
  std::vector<std::byte> old = RandomBytes(kContentBytes, 13);

  const uint64_t offsets[] = {0, 4096, 8192, 65536, 3, 5000};
  const size_t lengths[] = {1, 100, 4095, 4096, 4097, 10000, 20000};
  int case_id = 0;
  for (bool existing : {false, true}) {
    for (uint64_t offset : offsets) {
      for (size_t length : lengths) {
        for (size_t shift : {size_t{0}, size_t{1}}) {
          std::string path = dir.Join("w" + std::to_string(case_id++));
          if (existing) WriteRawFile(path, old);
          std::vector<std::byte> model = existing ? old : std::vector<std::byte>();
          File file = OpenOrDie(path, File::Mode::kCreate, direct);
          std::byte* src = backing->data() + shift;
          std::memcpy(src, data.data(), length);
          Status s = engine->WriteAt(file, offset, {src, length}, 8192);
          SCOPED_TRACE(::testing::Message() << "existing " << existing << " offset " << offset
                                            << " length " << length << " shift " << shift);
          if (direct && offset % 4096 != 0) {
            EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
            EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
            continue;
          }
          GRANARY_ASSERT_OK(s);
          if (model.size() < offset + length) model.resize(offset + length);
          std::memcpy(model.data() + offset, data.data(), length);
          GRANARY_ASSERT_OK(file.Close());
          ASSERT_EQ(ReadRawFile(path), model);
        }
      }
    }
  }
}

TEST_P(ReadWriteAtTest, LargeUnalignedTransfersUseSeveralBounceRounds) {
  const bool direct = GetParam();
  ScratchDir dir;
  std::string path = dir.Join("big");
  const size_t size = (20u << 20) + 777;  // more than one 16 MiB bounce round
  std::vector<std::byte> content = RandomBytes(size, 14);
  auto engine = MakeEngine();
  auto backing = AlignedBuffer::Allocate(size + 4096);
  GRANARY_ASSERT_OK(backing);
  std::byte* unaligned = backing->data() + 3;
  std::memcpy(unaligned, content.data(), size);
  {
    File file = OpenOrDie(path, File::Mode::kTruncate, direct);
    GRANARY_ASSERT_OK(engine->WriteAt(file, 0, {unaligned, size}));
  }
  ASSERT_EQ(ReadRawFile(path), content);
  std::memset(backing->data(), 0, backing->size());
  File file = OpenOrDie(path, File::Mode::kRead, direct);
  Result<size_t> n = engine->ReadAt(file, 0, {unaligned, size + 100});
  GRANARY_ASSERT_OK(n);
  EXPECT_EQ(*n, size);
  EXPECT_EQ(std::memcmp(unaligned, content.data(), size), 0);
}

TEST_P(ReadWriteAtTest, ErrorsNameTheFile) {
  const bool direct = GetParam();
  ScratchDir dir;
  std::string path = dir.Join("ro");
  WriteRawFile(path, RandomBytes(8192, 15));
  auto engine = MakeEngine();
  File file = OpenOrDie(path, File::Mode::kRead, direct);
  auto buffer = AlignedBuffer::Allocate(8192);
  GRANARY_ASSERT_OK(buffer);
  Status s = engine->WriteAt(file, 4096, {buffer->data(), 4096});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("4096"), std::string::npos) << s.message();
  EXPECT_EQ(s.sys_errno(), EBADF);

  File closed(-1, path);
  Result<size_t> r = engine->ReadAt(closed, 0, buffer->span());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
}

INSTANTIATE_TEST_SUITE_P(BufferedAndDirect, ReadWriteAtTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Direct" : "Buffered"; });

}  // namespace
}  // namespace granary
