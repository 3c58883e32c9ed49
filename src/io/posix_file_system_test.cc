#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "core/testing/test_util.h"
#include "gtest/gtest.h"
#include "io/file_system.h"
#include "io/io_test_util.h"
#include "io/open_beneath.h"

namespace granary {
namespace {

using testing::Exists;
using testing::RandomBytes;
using testing::ReadRawFile;
using testing::ScratchDir;
using testing::WriteRawFile;

class PosixFileSystemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GRANARY_ASSERT_OK_AND_ASSIGN(engine_, IoEngine::Create());
    fs_ = NewPosixFileSystem(engine_.get());
  }
  std::unique_ptr<IoEngine> engine_;
  std::unique_ptr<FileSystem> fs_;
  ScratchDir dir_;
};

TEST_F(PosixFileSystemTest, WritesAndReadsThroughTheEngine) {
  std::string path = dir_.Join("f");
  std::vector<std::byte> data = RandomBytes(100000, 1);
  for (bool direct : {false, true}) {
    auto file = fs_->Open(path, {.mode = File::Mode::kTruncate, .direct = direct});
    GRANARY_ASSERT_OK(file);
    GRANARY_ASSERT_OK(fs_->WriteAt(*file, 0, data));
    GRANARY_ASSERT_OK(fs_->Sync(*file));
    std::vector<std::byte> out(data.size() + 10);
    auto n = fs_->ReadAt(*file, 0, out);
    GRANARY_ASSERT_OK(n);
    EXPECT_EQ(*n, data.size());
    EXPECT_TRUE(std::equal(data.begin(), data.end(), out.begin()));

    std::vector<IoRequest> requests = {
        {.fd = file->fd(), .offset = 0, .buffer = out.data(), .length = 4096},
        {.fd = file->fd(), .offset = 98304, .buffer = out.data() + 4096, .length = 4096}};
    if (direct) {
      auto aligned = AlignedBuffer::Allocate(8192);
      GRANARY_ASSERT_OK(aligned);
      requests[0].buffer = aligned->data();
      requests[1].buffer = aligned->data() + 4096;
      GRANARY_ASSERT_OK(fs_->ReadMany(requests));
      EXPECT_EQ(std::memcmp(aligned->data(), data.data(), 4096), 0);
    } else {
      GRANARY_ASSERT_OK(fs_->ReadMany(requests));
    }
    EXPECT_EQ(requests[0].result, 4096);
    EXPECT_EQ(requests[1].result, 100000 - 98304);
    GRANARY_ASSERT_OK(fs_->Truncate(*file, 10));
    EXPECT_EQ(*file->Size(), 10u);
  }
  GRANARY_EXPECT_OK(fs_->SyncDir(dir_.path()));
}

TEST_F(PosixFileSystemTest, RenameReplacesAndRenameNoReplaceRefuses) {
  std::string a = dir_.Join("a"), b = dir_.Join("b"), c = dir_.Join("c");
  WriteRawFile(a, RandomBytes(10, 1));
  WriteRawFile(b, RandomBytes(20, 2));
  GRANARY_ASSERT_OK(fs_->Rename(a, b));
  EXPECT_FALSE(Exists(a));
  EXPECT_EQ(ReadRawFile(b), RandomBytes(10, 1));

  WriteRawFile(a, RandomBytes(30, 3));
  Status s = fs_->RenameNoReplace(a, b);
  EXPECT_EQ(s.code(), StatusCode::kAlreadyExists);
  EXPECT_NE(s.message().find(b), std::string::npos);
  EXPECT_EQ(ReadRawFile(a), RandomBytes(30, 3));  // both untouched
  EXPECT_EQ(ReadRawFile(b), RandomBytes(10, 1));
  GRANARY_ASSERT_OK(fs_->RenameNoReplace(a, c));
  EXPECT_FALSE(Exists(a));
  EXPECT_EQ(ReadRawFile(c), RandomBytes(30, 3));
  EXPECT_EQ(fs_->Rename(dir_.Join("nope"), c).code(), StatusCode::kNotFound);
}

