#include "io/fault_injection.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>

#include "core/testing/test_util.h"
#include "gtest/gtest.h"
#include "io/io_test_util.h"

namespace granary {
namespace {

using testing::Exists;
using testing::RandomBytes;
using testing::RawSize;
using testing::ReadRawFile;
using testing::ScratchDir;
using testing::WriteRawFile;

class FaultInjectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GRANARY_ASSERT_OK_AND_ASSIGN(engine_, IoEngine::Create());
    base_ = NewPosixFileSystem(engine_.get());
    fs_ = std::make_unique<FaultInjectingFileSystem>(base_.get(), dir_.Join(".backups"));
  }

  // Creates `name` with `bytes` of content through the wrapper; optionally syncs file and dir.
  std::string MakeFile(const std::string& name, size_t bytes, bool sync, uint64_t seed = 1) {
    std::string path = dir_.Join(name);
    auto file = fs_->Open(path, {.mode = File::Mode::kCreate});
    GRANARY_EXPECT_OK(file);
    GRANARY_EXPECT_OK(fs_->WriteAt(*file, 0, RandomBytes(bytes, seed)));
    if (sync) {
      GRANARY_EXPECT_OK(fs_->Sync(*file));
      GRANARY_EXPECT_OK(fs_->SyncDir(dir_.path()));
    }
    return path;
  }

  ScratchDir dir_;
  std::unique_ptr<IoEngine> engine_;
  std::unique_ptr<FileSystem> base_;
  std::unique_ptr<FaultInjectingFileSystem> fs_;
};

TEST_F(FaultInjectionTest, FailsTheNthWrite) {
  auto file = fs_->Open(dir_.Join("f"), {.mode = File::Mode::kCreate});
  GRANARY_ASSERT_OK(file);
  std::vector<std::byte> data = RandomBytes(100, 1);
  fs_->FailNthWrite(2, EIO);
  GRANARY_EXPECT_OK(fs_->WriteAt(*file, 0, data));
  Status s = fs_->WriteAt(*file, 100, data);
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_EQ(s.sys_errno(), EIO);
  EXPECT_NE(s.message().find(dir_.Join("f")), std::string::npos) << s.message();
  EXPECT_EQ(*file->Size(), 100u);  // the failed write wrote nothing
  GRANARY_EXPECT_OK(fs_->WriteAt(*file, 100, data));  // one-shot
  fs_->FailNthWrite(1, ENOSPC);
  EXPECT_EQ(fs_->WriteAt(*file, 200, data).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(fs_->writes(), 4u);
  EXPECT_EQ(fs_->bytes_written(), 200u);
}

TEST_F(FaultInjectionTest, FailsTheNthSyncCountingDirectorySyncs) {
  auto file = fs_->Open(dir_.Join("f"), {.mode = File::Mode::kCreate});
  GRANARY_ASSERT_OK(file);
  fs_->FailNthSync(2, EIO);
  GRANARY_EXPECT_OK(fs_->SyncDir(dir_.path()));
  Status s = fs_->Sync(*file);
  EXPECT_EQ(s.sys_errno(), EIO);
  GRANARY_EXPECT_OK(fs_->Sync(*file));
  fs_->FailNthSync(1, ENOSPC);
  EXPECT_EQ(fs_->SyncDir(dir_.path()).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(fs_->syncs(), 4u);
}

TEST_F(FaultInjectionTest, FailsTheNthReadCountingEachReadManyRequest) {
  std::string path = MakeFile("f", 10000, /*sync=*/true);
  auto file = fs_->Open(path, {});
  GRANARY_ASSERT_OK(file);
  const std::vector<std::byte> data = RandomBytes(10000, 1);
  std::vector<std::byte> out(3000);
  fs_->FailNthRead(2, EIO);
  auto n = fs_->ReadAt(*file, 0, out);  // read 1
  GRANARY_ASSERT_OK(n);
  // Reads 2..4: the first request of the batch fails alone, the others complete.
  std::vector<std::byte> a(1000, std::byte{0x5a}), b(1000), c(1000);
  std::vector<IoRequest> requests = {
      {.fd = file->fd(), .offset = 0, .buffer = a.data(), .length = 1000},
      {.fd = file->fd(), .offset = 1000, .buffer = b.data(), .length = 1000},
      {.fd = file->fd(), .offset = 9500, .buffer = c.data(), .length = 1000}};
  GRANARY_ASSERT_OK(fs_->ReadMany(requests));
  EXPECT_EQ(requests[0].result, -EIO);
  EXPECT_EQ(a, std::vector<std::byte>(1000, std::byte{0x5a}));  // nothing was read
  EXPECT_EQ(requests[1].result, 1000);
  EXPECT_TRUE(std::equal(b.begin(), b.end(), data.begin() + 1000));
  EXPECT_EQ(requests[2].result, 500);
  EXPECT_TRUE(std::equal(c.begin(), c.begin() + 500, data.begin() + 9500));
  GRANARY_EXPECT_OK(fs_->ReadAt(*file, 0, out));  // one-shot

  fs_->FailNthRead(1, EIO);
  std::fill(out.begin(), out.end(), std::byte{0});
  n = fs_->ReadAt(*file, 4096, out);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), StatusCode::kInternal);
  EXPECT_EQ(n.status().sys_errno(), EIO);
  EXPECT_NE(n.status().message().find(path), std::string::npos) << n.status().ToString();
  EXPECT_NE(n.status().message().find("injected"), std::string::npos) << n.status().ToString();
  EXPECT_EQ(out, std::vector<std::byte>(3000));
  EXPECT_EQ(fs_->reads(), 6u);

  fs_->FailNthRead(1, EIO);
  fs_->ClearFaults();
  GRANARY_EXPECT_OK(fs_->ReadAt(*file, 0, out));
}

