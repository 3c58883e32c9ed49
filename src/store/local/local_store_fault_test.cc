// LocalStore under injected faults: full disk, EIO from writes and fsyncs, and power loss
// (FaultInjectingFileSystem::Crash drops unsynced data and undoes unsynced renames).
#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "io/fault_injection.h"
#include "io/file_system.h"
#include "store/local/local_store.h"
#include "store/testing/test_util.h"

namespace granary {
namespace {

using testing::AsBytes;
using testing::Payload;
using testing::ScratchDir;

#define ASSERT_OK(expr)                                    \
  do {                                                     \
    const ::granary::Status assert_ok_ = (expr);           \
    ASSERT_TRUE(assert_ok_.ok()) << assert_ok_.ToString(); \
  } while (0)

class LocalStoreFaultTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  void Reopen() {
    store_.reset();
    Result<std::unique_ptr<ObjectStore>> store = NewLocalStore(root(), StoreOptions{}, &fault_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(store).value();
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
  ASSERT_OK(store_->Put("ckpt/a", "old"));
  fault_.SetDiskFullAfter(100000);
  const std::string big = Payload(1, 3u << 20);
  ExpectFailureKeptOld(store_->Put("ckpt/a", big), StatusCode::kResourceExhausted, "ckpt/a",
                       "old");
  // Aligned source (O_DIRECT path) too.
  Result<AlignedBuffer> aligned = AlignedBuffer::Allocate(3u << 20);
  ASSERT_TRUE(aligned.ok());
  ExpectFailureKeptOld(store_->Put("ckpt/a", aligned->span()), StatusCode::kResourceExhausted,
                       "ckpt/a", "old");
  ExpectFailureKeptOld(store_->PutIfAbsent("ckpt/b", big), StatusCode::kResourceExhausted,
                       "ckpt/b", "<missing>");
  fault_.ClearDiskFull();
  ASSERT_OK(store_->Put("ckpt/a", big));
  EXPECT_EQ(store_->GetAll("ckpt/a").value_or(""), big);
}

TEST_F(LocalStoreFaultTest, DiskFullAtWriterCommitIsResourceExhausted) {
  ASSERT_OK(store_->Put("w", "old"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  // Every full part fits; the tail written by Commit does not.
  const std::string data = Payload(2, (3u << 20) + 1000);
  fault_.SetDiskFullAfter((3u << 20) + 500);
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("w", options);
  ASSERT_TRUE(writer.ok());
  ASSERT_OK((*writer)->Append(AsBytes(data)));
  Status s = (*writer)->Commit();
  ExpectFailureKeptOld(s, StatusCode::kResourceExhausted, "w", "old");
  EXPECT_EQ((*writer)->Commit(), s);  // the writer stays failed with the same error
  EXPECT_EQ((*writer)->Append(AsBytes("x")), s);
}

TEST_F(LocalStoreFaultTest, DiskFullInBackgroundPartFailsTheWriter) {
  ASSERT_OK(store_->Put("w", "old"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  fault_.SetDiskFullAfter((2u << 20) + 100);
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("w", options);
  ASSERT_TRUE(writer.ok());
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
  ASSERT_OK(store_->Put("k", "old"));
  fault_.FailNthWrite(1, EIO);
  ExpectFailureKeptOld(store_->Put("k", "new"), StatusCode::kInternal, "k", "old");
  fault_.FailNthSync(1, EIO);  // the temp file's fsync
  ExpectFailureKeptOld(store_->Put("k", "new"), StatusCode::kInternal, "k", "old");

  WriterOptions options;
  options.part_bytes = 1u << 20;
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("k", options);
  ASSERT_TRUE(writer.ok());
  ASSERT_OK((*writer)->Append(AsBytes(Payload(4, (2u << 20) + 7))));
  fault_.FailNthSync(1, EIO);
  ExpectFailureKeptOld((*writer)->Commit(), StatusCode::kInternal, "k", "old");
}

TEST_F(LocalStoreFaultTest, CrashAfterPutReturnedKeepsNewObjects) {
  ASSERT_OK(store_->Put("k", "old"));
  const std::string big = Payload(5, (2u << 20) + 3);
  ASSERT_OK(store_->Put("k", "new"));
  ASSERT_OK(store_->Put("fresh/dirs/obj", big));
  ASSERT_OK(store_->PutIfAbsent("manifest", "v1"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("streamed/obj", options);
  ASSERT_TRUE(writer.ok());
  ASSERT_OK((*writer)->Append(AsBytes(big)));
  ASSERT_OK((*writer)->Commit());
  writer->reset();

  ASSERT_OK(fault_.Crash());
  Reopen();
  EXPECT_EQ(store_->GetAll("k").value_or(""), "new");
  EXPECT_EQ(store_->GetAll("fresh/dirs/obj").value_or(""), big);
  EXPECT_EQ(store_->GetAll("manifest").value_or(""), "v1");
  EXPECT_EQ(store_->GetAll("streamed/obj").value_or(""), big);
  ExpectNoTempFiles();
}

TEST_F(LocalStoreFaultTest, CrashBeforeWriterCommitKeepsOldObject) {
  ASSERT_OK(store_->Put("k", "old"));
  WriterOptions options;
  options.part_bytes = 1u << 20;
  options.max_parts_in_flight = 1;  // Append returns with every full part written
  Result<std::unique_ptr<ObjectWriter>> writer = store_->NewWriter("k", options);
  ASSERT_TRUE(writer.ok());
  ASSERT_OK((*writer)->Append(AsBytes(Payload(6, (3u << 20) + 512))));
  ASSERT_OK(fault_.Crash());
  writer->reset();  // its cleanup after the "crash" must not disturb anything
  Reopen();
  EXPECT_EQ(store_->GetAll("k").value_or(""), "old");
  EXPECT_EQ(store_->List("").value().size(), 1u);
  ExpectNoTempFiles();
}

TEST_F(LocalStoreFaultTest, CrashWithUnsyncedTempLeavesNothing) {
  ASSERT_OK(store_->Put("k", "old"));
  // The temp file's fsync fails, so the rename never happens; a crash then drops the data.
  fault_.FailNthSync(1, EIO);
  EXPECT_FALSE(store_->Put("k", Payload(7, 5000)).ok());
  ASSERT_OK(fault_.Crash());
  Reopen();
  EXPECT_EQ(store_->GetAll("k").value_or(""), "old");
  ExpectNoTempFiles();
}

}  // namespace
}  // namespace granary