TEST_F(PosixFileSystemTest, UnlinkDirsAndStat) {
  std::string nested = dir_.Join("x/y/z");
  GRANARY_ASSERT_OK(fs_->CreateDirs(nested));
  GRANARY_ASSERT_OK(fs_->CreateDirs(nested + "/"));  // idempotent
  auto st = fs_->Stat(nested);
  GRANARY_ASSERT_OK(st);
  EXPECT_TRUE(st->is_directory);
  EXPECT_EQ(st->name, "z");

  std::string file = nested + "/f";
  WriteRawFile(file, RandomBytes(1234, 4));
  st = fs_->Stat(file);
  GRANARY_ASSERT_OK(st);
  EXPECT_FALSE(st->is_directory);
  EXPECT_EQ(st->size_bytes, 1234u);
  EXPECT_GT(st->mtime_ns, 0);
  EXPECT_FALSE(fs_->CreateDirs(file + "/sub").ok());  // a file is in the way

  EXPECT_EQ(fs_->RemoveDir(nested).sys_errno(), ENOTEMPTY);
  GRANARY_ASSERT_OK(fs_->Unlink(file));
  Status s = fs_->Unlink(file);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find(file), std::string::npos);
  EXPECT_EQ(fs_->Stat(file).status().code(), StatusCode::kNotFound);
  GRANARY_ASSERT_OK(fs_->RemoveDir(nested));
  EXPECT_FALSE(Exists(nested));
}

TEST_F(PosixFileSystemTest, ListDirDoesNotFollowSymlinks) {
  GRANARY_ASSERT_OK(fs_->CreateDirs(dir_.Join("sub")));
  WriteRawFile(dir_.Join("file"), RandomBytes(77, 5));
  ASSERT_EQ(::symlink(dir_.Join("sub").c_str(), dir_.Join("link").c_str()), 0);
  ASSERT_EQ(::symlink("/nonexistent", dir_.Join("dangling").c_str()), 0);
  auto entries = fs_->ListDir(dir_.path());
  GRANARY_ASSERT_OK(entries);
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
  GRANARY_EXPECT_OK(fs_->Stat(dir_.Join("dangling")));  // lstat
}

// OpenBeneath, once through the FileSystem (openat2 on this kernel) and once through the
// component walk used where openat2 is missing.
class OpenBeneathTest : public PosixFileSystemTest,
                        public ::testing::WithParamInterface<BeneathResolution> {
 protected:
  void SetUp() override {
    PosixFileSystemTest::SetUp();
    // <dir>/root/a/b/c is the file inside; <dir>/outside and <dir>/outdir/f are outside.
    root_path_ = dir_.Join("root");
    GRANARY_ASSERT_OK(fs_->CreateDirs(root_path_ + "/a/b"));
    WriteRawFile(root_path_ + "/a/b/c", RandomBytes(5000, 1));
    WriteRawFile(dir_.Join("outside"), RandomBytes(10, 2));
    GRANARY_ASSERT_OK(fs_->CreateDirs(dir_.Join("outdir")));
    WriteRawFile(dir_.Join("outdir/f"), RandomBytes(10, 3));
    GRANARY_ASSERT_OK_AND_ASSIGN(root_, fs_->OpenRoot(root_path_));
  }

  bool walk() const { return GetParam() == BeneathResolution::kWalk; }

  Result<File> Open(std::string_view relative, const File::OpenOptions& options = {}) {
    if (walk()) return OpenFileBeneath(root_, relative, options, BeneathResolution::kWalk);
    return fs_->OpenBeneath(root_, relative, options);
  }

  // `relative` is refused as leaving the root (or passing a refused link), naming the path.
  void ExpectRefused(std::string_view relative, const File::OpenOptions& options = {}) {
    Result<File> file = Open(relative, options);
    ASSERT_FALSE(file.ok()) << relative;
    EXPECT_EQ(file.status().code(), StatusCode::kPermissionDenied)
        << relative << ": " << file.status().ToString();
    EXPECT_TRUE(file.status().sys_errno() == EXDEV || file.status().sys_errno() == ELOOP)
        << file.status().ToString();
    EXPECT_NE(file.status().message().find(root_path_ + "/" + std::string(relative)),
              std::string::npos)
        << file.status().ToString();
  }

  void Symlink(const std::string& target, const std::string& name) {
    ASSERT_EQ(::symlink(target.c_str(), (root_path_ + "/" + name).c_str()), 0) << name;
  }

  std::string root_path_;
  File root_;
};