TEST_F(FaultInjectionTest, CorruptsOneByteOfTheNthRead) {
  std::string path = MakeFile("f", 10000, /*sync=*/true);
  auto file = fs_->Open(path, {});
  GRANARY_ASSERT_OK(file);
  const std::vector<std::byte> data = RandomBytes(10000, 1);
  std::vector<std::byte> out(100);
  fs_->CorruptNthRead(1, 5);
  auto n = fs_->ReadAt(*file, 200, out);
  GRANARY_ASSERT_OK(n);
  ASSERT_EQ(*n, 100u);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i], i == 5 ? ~data[200 + i] : data[200 + i]) << i;
  }
  GRANARY_ASSERT_OK(fs_->ReadAt(*file, 200, out));  // one-shot
  EXPECT_TRUE(std::equal(out.begin(), out.end(), data.begin() + 200));

  // In a batch: the second request; an index past what the read returned hits its last byte.
  fs_->CorruptNthRead(2, 1u << 20);
  std::vector<std::byte> a(1000), b(1000);
  std::vector<IoRequest> requests = {
      {.fd = file->fd(), .offset = 0, .buffer = a.data(), .length = 1000},
      {.fd = file->fd(), .offset = 9700, .buffer = b.data(), .length = 1000}};
  GRANARY_ASSERT_OK(fs_->ReadMany(requests));
  ASSERT_EQ(requests[0].result, 1000);
  ASSERT_EQ(requests[1].result, 300);
  EXPECT_TRUE(std::equal(a.begin(), a.end(), data.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.begin() + 299, data.begin() + 9700));
  EXPECT_EQ(b[299], ~data[9999]);
  EXPECT_EQ(b[300], std::byte{0});  // nothing past the end of the read
}

