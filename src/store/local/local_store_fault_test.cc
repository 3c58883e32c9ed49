// LocalStore under injected faults: full disk, EIO from reads, writes and fsyncs, and power loss
// (FaultInjectingFileSystem::Crash drops unsynced data and undoes unsynced renames).
#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <vector>

#include "core/testing/test_util.h"
#include "io/fault_injection.h"
#include "io/file_system.h"
#include "store/local/local_store.h"
#include "store/testing/test_util.h"

namespace granary {
namespace {

using testing::AsBytes;
using testing::AsWritableBytes;
using testing::Payload;
using testing::ScratchDir;

class LocalStoreFaultTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  void Reopen() {
    store_.reset();
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, NewLocalStore(root(), StoreOptions{}, &fault_));
  }

  std::string root() const { return dir_.Join("root"); }

  // Nothing but the format file and an empty tmp directory under .granary.
  void ExpectNoTempFiles() {
    for (const auto& entry : std::filesystem::directory_iterator(root() + "/.granary/tmp")) {
      ADD_FAILURE() << "leftover " << entry.path();
    }
  }

  // The error names the key and its path, and the old value is still there.
  void ExpectFailureKeptOld(const Status& s, StatusCode code, const std::string& key,
                            const std::string& old_value) {
    EXPECT_EQ(s.code(), code) << s.ToString();
    EXPECT_NE(s.message().find("'" + key + "'"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find(root() + "/" + key), std::string::npos) << s.ToString();
    EXPECT_EQ(store_->GetAll(key).value_or("<missing>"), old_value);
    ExpectNoTempFiles();
  }

  ScratchDir dir_{"fault"};
  FaultInjectingFileSystem fault_{&FileSystem::Default()};
  std::unique_ptr<ObjectStore> store_;
};

TEST_F(LocalStoreFaultTest, DiskFullDuringPutIsResourceExhausted) {
  GRANARY_ASSERT_OK(store_->Put("ckpt/a", "old"));
  fault_.SetDiskFullAfter(100000);
  const std::string big = Payload(1, 3u << 20);
  ExpectFailureKeptOld(store_->Put("ckpt/a", big), StatusCode::kResourceExhausted, "ckpt/a",
                       "old");
  // Aligned source (O_DIRECT path) too.
  Result<AlignedBuffer> aligned = AlignedBuffer::Allocate(3u << 20);
  GRANARY_ASSERT_OK(aligned);
  ExpectFailureKeptOld(store_->Put("ckpt/a", aligned->span()), StatusCode::kResourceExhausted,
                       "ckpt/a", "old");
  ExpectFailureKeptOld(store_->PutIfAbsent("ckpt/b", big), StatusCode::kResourceExhausted,
                       "ckpt/b", "<missing>");
  fault_.ClearDiskFull();
  GRANARY_ASSERT_OK(store_->Put("ckpt/a", big));
  EXPECT_EQ(store_->GetAll("ckpt/a").value_or(""), big);
}

TEST_F(LocalStoreFaultTest, DiskFullAtWriterCommitIsResourceExhausted) {
  GRANARY_ASSERT_OK(store_->Put("w", "old"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  // Every full part fits; the tail written by Commit does not.
  const std::string data = Payload(2, (3u << 20) + 1000);
  fault_.SetDiskFullAfter((3u << 20) + 500);
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("w", options);
  GRANARY_ASSERT_OK(writer);
  GRANARY_ASSERT_OK((*writer)->Append(AsBytes(data)));
  Status s = (*writer)->Commit();
  ExpectFailureKeptOld(s, StatusCode::kResourceExhausted, "w", "old");
  EXPECT_EQ((*writer)->Commit(), s);  // the writer stays failed with the same error
  EXPECT_EQ((*writer)->Append(AsBytes("x")), s);
}

TEST_F(LocalStoreFaultTest, DiskFullInBackgroundPartFailsTheWriter) {
  GRANARY_ASSERT_OK(store_->Put("w", "old"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  fault_.SetDiskFullAfter((2u << 20) + 100);
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("w", options);
  GRANARY_ASSERT_OK(writer);
  const std::string data = Payload(3, 6u << 20);
  Status first;
  for (size_t pos = 0; pos < data.size() && first.ok(); pos += 500000) {
    first = (*writer)->Append(AsBytes(std::string_view(data).substr(pos, 500000)));
  }
  Status commit = (*writer)->Commit();
  if (!first.ok()) {
    EXPECT_EQ(commit, first);
  }
  ExpectFailureKeptOld(commit, StatusCode::kResourceExhausted, "w", "old");
}

TEST_F(LocalStoreFaultTest, EioOnWriteOrFsyncKeepsOldObject) {
  GRANARY_ASSERT_OK(store_->Put("k", "old"));
  fault_.FailNthWrite(1, EIO);
  ExpectFailureKeptOld(store_->Put("k", "new"), StatusCode::kInternal, "k", "old");
  fault_.FailNthSync(1, EIO);  // the temp file's fsync
  ExpectFailureKeptOld(store_->Put("k", "new"), StatusCode::kInternal, "k", "old");

  WriterOptions options;
  options.part_bytes = 1u << 20;
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("k", options);
  GRANARY_ASSERT_OK(writer);
  GRANARY_ASSERT_OK((*writer)->Append(AsBytes(Payload(4, (2u << 20) + 7))));
  fault_.FailNthSync(1, EIO);
  ExpectFailureKeptOld((*writer)->Commit(), StatusCode::kInternal, "k", "old");
}

TEST_F(LocalStoreFaultTest, EioOnGetNamesKeyAndPath) {
  const std::string small = Payload(8, 5000);
  const std::string big = Payload(9, 3u << 20);  // O_DIRECT path (default threshold)
  GRANARY_ASSERT_OK(store_->Put("ckpt/small", small));
  GRANARY_ASSERT_OK(store_->Put("ckpt/big", big));
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"ckpt/small", small},
                                   {"ckpt/big", big}}) {
    std::string buf(value.size(), '\0');
    fault_.FailNthRead(1, EIO);
    Result<size_t> n = store_->Get(key, 0, AsWritableBytes(buf));
    ASSERT_FALSE(n.ok()) << key;
    EXPECT_EQ(n.status().code(), StatusCode::kInternal) << n.status().ToString();
    EXPECT_EQ(n.status().sys_errno(), EIO);
    EXPECT_NE(n.status().message().find("'" + key + "'"), std::string::npos)
        << n.status().ToString();
    EXPECT_NE(n.status().message().find(root() + "/" + key), std::string::npos)
        << n.status().ToString();
    n = store_->Get(key, 0, AsWritableBytes(buf));  // one-shot: the next read succeeds
    GRANARY_ASSERT_OK(n);
    EXPECT_EQ(*n, value.size());
    EXPECT_EQ(buf, value);
  }
}

TEST_F(LocalStoreFaultTest, EioInGetManyFailsOnlyTheAffectedOp) {
  std::vector<std::string> values;
  for (int i = 0; i < 4; ++i) {
    values.push_back(Payload(10 + i, 3000));
    GRANARY_ASSERT_OK(store_->Put("k" + std::to_string(i), values.back()));
  }
  // Five ops, two of them on the same object; each is one read request.
  const std::vector<std::pair<int, uint64_t>> plan = {{2, 0}, {0, 100}, {2, 1000}, {3, 0}, {1, 7}};
  for (uint64_t nth = 1; nth <= plan.size(); ++nth) {
    std::vector<std::string> bufs(plan.size(), std::string(500, '\0'));
    std::vector<ReadOp> ops(plan.size());
    for (size_t i = 0; i < plan.size(); ++i) {
      ops[i].key = "k" + std::to_string(plan[i].first);
      ops[i].offset = plan[i].second;
      ops[i].dest = AsWritableBytes(bufs[i]);
    }
    fault_.FailNthRead(nth, EIO);
    GRANARY_ASSERT_OK(store_->GetMany(ops));
    int failed = 0;
    for (size_t i = 0; i < ops.size(); ++i) {
      const std::string& key = ops[i].key;
      if (!ops[i].status.ok()) {
        ++failed;
        EXPECT_EQ(ops[i].status.sys_errno(), EIO) << ops[i].status.ToString();
        EXPECT_NE(ops[i].status.message().find("'" + key + "'"), std::string::npos)
            << ops[i].status.ToString();
        EXPECT_NE(ops[i].status.message().find(root() + "/" + key), std::string::npos)
            << ops[i].status.ToString();
        EXPECT_EQ(ops[i].bytes_read, 0u);
        continue;
      }
      EXPECT_EQ(ops[i].bytes_read, 500u) << key;
      EXPECT_EQ(bufs[i], values[plan[i].first].substr(plan[i].second, 500)) << key;
    }
    EXPECT_EQ(failed, 1) << "read " << nth;
  }
  fault_.ClearFaults();
}

TEST_F(LocalStoreFaultTest, ReadsOpenThroughTheFileSystem) {
  GRANARY_ASSERT_OK(store_->Put("a", "alpha"));
  GRANARY_ASSERT_OK(store_->Put("b", "beta"));
  // Stat, Get and GetMany open their objects through the FileSystem, so an open fault hits them.
  fault_.FailNthOpen(1, EACCES);
  Status s = store_->Stat("a").status();
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s.ToString();
  EXPECT_NE(s.message().find("'a'"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find(root() + "/a"), std::string::npos) << s.ToString();
  std::string buf(5, '\0');
  fault_.FailNthOpen(1, EACCES);
  EXPECT_EQ(store_->Get("a", 0, AsWritableBytes(buf)).status().sys_errno(), EACCES);
  std::string buf_a(5, '\0'), buf_b(4, '\0');
  std::vector<ReadOp> ops(2);
  ops[0].key = "a";
  ops[0].dest = AsWritableBytes(buf_a);
  ops[1].key = "b";
  ops[1].dest = AsWritableBytes(buf_b);
  fault_.FailNthOpen(2, EACCES);  // objects are opened in key order: "b" fails
  GRANARY_ASSERT_OK(store_->GetMany(ops));
  GRANARY_EXPECT_OK(ops[0].status);
  EXPECT_EQ(buf_a, "alpha");
  EXPECT_EQ(ops[1].status.sys_errno(), EACCES) << ops[1].status.ToString();
  EXPECT_NE(ops[1].status.message().find(root() + "/b"), std::string::npos);
  EXPECT_EQ(store_->Stat("b").value().size_bytes, 4u);
}

TEST_F(LocalStoreFaultTest, CrashAfterPutReturnedKeepsNewObjects) {
  GRANARY_ASSERT_OK(store_->Put("k", "old"));
  const std::string big = Payload(5, (2u << 20) + 3);
  GRANARY_ASSERT_OK(store_->Put("k", "new"));
  GRANARY_ASSERT_OK(store_->Put("fresh/dirs/obj", big));
  GRANARY_ASSERT_OK(store_->PutIfAbsent("manifest", "v1"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("streamed/obj", options);
  GRANARY_ASSERT_OK(writer);
  GRANARY_ASSERT_OK((*writer)->Append(AsBytes(big)));
  GRANARY_ASSERT_OK((*writer)->Commit());
  writer->reset();

  GRANARY_ASSERT_OK(fault_.Crash());
  Reopen();
  EXPECT_EQ(store_->GetAll("k").value_or(""), "new");
  EXPECT_EQ(store_->GetAll("fresh/dirs/obj").value_or(""), big);
  EXPECT_EQ(store_->GetAll("manifest").value_or(""), "v1");
  EXPECT_EQ(store_->GetAll("streamed/obj").value_or(""), big);
  ExpectNoTempFiles();
}

TEST_F(LocalStoreFaultTest, CrashBeforeWriterCommitKeepsOldObject) {
  GRANARY_ASSERT_OK(store_->Put("k", "old"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  options.max_parts_in_flight = 1;  // Append returns with every full part written
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("k", options);
  GRANARY_ASSERT_OK(writer);
  GRANARY_ASSERT_OK((*writer)->Append(AsBytes(Payload(6, (3u << 20) + 512))));
  GRANARY_ASSERT_OK(fault_.Crash());
  writer->reset();  // its cleanup after the "crash" must not disturb anything
  Reopen();
  EXPECT_EQ(store_->GetAll("k").value_or(""), "old");
  EXPECT_EQ(store_->List("").value().size(), 1u);
  ExpectNoTempFiles();
}

TEST_F(LocalStoreFaultTest, CrashWithUnsyncedTempLeavesNothing) {
  GRANARY_ASSERT_OK(store_->Put("k", "old"));
  // The temp file's fsync fails, so the rename never happens; a crash then drops the data.
  fault_.FailNthSync(1, EIO);
  EXPECT_FALSE(store_->Put("k", Payload(7, 5000)).ok());
  GRANARY_ASSERT_OK(fault_.Crash());
  Reopen();
  EXPECT_EQ(store_->GetAll("k").value_or(""), "old");
  ExpectNoTempFiles();
}

}  // namespace
}  // namespace granary
