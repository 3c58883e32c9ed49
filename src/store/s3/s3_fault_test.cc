// The S3Store under faults: moto's server (a real S3 implementation, started by the test) behind
// a fault-injecting proxy (testing/fault_proxy.h) that answers 503 SlowDown, cuts bodies short,
// resets connections, stalls, or answers 200 with an <Error> body. The client must retry and
// succeed, or fail cleanly naming the key; it must never return short data as success, and a
// failed writer must leave neither an object nor a pending multipart upload.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/testing/test_util.h"
#include "store/s3/s3_store.h"
#include "store/s3/s3_transport.h"
#include "store/s3/testing/fault_proxy.h"
#include "store/s3/testing/moto_server.h"
#include "store/testing/test_util.h"

namespace granary::s3::testing {
namespace {

using granary::testing::AsBytes;
using granary::testing::AsWritableBytes;
using granary::testing::Payload;

class S3FaultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    Result<std::unique_ptr<MotoServer>> moto = MotoServer::Start();
    ASSERT_TRUE(moto.ok()) << moto.status().ToString();
    moto_ = std::move(*moto).release();
  }
  static void TearDownTestSuite() {
    delete moto_;
    moto_ = nullptr;
  }

  void SetUp() override {
    GRANARY_ASSERT_OK_AND_ASSIGN(proxy_, FaultProxy::Start("127.0.0.1", moto_->port()));
    settings_.bucket = "granary-faults";
    settings_.prefix = "p";
    settings_.scheme = "http";
    settings_.host = proxy_->endpoint().substr(7);
    settings_.region = "us-east-1";
    settings_.credentials = {"test", "test", ""};  // moto wants a signature, any will do
    settings_.create_bucket = true;
    options_.transport.retry.base = std::chrono::milliseconds(1);
    options_.transport.retry.cap = std::chrono::milliseconds(20);
    options_.transport.retry.max_attempts = 4;
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, NewS3Store(settings_, options_));
    GRANARY_ASSERT_OK_AND_ASSIGN(raw_, Transport::Create(settings_, options_.transport));
  }

  // Multipart uploads still pending in the bucket.
  std::string PendingUploads() {
    Call call;
    call.request.query = {{"uploads", ""}};
    raw_->Run(call);
    EXPECT_TRUE(call.response.ok()) << raw_->StatusOf(call).ToString();
    return call.response.body.find("<UploadId>") == std::string::npos ? "" : call.response.body;
  }

  static MotoServer* moto_;
  std::unique_ptr<FaultProxy> proxy_;
  S3Settings settings_;
  S3StoreOptions options_;
  std::unique_ptr<ObjectStore> store_;
  std::unique_ptr<Transport> raw_;
};

MotoServer* S3FaultTest::moto_ = nullptr;

TEST_F(S3FaultTest, SlowDownAndServerErrorsAreRetried) {
  const std::string data = Payload(1, 300000);
  proxy_->AddRule({.method = "PUT", .status = 503, .s3_code = "SlowDown", .times = 2});
  GRANARY_ASSERT_OK(store_->Put("obj", data));
  proxy_->AddRule({.method = "GET", .status = 500, .s3_code = "InternalError", .times = 1});
  proxy_->AddRule({.method = "GET", .status = 429, .s3_code = "TooManyRequests", .times = 1});
  EXPECT_EQ(store_->GetAll("obj").value_or(""), data);
  EXPECT_EQ(proxy_->faults(), 4);
}

TEST_F(S3FaultTest, PersistentSlowDownFailsNamingKeyStatusAndCode) {
  proxy_->AddRule({.method = "PUT", .status = 503, .s3_code = "SlowDown", .times = -1});
  Status s = store_->Put("dir/obj", "x");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  for (const char* part : {"s3://granary-faults/p/dir/obj", "503", "SlowDown", "4 attempts"}) {
    EXPECT_NE(s.message().find(part), std::string::npos) << part << " in " << s.ToString();
  }
}