TEST_F(FaultInjectionTest, FailsTheNthOpenCountingOpenBeneath) {
  std::string path = MakeFile("f", 10, /*sync=*/true);
  auto root = fs_->OpenRoot(dir_.path());
  GRANARY_ASSERT_OK(root);
  const uint64_t before = fs_->opens();
  fs_->FailNthOpen(2, EMFILE);
  GRANARY_EXPECT_OK(fs_->Open(path, {}));
  Status s = fs_->OpenBeneath(*root, "f", {}).status();
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_EQ(s.sys_errno(), EMFILE);
  EXPECT_NE(s.message().find(path), std::string::npos) << s.ToString();
  GRANARY_EXPECT_OK(fs_->OpenBeneath(*root, "f", {}));  // one-shot
  fs_->FailNthOpen(1, EACCES);
  EXPECT_EQ(fs_->Open(dir_.Join("g"), {.mode = File::Mode::kCreateNew}).status().sys_errno(),
            EACCES);
  EXPECT_FALSE(Exists(dir_.Join("g")));  // nothing was created
  EXPECT_EQ(fs_->opens() - before, 4u);
}

TEST_F(FaultInjectionTest, OpenBeneathIsForwardedAndTrackedForCrashes) {
  GRANARY_ASSERT_OK(fs_->CreateDirs(dir_.Join("root/sub")));
  ASSERT_EQ(::symlink("../..", dir_.Join("root/sub/up").c_str()), 0);
  auto root = fs_->OpenRoot(dir_.Join("root"));
  GRANARY_ASSERT_OK(root);
  EXPECT_EQ(fs_->OpenBeneath(*root, "sub/up/x", {.mode = File::Mode::kCreate}).status().code(),
            StatusCode::kPermissionDenied);
  EXPECT_FALSE(Exists(dir_.Join("x")));
  auto file = fs_->OpenBeneath(*root, "sub/new", {.mode = File::Mode::kCreateNew});
  GRANARY_ASSERT_OK(file);
  EXPECT_EQ(file->path(), dir_.Join("root/sub/new"));
  GRANARY_ASSERT_OK(fs_->WriteAt(*file, 0, RandomBytes(100, 1)));
  auto reader = fs_->OpenBeneath(*root, "sub/new", {});
  GRANARY_ASSERT_OK(reader);
  fs_->FailNthRead(1, EIO);
  std::vector<std::byte> out(100);
  EXPECT_EQ(fs_->ReadAt(*reader, 0, out).status().sys_errno(), EIO);
  GRANARY_ASSERT_OK(fs_->Crash());  // never synced: the creation is undone
  EXPECT_FALSE(Exists(dir_.Join("root/sub/new")));
}

TEST_F(FaultInjectionTest, DiskFullWritesWhatFitsThenFails) {
  auto file = fs_->Open(dir_.Join("f"), {.mode = File::Mode::kCreate});
  GRANARY_ASSERT_OK(file);
  std::vector<std::byte> data = RandomBytes(6000, 2);
  fs_->SetDiskFullAfter(10000);
  GRANARY_EXPECT_OK(fs_->WriteAt(*file, 0, data));
  Status s = fs_->WriteAt(*file, 6000, data);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.sys_errno(), ENOSPC);
  EXPECT_EQ(*file->Size(), 10000u);
  std::vector<std::byte> content = ReadRawFile(dir_.Join("f"));
  EXPECT_TRUE(std::equal(data.begin(), data.begin() + 4000, content.begin() + 6000));
  EXPECT_EQ(fs_->WriteAt(*file, 0, {data.data(), 1}).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(*file->Size(), 10000u);
  fs_->ClearDiskFull();
  GRANARY_EXPECT_OK(fs_->WriteAt(*file, 10000, data));
  EXPECT_EQ(*file->Size(), 16000u);
}

TEST_F(FaultInjectionTest, ShortWritesLeaveAPrefixAndAnError) {
  for (bool direct : {false, true}) {
    std::string path = dir_.Join(direct ? "direct" : "buffered");
    auto file = fs_->Open(path, {.mode = File::Mode::kCreate, .direct = direct});
    GRANARY_ASSERT_OK(file);
    std::vector<std::byte> data = RandomBytes(10000, 3);
    fs_->ShortWrites(true, EIO);
    Status s = fs_->WriteAt(*file, 0, data);
    EXPECT_EQ(s.sys_errno(), EIO);
    EXPECT_EQ(ReadRawFile(path), std::vector<std::byte>(data.begin(), data.begin() + 5000));
    fs_->ShortWrites(false);
    GRANARY_EXPECT_OK(fs_->WriteAt(*file, 0, data));
    EXPECT_EQ(ReadRawFile(path), data);
  }
}

