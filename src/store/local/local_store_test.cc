// LocalStore specifics: symlinks, leftovers of dead writers, the on-disk layout, conflicts.
// Fault injection (full disk, EIO, crashes) is in local_store_fault_test.cc.
#include "store/local/local_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/testing/test_util.h"
#include "store/local/local_root.h"
#include "store/testing/test_util.h"

namespace granary {
namespace {

using testing::AsBytes;
using testing::AsWritableBytes;
using testing::Payload;
using testing::ScratchDir;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteFile(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

// A pid that is certainly dead: a child we started and reaped.
pid_t DeadPid() {
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  int status = 0;
  waitpid(pid, &status, 0);
  return pid;
}

std::string PidNamespace() {
  struct stat st;
  return ::stat("/proc/self/ns/pid", &st) == 0 ? std::to_string(st.st_ino) : "0";
}

class LocalStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, NewLocalStore(root(), StoreOptions{}));
  }
  std::string root() const { return dir_.Join("root"); }

  ScratchDir dir_{"local"};
  std::unique_ptr<ObjectStore> store_;
};

TEST_F(LocalStoreTest, ObjectsArePlainFilesAtRootSlashKey) {
  GRANARY_ASSERT_OK(store_->Put("runs/exp1/a.bin", "payload"));
  EXPECT_EQ(ReadFile(root() + "/runs/exp1/a.bin"), "payload");
  EXPECT_EQ(ReadFile(root() + "/.granary/format"), "granary-local-store 1\n");
  EXPECT_TRUE(std::filesystem::is_directory(root() + "/.granary/tmp"));
  EXPECT_EQ(store_->url(), "file://" + root());
  // A file dropped in by hand is an object too.
  WriteFile(root() + "/by-hand", "hand");
  EXPECT_EQ(store_->GetAll("by-hand").value_or(""), "hand");
}

