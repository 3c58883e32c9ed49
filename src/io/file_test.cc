#include <fcntl.h>
#include <unistd.h>

#include "core/testing/test_util.h"
#include "granary/io.h"
#include "gtest/gtest.h"
#include "io/io_test_util.h"

namespace granary {
namespace {

using testing::RandomBytes;
using testing::ScratchDir;
using testing::WriteRawFile;

TEST(FileTest, OpenModes) {
  ScratchDir dir;
  std::string path = dir.Join("f");
  auto missing = File::Open(path, {.mode = File::Mode::kRead});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path), std::string::npos);
  EXPECT_EQ(File::Open(path, {.mode = File::Mode::kReadWrite}).status().code(),
            StatusCode::kNotFound);

  auto created = File::Open(path, {.mode = File::Mode::kCreateNew});
  GRANARY_ASSERT_OK(created);
  EXPECT_EQ(created->path(), path);
  ASSERT_EQ(::pwrite(created->fd(), "hello", 5, 0), 5);
  auto again = File::Open(path, {.mode = File::Mode::kCreateNew});
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(again.status().message().find(path), std::string::npos);

  auto kept = File::Open(path, {.mode = File::Mode::kCreate});
  GRANARY_ASSERT_OK(kept);
  EXPECT_EQ(*kept->Size(), 5u);
  auto truncated = File::Open(path, {.mode = File::Mode::kTruncate});
  GRANARY_ASSERT_OK(truncated);
  EXPECT_EQ(*truncated->Size(), 0u);
}

TEST(FileTest, AlwaysCloseOnExecAndDirectWhenAsked) {
  ScratchDir dir;
  std::string path = dir.Join("f");
  for (bool direct : {false, true}) {
    auto file = File::Open(path, {.mode = File::Mode::kCreate, .direct = direct});
    GRANARY_ASSERT_OK(file);
    EXPECT_TRUE(::fcntl(file->fd(), F_GETFD) & FD_CLOEXEC);
    EXPECT_EQ((::fcntl(file->fd(), F_GETFL) & O_DIRECT) != 0, direct);
  }
}

TEST(FileTest, SizeTruncateSyncClose) {
  ScratchDir dir;
  std::string path = dir.Join("f");
  WriteRawFile(path, RandomBytes(10000, 1));
  auto file = File::Open(path, {.mode = File::Mode::kReadWrite});
  GRANARY_ASSERT_OK(file);
  EXPECT_EQ(*file->Size(), 10000u);
  GRANARY_ASSERT_OK(file->Truncate(123));
  EXPECT_EQ(*file->Size(), 123u);
  GRANARY_EXPECT_OK(file->Sync());
  GRANARY_EXPECT_OK(file->DataSync());
  File moved = std::move(file).value();
  EXPECT_TRUE(moved.is_open());
  GRANARY_EXPECT_OK(moved.Close());
  EXPECT_FALSE(moved.is_open());
  GRANARY_EXPECT_OK(moved.Close());  // closing twice is harmless
  Status s = moved.Sync();
  EXPECT_EQ(s.sys_errno(), EBADF);
  EXPECT_NE(s.message().find(path), std::string::npos);
}

TEST(FileTest, SyncDirectory) {
  ScratchDir dir;
  GRANARY_EXPECT_OK(SyncDirectory(dir.path()));
  Status s = SyncDirectory(dir.Join("missing"));
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("missing"), std::string::npos);
}

}  // namespace
}  // namespace granary