TEST_P(OpenBeneathTest, OpensANestedPath) {
  for (std::string_view relative : {"a/b/c", "./a//b/c"}) {
    auto file = Open(relative);
    GRANARY_ASSERT_OK(file);
    EXPECT_EQ(file->path(), root_path_ + "/" + std::string(relative));
    std::vector<std::byte> out(6000);
    auto n = fs_->ReadAt(*file, 0, out);
    GRANARY_ASSERT_OK(n);
    ASSERT_EQ(*n, 5000u);
    out.resize(5000);
    EXPECT_EQ(out, RandomBytes(5000, 1));
    EXPECT_EQ(::fcntl(file->fd(), F_GETFL) & O_NONBLOCK, 0);  // cleared after the open
  }
  auto direct = Open("a/b/c", {.direct = true});
  if (direct.ok()) {
    EXPECT_NE(::fcntl(direct->fd(), F_GETFL) & O_DIRECT, 0);
    std::vector<std::byte> out(100);
    auto n = fs_->ReadAt(*direct, 10, out);
    GRANARY_ASSERT_OK(n);
    EXPECT_EQ(*n, 100u);
  } else {  // a file system without O_DIRECT
    EXPECT_EQ(direct.status().sys_errno(), EINVAL) << direct.status().ToString();
  }
}

TEST_P(OpenBeneathTest, RefusesDotDotThatLeavesTheRoot) {
  ExpectRefused("../outside");
  ExpectRefused("a/../../outside");
  ExpectRefused("a/b/../../../outdir/f");
  // ".." that stays inside works with openat2; the walk refuses every "..".
  if (walk()) {
    ExpectRefused("a/../a/b/c");
  } else {
    GRANARY_EXPECT_OK(Open("a/../a/b/c"));
  }
}

TEST_P(OpenBeneathTest, RefusesSymlinksThatLeaveTheRoot) {
  Symlink("../outside", "rel-link");
  Symlink("../../outdir", "a/dir-link");
  Symlink("../../../outside", "a/b/deep-link");
  ExpectRefused("rel-link");
  ExpectRefused("a/dir-link/f");
  ExpectRefused("a/b/deep-link");
  // Creating through an escaping directory link is refused too, and creates nothing outside.
  ExpectRefused("a/dir-link/new", {.mode = File::Mode::kCreateNew});
  EXPECT_FALSE(Exists(dir_.Join("outdir/new")));
}

TEST_P(OpenBeneathTest, RefusesAbsoluteSymlinksEvenIntoTheRoot) {
  Symlink(dir_.Join("outside"), "abs-out");
  Symlink(root_path_ + "/a/b/c", "abs-in");  // points inside, but absolute
  Symlink(root_path_ + "/a", "abs-dir");
  ExpectRefused("abs-out");
  ExpectRefused("abs-in");
  ExpectRefused("abs-dir/b/c");
}

TEST_P(OpenBeneathTest, RefusesMagicLinks) {
  // /proc/self as the root: its fd/<n>, exe and root entries are magic links inside it.
  auto proc = fs_->OpenRoot("/proc/self");
  GRANARY_ASSERT_OK(proc);
  auto outside = File::Open(dir_.Join("outside"), {});
  GRANARY_ASSERT_OK(outside);
  // fd/<n> and exe end in a magic link; root/ passes through one.
  const std::string fd_link = "fd/" + std::to_string(outside->fd());
  for (const std::string& relative : {fd_link, std::string("exe"), std::string("root/etc/passwd")}) {
    Result<File> file =
        walk() ? OpenFileBeneath(*proc, relative, {}, BeneathResolution::kWalk)
               : fs_->OpenBeneath(*proc, relative, {});
    ASSERT_FALSE(file.ok()) << relative;
    EXPECT_EQ(file.status().code(), StatusCode::kPermissionDenied)
        << relative << ": " << file.status().ToString();
  }
}

