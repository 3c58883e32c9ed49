#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "gtest/gtest.h"
#include "io/file_system.h"
#include "io/io_test_util.h"

namespace granary {
namespace {

using testing::Exists;
using testing::RandomBytes;
using testing::ReadRawFile;
using testing::TempDir;
using testing::WriteRawFile;

class PosixFileSystemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = IoEngine::Create();
    ASSERT_TRUE(engine.ok());
    engine_ = std::move(engine).value();
    fs_ = NewPosixFileSystem(engine_.get());
  }
  std::unique_ptr<IoEngine> engine_;
  std::unique_ptr<FileSystem> fs_;
  TempDir dir_;
};

TEST_F(PosixFileSystemTest, WritesAndReadsThroughTheEngine) {
  std::string path = dir_.Join("f");
  std::vector<std::byte> data = RandomBytes(100000, 1);
  for (bool direct : {false, true}) {
    auto file = fs_->Open(path, {.mode = File::Mode::kTruncate, .direct = direct});
    ASSERT_TRUE(file.ok());
    ASSERT_TRUE(fs_->WriteAt(*file, 0, data).ok());
    ASSERT_TRUE(fs_->Sync(*file).ok());
    std::vector<std::byte> out(data.size() + 10);
    auto n = fs_->ReadAt(*file, 0, out);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, data.size());
    EXPECT_TRUE(std::equal(data.begin(), data.end(), out.begin()));

    std::vector<IoRequest> requests = {
        {.fd = file->fd(), .offset = 0, .buffer = out.data(), .length = 4096},
        {.fd = file->fd(), .offset = 98304, .buffer = out.data() + 4096, .length = 4096}};
    if (direct) {
      auto aligned = AlignedBuffer::Allocate(8192);
      ASSERT_TRUE(aligned.ok());
      requests[0].buffer = aligned->data();
      requests[1].buffer = aligned->data() + 4096;
      ASSERT_TRUE(fs_->ReadMany(requests).ok());
      EXPECT_EQ(std::memcmp(aligned->data(), data.data(), 4096), 0);
    } else {
      ASSERT_TRUE(fs_->ReadMany(requests).ok());
    }
    EXPECT_EQ(requests[0].result, 4096);
    EXPECT_EQ(requests[1].result, 100000 - 98304);
    ASSERT_TRUE(fs_->Truncate(*file, 10).ok());
    EXPECT_EQ(*file->Size(), 10u);
  }
  EXPECT_TRUE(fs_->SyncDir(dir_.path()).ok());
}

TEST_F(PosixFileSystemTest, RenameReplacesAndRenameNoReplaceRefuses) {
  std::string a = dir_.Join("a"), b = dir_.Join("b"), c = dir_.Join("c");
  WriteRawFile(a, RandomBytes(10, 1));
  WriteRawFile(b, RandomBytes(20, 2));
  ASSERT_TRUE(fs_->Rename(a, b).ok());
  EXPECT_FALSE(Exists(a));
  EXPECT_EQ(ReadRawFile(b), RandomBytes(10, 1));

  WriteRawFile(a, RandomBytes(30, 3));
  Status s = fs_->RenameNoReplace(a, b);
  EXPECT_EQ(s.code(), StatusCode::kAlreadyExists);
  EXPECT_NE(s.message().find(b), std::string::npos);
  EXPECT_EQ(ReadRawFile(a), RandomBytes(30, 3));  // both untouched
  EXPECT_EQ(ReadRawFile(b), RandomBytes(10, 1));
  ASSERT_TRUE(fs_->RenameNoReplace(a, c).ok());
  EXPECT_FALSE(Exists(a));
  EXPECT_EQ(ReadRawFile(c), RandomBytes(30, 3));
  EXPECT_EQ(fs_->Rename(dir_.Join("nope"), c).code(), StatusCode::kNotFound);
}

TEST_F(PosixFileSystemTest, UnlinkDirsAndStat) {
  std::string nested = dir_.Join("x/y/z");
  ASSERT_TRUE(fs_->CreateDirs(nested).ok());
  ASSERT_TRUE(fs_->CreateDirs(nested + "/").ok());  // idempotent
  auto st = fs_->Stat(nested);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->is_directory);
  EXPECT_EQ(st->name, "z");

  std::string file = nested + "/f";
  WriteRawFile(file, RandomBytes(1234, 4));
  st = fs_->Stat(file);
  ASSERT_TRUE(st.ok());
  EXPECT_FALSE(st->is_directory);
  EXPECT_EQ(st->size_bytes, 1234u);
  EXPECT_GT(st->mtime_ns, 0);
  EXPECT_FALSE(fs_->CreateDirs(file + "/sub").ok());  // a file is in the way

  EXPECT_EQ(fs_->RemoveDir(nested).sys_errno(), ENOTEMPTY);
  ASSERT_TRUE(fs_->Unlink(file).ok());
  Status s = fs_->Unlink(file);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find(file), std::string::npos);
  EXPECT_EQ(fs_->Stat(file).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(fs_->RemoveDir(nested).ok());
  EXPECT_FALSE(Exists(nested));
}

TEST_F(PosixFileSystemTest, ListDirDoesNotFollowSymlinks) {
  ASSERT_TRUE(fs_->CreateDirs(dir_.Join("sub")).ok());
  WriteRawFile(dir_.Join("file"), RandomBytes(77, 5));
  ASSERT_EQ(::symlink(dir_.Join("sub").c_str(), dir_.Join("link").c_str()), 0);
  ASSERT_EQ(::symlink("/nonexistent", dir_.Join("dangling").c_str()), 0);
  auto entries = fs_->ListDir(dir_.path());
  ASSERT_TRUE(entries.ok());
  std::sort(entries->begin(), entries->end(),
            [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  ASSERT_EQ(entries->size(), 4u);
  EXPECT_EQ((*entries)[0].name, "dangling");
  EXPECT_FALSE((*entries)[0].is_directory);
  EXPECT_EQ((*entries)[1].name, "file");
  EXPECT_EQ((*entries)[1].size_bytes, 77u);
  EXPECT_EQ((*entries)[2].name, "link");
  EXPECT_FALSE((*entries)[2].is_directory);
  EXPECT_EQ((*entries)[3].name, "sub");
  EXPECT_TRUE((*entries)[3].is_directory);
  EXPECT_EQ(fs_->ListDir(dir_.Join("missing")).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(fs_->Stat(dir_.Join("dangling")).ok());  // lstat
}

TEST_F(PosixFileSystemTest, DefaultWorks) {
  FileSystem& fs = FileSystem::Default();
  std::string path = dir_.Join("d");
  auto file = fs.Open(path, {.mode = File::Mode::kCreateNew});
  ASSERT_TRUE(file.ok());
  ASSERT_TRUE(fs.WriteAt(*file, 0, RandomBytes(5000, 6)).ok());
  EXPECT_EQ(ReadRawFile(path), RandomBytes(5000, 6));
}

}  // namespace
}  // namespace granary