TEST_F(FaultInjectionTest, CrashKeepsSyncedDataAndDropsTheRest) {
  std::string path = MakeFile("f", 5000, /*sync=*/true);
  auto file = fs_->Open(path, {.mode = File::Mode::kReadWrite});
  GRANARY_ASSERT_OK(file);
  GRANARY_ASSERT_OK(fs_->WriteAt(*file, 5000, RandomBytes(3000, 9)));
  EXPECT_EQ(RawSize(path), 8000);
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_EQ(ReadRawFile(path), RandomBytes(5000, 1));
}

TEST_F(FaultInjectionTest, CrashDeletesNeverSyncedFilesEvenInSyncedDirectories) {
  std::string path = MakeFile("f", 100, /*sync=*/false);
  GRANARY_ASSERT_OK(fs_->SyncDir(dir_.path()));
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_FALSE(Exists(path));
}

TEST_F(FaultInjectionTest, CrashUndoesCreationWithoutDirectorySync) {
  std::string path = dir_.Join("f");
  auto file = fs_->Open(path, {.mode = File::Mode::kCreateNew});
  GRANARY_ASSERT_OK(file);
  GRANARY_ASSERT_OK(fs_->WriteAt(*file, 0, RandomBytes(100, 1)));
  GRANARY_ASSERT_OK(fs_->Sync(*file));  // data synced, name not
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_FALSE(Exists(path));
}

TEST_F(FaultInjectionTest, CrashUndoesAnUnsyncedRenameAndRestoresTheOldTarget) {
  std::string target = MakeFile("target", 1000, /*sync=*/true, 1);
  std::string tmp = MakeFile("tmp", 2000, /*sync=*/true, 2);
  GRANARY_ASSERT_OK(fs_->Rename(tmp, target));
  EXPECT_EQ(ReadRawFile(target), RandomBytes(2000, 2));
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_EQ(ReadRawFile(target), RandomBytes(1000, 1));
  EXPECT_EQ(ReadRawFile(tmp), RandomBytes(2000, 2));
  EXPECT_TRUE(std::filesystem::is_empty(dir_.Join(".backups")));
}

TEST_F(FaultInjectionTest, DirectorySyncMakesRenamesDurable) {
  std::string target = MakeFile("target", 1000, /*sync=*/true, 1);
  std::string tmp = MakeFile("tmp", 2000, /*sync=*/true, 2);
  GRANARY_ASSERT_OK(fs_->Rename(tmp, target));
  GRANARY_ASSERT_OK(fs_->SyncDir(dir_.path()));
  EXPECT_TRUE(std::filesystem::is_empty(dir_.Join(".backups")));  // backup dropped
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_EQ(ReadRawFile(target), RandomBytes(2000, 2));
  EXPECT_FALSE(Exists(tmp));
}

TEST_F(FaultInjectionTest, CrashUndoesRenameNoReplaceAndUnlink) {
  std::string a = MakeFile("a", 100, /*sync=*/true, 1);
  std::string gone = MakeFile("gone", 200, /*sync=*/true, 2);
  std::string b = dir_.Join("b");
  GRANARY_ASSERT_OK(fs_->RenameNoReplace(a, b));
  GRANARY_ASSERT_OK(fs_->Unlink(gone));
  EXPECT_FALSE(Exists(gone));
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_EQ(ReadRawFile(a), RandomBytes(100, 1));
  EXPECT_FALSE(Exists(b));
  EXPECT_EQ(ReadRawFile(gone), RandomBytes(200, 2));
}