TEST_F(S3FaultTest, TruncatedAndResetBodiesAreRetriedNeverReturnedShort) {
  const std::string data = Payload(2, 2u << 20);
  GRANARY_ASSERT_OK(store_->Put("obj", data));
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kTruncateBody, .after_body_bytes = 1000});
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kResetMidBody, .after_body_bytes = 70000});
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kResetBeforeResponse});
  std::string got(data.size(), '\0');
  GRANARY_ASSERT_OK_AND_ASSIGN(size_t n, store_->Get("obj", 0, AsWritableBytes(got)));
  EXPECT_EQ(n, data.size());
  EXPECT_EQ(got, data);
  EXPECT_EQ(proxy_->faults(), 3);

  // Every attempt cut short: an error, not a short read.
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kTruncateBody, .after_body_bytes = 5000,
                   .times = -1});
  Result<size_t> short_read = store_->Get("obj", 100, AsWritableBytes(got));
  EXPECT_EQ(short_read.status().code(), StatusCode::kUnavailable) << short_read.status().ToString();
  EXPECT_NE(short_read.status().message().find("p/obj"), std::string::npos);
  std::vector<ReadOp> ops(3);
  for (ReadOp& op : ops) {
    op.key = "obj";
    op.dest = AsWritableBytes(got);
  }
  GRANARY_ASSERT_OK(store_->GetMany(ops));
  for (const ReadOp& op : ops) EXPECT_EQ(op.status.code(), StatusCode::kUnavailable);
}

TEST_F(S3FaultTest, StalledRequestTimesOutAndIsRetried) {
  options_.transport.retry.fixed_timeout = std::chrono::milliseconds(300);
  GRANARY_ASSERT_OK_AND_ASSIGN(store_, NewS3Store(settings_, options_));
  GRANARY_ASSERT_OK(store_->Put("obj", "value"));
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kDelay,
                   .delay = std::chrono::milliseconds(2000)});
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(store_->GetAll("obj").value_or(""), "value");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1900));
}

TEST_F(S3FaultTest, ErrorInsideA200CompleteIsRetried) {
  const std::string data = Payload(3, 11u << 20);
  proxy_->AddRule({.method = "POST", .target_contains = "uploadId=", .status = 200,
                   .s3_code = "InternalError"});
  WriterOptions w;
  w.part_bytes = 5u << 20;
  GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectWriter> writer, store_->NewWriter("big", w));
  GRANARY_ASSERT_OK(writer->Append(AsBytes(data)));
  GRANARY_ASSERT_OK(writer->Commit());
  EXPECT_EQ(proxy_->faults(), 1);
  EXPECT_EQ(store_->GetAll("big").value_or(""), data);
  EXPECT_EQ(PendingUploads(), "");
}

TEST_F(S3FaultTest, FailedPartAbortsTheUploadAndKeepsTheOldObject) {
  GRANARY_ASSERT_OK(store_->Put("big", "old"));
  proxy_->AddRule({.method = "PUT", .target_contains = "partNumber=2", .status = 403,
                   .s3_code = "AccessDenied", .times = -1});
  WriterOptions w;
  w.part_bytes = 5u << 20;
  GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectWriter> writer, store_->NewWriter("big", w));
  const std::string data = Payload(4, 16u << 20);
  Status s = writer->Append(AsBytes(data));
  if (s.ok()) s = writer->Commit();
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s.ToString();
  EXPECT_NE(s.message().find("part 2"), std::string::npos) << s.ToString();
  // Every later call repeats the error.
  EXPECT_EQ(writer->Commit().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(store_->GetAll("big").value_or(""), "old");
  EXPECT_EQ(PendingUploads(), "");
}

TEST_F(S3FaultTest, ManyReadsInFlightSurviveScatteredFaults) {
  const std::string data = Payload(5, 1u << 20);
  GRANARY_ASSERT_OK(store_->Put("obj", data));
  proxy_->AddRule({.method = "GET", .status = 503, .s3_code = "SlowDown", .times = 5});
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kTruncateBody, .after_body_bytes = 10,
                   .times = 5});
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kResetBeforeResponse, .times = 5});
  constexpr size_t kOps = 60;
  std::vector<std::string> bufs(kOps, std::string(4096, '\0'));
  std::vector<ReadOp> ops(kOps);
  for (size_t i = 0; i < kOps; ++i) {
    ops[i].key = "obj";
    ops[i].offset = i * 10007;
    ops[i].dest = AsWritableBytes(bufs[i]);
  }
  GRANARY_ASSERT_OK(store_->GetMany(ops));
  for (size_t i = 0; i < kOps; ++i) {
    GRANARY_ASSERT_OK(ops[i].status) << i;
    EXPECT_EQ(bufs[i], data.substr(ops[i].offset, 4096)) << i;
  }
  EXPECT_EQ(proxy_->faults(), 15);
}

}  // namespace
}  // namespace granary::s3::testing