TEST_F(LocalStoreTest, SymlinkOutOfRootIsNotFollowed) {
  WriteFile(dir_.Join("secret"), "top secret");
  std::filesystem::create_directories(dir_.Join("outside"));
  WriteFile(dir_.Join("outside/file"), "outside");
  std::filesystem::create_symlink(dir_.Join("secret"), root() + "/link");
  std::filesystem::create_symlink("../secret", root() + "/rel-link");
  std::filesystem::create_directory_symlink(dir_.Join("outside"), root() + "/dirlink");
  std::string buf(64, '\0');
  for (const char* key : {"link", "rel-link", "dirlink/file"}) {
    Result<size_t> n = store_->Get(key, 0, AsWritableBytes(buf));
    EXPECT_EQ(n.status().code(), StatusCode::kPermissionDenied) << key << n.status().ToString();
    EXPECT_EQ(store_->GetAll(key).status().code(), StatusCode::kPermissionDenied) << key;
    ReadOp op;
    op.key = key;
    op.dest = AsWritableBytes(buf);
    GRANARY_ASSERT_OK(store_->GetMany(std::span(&op, 1)));
    EXPECT_EQ(op.status.code(), StatusCode::kPermissionDenied) << key;
    EXPECT_NE(op.status.message().find(key), std::string::npos) << op.status.ToString();
  }
  // Writes and deletes do not go through a symlinked directory either.
  EXPECT_EQ(store_->Put("dirlink/new", "x").code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(std::filesystem::exists(dir_.Join("outside/new")));
  EXPECT_FALSE(store_->Delete("dirlink/file").ok());
  EXPECT_EQ(ReadFile(dir_.Join("outside/file")), "outside");
  // A symlink that stays inside the root is fine.
  GRANARY_ASSERT_OK(store_->Put("real", "inside"));
  std::filesystem::create_symlink("real", root() + "/inner-link");
  EXPECT_EQ(store_->GetAll("inner-link").value_or(""), "inside");
}

TEST_F(LocalStoreTest, KeyAndDirectoryPrefixConflict) {
  GRANARY_ASSERT_OK(store_->Put("a", "file"));
  Status s = store_->Put("a/b", "x");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("'a/b'"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("'a'"), std::string::npos) << s.ToString();
  GRANARY_ASSERT_OK(store_->Put("c/d", "x"));
  s = store_->Put("c", "x");
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_NE(s.message().find("'c'"), std::string::npos) << s.ToString();
  EXPECT_EQ(store_->PutIfAbsent("c", "x").code(), StatusCode::kFailedPrecondition);
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("c");
  GRANARY_ASSERT_OK(writer);
  EXPECT_EQ((*writer)->Commit().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->GetAll("a").value_or(""), "file");
  EXPECT_EQ(store_->GetAll("c/d").value_or(""), "x");
  EXPECT_EQ(store_->Stat("c").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(std::filesystem::is_empty(root() + "/.granary/tmp"));
}

TEST_F(LocalStoreTest, DeadWritersTempFilesAreRemovedAtOpen) {
  const std::string tmp = root() + "/.granary/tmp/";
  const std::string dead = tmp + std::to_string(DeadPid()) + "-" + PidNamespace() +
                           "-00000000deadbeef.tmp";
  const std::string alive = tmp + std::to_string(getpid()) + "-" + PidNamespace() +
                            "-00000000cafebabe.tmp";
  const std::string other_ns = tmp + std::to_string(DeadPid()) + "-1-0000000000000001.tmp";
  const std::string unknown = tmp + "not-a-temp-name";
  for (const std::string& path : {dead, alive, other_ns, unknown}) WriteFile(path, "partial");
  Result<std::unique_ptr<ObjectStore>> reopened = NewLocalStore(root(), StoreOptions{});
  GRANARY_ASSERT_OK(reopened);
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(alive));     // our own pid: a live writer
  EXPECT_TRUE(std::filesystem::exists(other_ns));  // another pid namespace: cannot tell
  EXPECT_TRUE(std::filesystem::exists(unknown));   // not ours to judge
  EXPECT_TRUE((*reopened)->List("").value().empty());
}

TEST_F(LocalStoreTest, TempNamesRoundTrip) {
  TempName name;
  EXPECT_TRUE(ParseTempName("123-4026531836-00ff00ff00ff00ff.tmp", &name));
  EXPECT_EQ(name.pid, 123);
  EXPECT_EQ(name.pid_namespace, 4026531836u);
  for (const char* bad : {"123.tmp", "x-1-2.tmp", "123-1-abc", "-1-2-3.tmp", "0-1-2.tmp",
                          "123-1-.tmp"}) {
    EXPECT_FALSE(ParseTempName(bad, &name)) << bad;
  }
}

TEST_F(LocalStoreTest, RejectsUnknownFormatAndNonDirectoryRoot) {
  WriteFile(root() + "/.granary/format", "granary-local-store 99\n");
  Result<std::unique_ptr<ObjectStore>> reopened = NewLocalStore(root(), StoreOptions{});
  EXPECT_EQ(reopened.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(reopened.status().message().find(".granary/format"), std::string::npos)
      << reopened.status().ToString();
  WriteFile(dir_.Join("file"), "x");
  EXPECT_EQ(NewLocalStore(dir_.Join("file"), StoreOptions{}).status().code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(NewLocalStore("relative/root", StoreOptions{}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(LocalStoreTest, ListSkipsReservedAndShowsHandPlacedFiles) {
  GRANARY_ASSERT_OK(store_->Put("x/y", "1"));
  std::filesystem::create_directories(root() + "/sub/.granary-junk");
  WriteFile(root() + "/sub/.granary-junk/f", "junk");
  WriteFile(root() + "/sub/f", "ok");
  Result<std::vector<ObjectInfo>> all = store_->List("");
  GRANARY_ASSERT_OK(all);
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].key, "sub/f");
  EXPECT_EQ((*all)[1].key, "x/y");
  EXPECT_GT((*all)[1].mtime_ns, 0);
}

TEST_F(LocalStoreTest, DirectoryIsNotAnObject) {
  GRANARY_ASSERT_OK(store_->Put("dir/obj", "x"));
  EXPECT_EQ(store_->Stat("dir").status().code(), StatusCode::kNotFound);
  std::string buf(4, '\0');
  EXPECT_EQ(store_->Get("dir", 0, AsWritableBytes(buf)).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->Delete("dir").code(), StatusCode::kNotFound);
}

TEST_F(LocalStoreTest, FifoInRootDoesNotHang) {
  ASSERT_EQ(mkfifo((root() + "/fifo").c_str(), 0644), 0);
  std::string buf(4, '\0');
  EXPECT_EQ(store_->Get("fifo", 0, AsWritableBytes(buf)).status().code(), StatusCode::kNotFound);
}

TEST_F(LocalStoreTest, SmallDirectIoThreshold) {
  // Every transfer of 4 KiB or more takes the O_DIRECT path.
  StoreOptions options;
  options.direct_io_min_bytes = 4096;
  Result<std::unique_ptr<ObjectStore>> store = NewLocalStore(root(), options);
  GRANARY_ASSERT_OK(store);
  const std::string data = Payload(3, 100000);
  GRANARY_ASSERT_OK((*store)->Put("d", data));
  EXPECT_EQ((*store)->GetAll("d").value_or(""), data);
  WriterOptions writer_options;
  writer_options.part_bytes = 16384;
  Result<std::unique_ptr<ObjectWriter>> writer = (*store)->NewWriter("w", writer_options);
  GRANARY_ASSERT_OK(writer);
  GRANARY_ASSERT_OK((*writer)->Append(AsBytes(data)));
  GRANARY_ASSERT_OK((*writer)->Commit());
  EXPECT_EQ(ReadFile(root() + "/w"), data);
}


TEST_F(LocalStoreTest, GetManyIntoMisalignedMemoryReadsEveryRangeExactly) {
  // Destinations only 64-byte aligned (as torch allocates) take O_DIRECT reads through bounce
  // buffers; more ranges than the bounce pool holds fall back to buffered reads. Both must
  // return exactly the bytes, at any offset, up to the end of the object.
  const std::string data = Payload(7, (40u << 20) + 12345);
  GRANARY_ASSERT_OK(store_->Put("big", data));
  GRANARY_ASSERT_OK_AND_ASSIGN(AlignedBuffer memory, AlignedBuffer::Allocate(data.size() + 8192));
  std::byte* base = memory.data() + 64;
  std::vector<ReadOp> ops;
  std::vector<std::pair<uint64_t, size_t>> ranges;
  size_t at = 0;
  for (uint64_t offset : {uint64_t{0}, uint64_t{4097}, uint64_t{5u << 20}, uint64_t{9u << 20} + 3}) {
    for (size_t length : {size_t{1u << 20}, size_t{(4u << 20) + 100}, size_t{3u << 20}}) {
      ranges.emplace_back(offset + at % 4096, length);
      at += length;
    }
  }
  ranges.emplace_back(data.size() - 2000000, 3000000);  // runs past the end
  size_t dest_at = 0;
  for (auto [offset, length] : ranges) {
    ReadOp& op = ops.emplace_back();
    op.key = "big";
    op.offset = offset;
    op.dest = std::span(base + dest_at % (4u << 20), length);
    dest_at += 4096 + 64;
  }
  // The destinations overlap each other, so check each op on its own after its own batch too.
  for (size_t i = 0; i < ops.size(); ++i) {
    GRANARY_ASSERT_OK(store_->GetMany(std::span(&ops[i], 1)));
    GRANARY_ASSERT_OK(ops[i].status);
    const size_t want = std::min<uint64_t>(ops[i].dest.size(), data.size() - ops[i].offset);
    ASSERT_EQ(ops[i].bytes_read, want) << i;
    ASSERT_EQ(std::memcmp(ops[i].dest.data(), data.data() + ops[i].offset, want), 0) << i;
  }
  // One batch of many misaligned 4 MiB ranges into separate memory: more than the pool lends.
  GRANARY_ASSERT_OK_AND_ASSIGN(AlignedBuffer big, AlignedBuffer::Allocate(45 * ((4u << 20) + 4096) + 8192));
  std::vector<ReadOp> batch;
  for (uint64_t offset = 100; offset + (4u << 20) <= data.size(); offset += (1u << 20) + 7) {
    ReadOp& op = batch.emplace_back();
    op.key = "big";
    op.offset = offset;
    op.dest = std::span(big.data() + 64 + (batch.size() - 1) * ((4u << 20) + 4096), 4u << 20);
    if (batch.size() == 45) break;
  }
  GRANARY_ASSERT_OK(store_->GetMany(batch));
  for (const ReadOp& op : batch) {
    GRANARY_ASSERT_OK(op.status);
    ASSERT_EQ(op.bytes_read, op.dest.size());
    ASSERT_EQ(std::memcmp(op.dest.data(), data.data() + op.offset, op.dest.size()), 0) << op.offset;
  }
}

}  // namespace
}  // namespace granary