TEST_F(FaultInjectionTest, CrossDirectoryRenameNeedsBothDirectoriesSynced) {
  GRANARY_ASSERT_OK(fs_->CreateDirs(dir_.Join("out")));
  std::string src = MakeFile("src", 100, /*sync=*/true);
  std::string dst = dir_.Join("out/dst");
  GRANARY_ASSERT_OK(fs_->Rename(src, dst));
  GRANARY_ASSERT_OK(fs_->SyncDir(dir_.Join("out")));
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_TRUE(Exists(src));
  EXPECT_FALSE(Exists(dst));

  GRANARY_ASSERT_OK(fs_->Rename(src, dst));
  GRANARY_ASSERT_OK(fs_->SyncDir(dir_.Join("out")));
  GRANARY_ASSERT_OK(fs_->SyncDir(dir_.path()));
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_FALSE(Exists(src));
  EXPECT_EQ(ReadRawFile(dst), RandomBytes(100, 1));
}

TEST_F(FaultInjectionTest, AtomicReplacePatternSurvivesACrashAtEveryStep) {
  // The write-temp, fsync, rename, fsync-dir protocol: after a crash at any point the target
  // holds either the whole old or the whole new content.
  const std::vector<std::byte> old_data = RandomBytes(3000, 1), new_data = RandomBytes(5000, 2);
  for (int crash_after = 0; crash_after <= 4; ++crash_after) {
    std::string target = dir_.Join("target"), tmp = dir_.Join("target.tmp");
    WriteRawFile(target, old_data);
    int step = 0;
    auto file = fs_->Open(tmp, {.mode = File::Mode::kTruncate});
    GRANARY_ASSERT_OK(file);
    if (step++ < crash_after) {
      GRANARY_ASSERT_OK(fs_->WriteAt(*file, 0, new_data));
    }
    if (step++ < crash_after) {
      GRANARY_ASSERT_OK(fs_->Sync(*file));
    }
    if (step++ < crash_after) {
      GRANARY_ASSERT_OK(fs_->Rename(tmp, target));
    }
    if (step++ < crash_after) {
      GRANARY_ASSERT_OK(fs_->SyncDir(dir_.path()));
    }
    GRANARY_ASSERT_OK(fs_->Crash());
    std::vector<std::byte> got = ReadRawFile(target);
    if (crash_after >= 4) {
      EXPECT_EQ(got, new_data) << "crash after step " << crash_after;
    } else {
      EXPECT_EQ(got, old_data) << "crash after step " << crash_after;
    }
    EXPECT_FALSE(Exists(tmp) && crash_after >= 4);
    std::filesystem::remove(tmp);
  }
}

TEST_F(FaultInjectionTest, PreexistingFilesKeepTheirLengthAtFirstOpen) {
  std::string path = dir_.Join("old");
  WriteRawFile(path, RandomBytes(4000, 1));
  auto file = fs_->Open(path, {.mode = File::Mode::kReadWrite});
  GRANARY_ASSERT_OK(file);
  GRANARY_ASSERT_OK(fs_->WriteAt(*file, 4000, RandomBytes(500, 2)));
  GRANARY_ASSERT_OK(fs_->Crash());
  EXPECT_EQ(ReadRawFile(path), RandomBytes(4000, 1));
}

TEST_F(FaultInjectionTest, RemovesItsOwnBackupDirectory) {
  std::string backups;
  {
    FaultInjectingFileSystem fs(base_.get());
    std::string a = dir_.Join("a");
    WriteRawFile(a, RandomBytes(10, 1));
    struct stat st;
    ASSERT_EQ(::stat(a.c_str(), &st), 0);
    GRANARY_ASSERT_OK(fs.Unlink(a));  // pending: its backup (a hard link) is kept
    const char* root = std::getenv("GRANARY_TEST_TMPDIR");
    for (const auto& e : std::filesystem::directory_iterator(root != nullptr ? root : "/tmp")) {
      if (e.path().filename().string().rfind("granary-fault-", 0) != 0) continue;
      for (const auto& f : std::filesystem::directory_iterator(e.path())) {
        struct stat bst;
        if (::stat(f.path().c_str(), &bst) == 0 && bst.st_ino == st.st_ino) {
          backups = e.path().string();
        }
      }
    }
    EXPECT_FALSE(backups.empty());
  }
  EXPECT_FALSE(Exists(backups));
}

}  // namespace
}  // namespace granary