TEST_P(OpenBeneathTest, SymlinkInsideTheRootIsFollowedOnlyWithOpenat2) {
  Symlink("a/b/c", "inner");
  Symlink("b", "a/inner-dir");
  for (std::string_view relative : {"inner", "a/inner-dir/c"}) {
    if (walk()) {
      ExpectRefused(relative);
    } else {
      auto file = Open(relative);
      GRANARY_ASSERT_OK(file);
      EXPECT_EQ(*file->Size(), 5000u);
    }
  }
  Symlink("loop", "loop");
  ExpectRefused("loop");
}

TEST_P(OpenBeneathTest, MissingDirectoriesAndSpecialFiles) {
  EXPECT_EQ(Open("a/missing").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Open("a/b/c/under-a-file").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Open("a/b/c/").status().code(), StatusCode::kNotFound);
  Status dir = Open("a/b").status();
  EXPECT_EQ(dir.code(), StatusCode::kFailedPrecondition) << dir.ToString();
  EXPECT_EQ(dir.sys_errno(), EISDIR);
  EXPECT_NE(dir.message().find(root_path_ + "/a/b"), std::string::npos) << dir.ToString();
  EXPECT_EQ(Open("a/b", {.mode = File::Mode::kReadWrite}).status().sys_errno(), EISDIR);
  ASSERT_EQ(::mkfifo((root_path_ + "/fifo").c_str(), 0644), 0);
  Status fifo = Open("fifo").status();  // must not block waiting for a writer
  EXPECT_EQ(fifo.code(), StatusCode::kFailedPrecondition) << fifo.ToString();
  EXPECT_EQ(fifo.sys_errno(), 0);
  EXPECT_EQ(Open("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Open(root_path_ + "/a/b/c").status().code(), StatusCode::kInvalidArgument);
}

TEST_P(OpenBeneathTest, CreatesFilesBeneathTheRoot) {
  auto file = Open("a/new", {.mode = File::Mode::kCreateNew, .permissions = 0600});
  GRANARY_ASSERT_OK(file);
  GRANARY_ASSERT_OK(fs_->WriteAt(*file, 0, RandomBytes(100, 4)));
  EXPECT_EQ(ReadRawFile(root_path_ + "/a/new"), RandomBytes(100, 4));
  struct stat st;
  ASSERT_EQ(::stat((root_path_ + "/a/new").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(Open("a/new", {.mode = File::Mode::kCreateNew}).status().code(),
            StatusCode::kAlreadyExists);
}

INSTANTIATE_TEST_SUITE_P(Resolutions, OpenBeneathTest,
                         ::testing::Values(BeneathResolution::kAuto, BeneathResolution::kWalk),
                         [](const auto& info) {
                           return info.param == BeneathResolution::kAuto ? "Auto" : "Walk";
                         });

TEST_F(PosixFileSystemTest, OpenRootNeedsAnExistingDirectory) {
  EXPECT_EQ(fs_->OpenRoot(dir_.Join("missing")).status().code(), StatusCode::kNotFound);
  WriteRawFile(dir_.Join("file"), RandomBytes(1, 1));
  Status s = fs_->OpenRoot(dir_.Join("file")).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find(dir_.Join("file")), std::string::npos) << s.ToString();
  // A root reached through a symlink is fine.
  ASSERT_EQ(::symlink(dir_.path().c_str(), dir_.Join("via-link").c_str()), 0);
  auto root = fs_->OpenRoot(dir_.Join("via-link"));
  GRANARY_ASSERT_OK(root);
  EXPECT_EQ(root->path(), dir_.Join("via-link"));
  GRANARY_EXPECT_OK(fs_->OpenBeneath(*root, "file", {}));
}

TEST_F(PosixFileSystemTest, DefaultWorks) {
  FileSystem& fs = FileSystem::Default();
  std::string path = dir_.Join("d");
  auto file = fs.Open(path, {.mode = File::Mode::kCreateNew});
  GRANARY_ASSERT_OK(file);
  GRANARY_ASSERT_OK(fs.WriteAt(*file, 0, RandomBytes(5000, 6)));
  EXPECT_EQ(ReadRawFile(path), RandomBytes(5000, 6));
}

}  // namespace
}  // namespace granary
