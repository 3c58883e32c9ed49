// FaultProxy against a real moto server: every FaultKind does what fault_proxy.h promises, as
// seen by libcurl (the S3 driver's HTTP stack), and rules match and count down as documented.
#include "store/s3/testing/fault_proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "core/testing/test_util.h"
#include "store/s3/testing/http_test_client.h"
#include "store/s3/testing/moto_server.h"

namespace granary::s3::testing {
namespace {

constexpr char kBucket[] = "fault-proxy";

// 1 MiB of a non-repeating-looking pattern, so an offset error shows up as a mismatch.
std::string Pattern(size_t bytes) {
  std::string s(bytes, '\0');
  for (size_t i = 0; i < bytes; ++i) s[i] = static_cast<char>((i * 131 + i / 977) & 0xff);
  return s;
}

// Entries in a /proc/self directory: open fds ("fd") or live threads ("task").
int CountProc(const char* dir) {
  int n = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string("/proc/self/") + dir)) {
    (void)entry;
    ++n;
  }
  return n;
}

class FaultProxyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto moto = MotoServer::Start();
    if (!moto.ok()) {
      start_error_ = moto.status();
      return;
    }
    moto_ = std::move(moto).value().release();
    const std::string bucket = moto_->endpoint() + "/" + kBucket;
    put_bucket_status_ = Http({.method = "PUT", .url = bucket}).status;
    put_object_status_ =
        Http({.method = "PUT", .url = bucket + "/obj", .body = Pattern(1 << 20)}).status;
  }
  static void TearDownTestSuite() {
    delete moto_;
    moto_ = nullptr;
  }

  void SetUp() override {
    GRANARY_ASSERT_OK(start_error_);
    ASSERT_EQ(put_bucket_status_, 200);
    ASSERT_EQ(put_object_status_, 200);
    GRANARY_ASSERT_OK_AND_ASSIGN(proxy_, FaultProxy::Start("127.0.0.1", moto_->port()));
  }

  // URL of `key` in the test bucket, through the proxy.
  std::string ProxyUrl(const std::string& key) const {
    return proxy_->endpoint() + "/" + kBucket + "/" + key;
  }
  std::string MotoUrl(const std::string& key) const {
    return moto_->endpoint() + "/" + kBucket + "/" + key;
  }

  static inline MotoServer* moto_ = nullptr;
  static inline Status start_error_;
  static inline long put_bucket_status_ = 0;
  static inline long put_object_status_ = 0;
  std::unique_ptr<FaultProxy> proxy_;
};

TEST_F(FaultProxyTest, PassesRequestsThroughUnchanged) {
  HttpResponse r = Http({.url = ProxyUrl("obj")});
  EXPECT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body == Pattern(1 << 20)) << "body of " << r.body.size() << " bytes differs";

  HttpResponse put = Http({.method = "PUT", .url = ProxyUrl("via-proxy"), .body = "abc"});
  EXPECT_EQ(put.status, 200);
  EXPECT_EQ(Http({.url = MotoUrl("via-proxy")}).body, "abc");
  EXPECT_EQ(Http({.method = "HEAD", .url = ProxyUrl("obj")}).status, 200);
  EXPECT_EQ(Http({.url = ProxyUrl("missing")}).status, 404);
  EXPECT_EQ(proxy_->requests(), 4);  // one GET went straight to moto
  EXPECT_EQ(proxy_->faults(), 0);
}

TEST_F(FaultProxyTest, RespondAnswersWithS3ErrorWithoutForwarding) {
  proxy_->AddRule({.method = "PUT", .kind = FaultKind::kRespond, .status = 503,
                   .s3_code = "SlowDown"});
  HttpResponse r = Http({.method = "PUT", .url = ProxyUrl("never-stored"), .body = "x"});
  EXPECT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(r.body.find("<Error><Code>SlowDown</Code>"), std::string::npos) << r.body;
  EXPECT_EQ(Http({.url = MotoUrl("never-stored")}).status, 404);
  EXPECT_EQ(proxy_->faults(), 1);
}

TEST_F(FaultProxyTest, RespondBeforeBodyWhenClientExpectsContinue) {
  proxy_->AddRule({.kind = FaultKind::kRespond, .status = 500, .s3_code = "InternalError"});
  HttpResponse r = Http({.method = "PUT", .url = ProxyUrl("big"), .body = Pattern(2 << 20),
                         .headers = {"Expect: 100-continue"}});
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.find("<Code>InternalError</Code>"), std::string::npos) << r.body;
}

TEST_F(FaultProxyTest, ForwardsUploadsThatExpectContinue) {
  const std::string body = Pattern(3 << 20);
  HttpResponse r = Http({.method = "PUT", .url = ProxyUrl("big"), .body = body,
                         .headers = {"Expect: 100-continue"}});
  EXPECT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(Http({.url = MotoUrl("big")}).body == body);
}

TEST_F(FaultProxyTest, TruncateBodyEndsCleanlyShortOfContentLength) {
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kTruncateBody,
                   .after_body_bytes = 1000});
  HttpResponse r = Http({.url = ProxyUrl("obj")});
  EXPECT_EQ(r.code, CURLE_PARTIAL_FILE) << curl_easy_strerror(r.code);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, Pattern(1 << 20).substr(0, 1000));
  EXPECT_NE(r.headers.find("Content-Length: 1048576"), std::string::npos) << r.headers;
}

TEST_F(FaultProxyTest, ResetMidBodyIsAReceiveError) {
  proxy_->AddRule({.method = "GET", .kind = FaultKind::kResetMidBody,
                   .after_body_bytes = 64 * 1024});
  HttpResponse r = Http({.url = ProxyUrl("obj")});
  EXPECT_EQ(r.code, CURLE_RECV_ERROR) << curl_easy_strerror(r.code);
  EXPECT_EQ(r.status, 200);
  EXPECT_LE(r.body.size(), 64u * 1024);
  EXPECT_EQ(r.body, Pattern(1 << 20).substr(0, r.body.size()));
}

TEST_F(FaultProxyTest, ResetBeforeResponseForwardsNothing) {
  proxy_->AddRule({.kind = FaultKind::kResetBeforeResponse});
  HttpResponse r = Http({.method = "PUT", .url = ProxyUrl("reset"), .body = "x"});
  EXPECT_TRUE(r.code == CURLE_RECV_ERROR || r.code == CURLE_GOT_NOTHING)
      << curl_easy_strerror(r.code);
  EXPECT_EQ(r.status, 0);
  // Without Expect: 100-continue the body is read first; the outcome is the same.
  proxy_->AddRule({.kind = FaultKind::kResetBeforeResponse});
  r = Http({.method = "PUT", .url = ProxyUrl("reset"), .body = "x", .headers = {"Expect:"}});
  EXPECT_TRUE(r.code == CURLE_RECV_ERROR || r.code == CURLE_GOT_NOTHING)
      << curl_easy_strerror(r.code);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(Http({.url = MotoUrl("reset")}).status, 404);
  EXPECT_EQ(proxy_->faults(), 2);
}

TEST_F(FaultProxyTest, DelayHoldsTheRequestBack) {
  proxy_->AddRule({.kind = FaultKind::kDelay, .delay = std::chrono::seconds(30)});
  HttpResponse r = Http({.url = ProxyUrl("obj"), .timeout_ms = 300});
  EXPECT_EQ(r.code, CURLE_OPERATION_TIMEDOUT) << curl_easy_strerror(r.code);
  proxy_->AddRule({.kind = FaultKind::kDelay, .delay = std::chrono::milliseconds(50)});
  EXPECT_EQ(Http({.url = ProxyUrl("obj")}).status, 200);
  EXPECT_EQ(proxy_->faults(), 2);
  // The 30 s sleeper is still in flight: destroying the proxy must wake it, not wait.
}

TEST_F(FaultProxyTest, TimesCountsDownAndMinusOneIsForever) {
  proxy_->AddRule({.kind = FaultKind::kRespond, .times = 2});
  EXPECT_EQ(Http({.url = ProxyUrl("obj")}).status, 503);
  EXPECT_EQ(Http({.url = ProxyUrl("obj")}).status, 503);
  EXPECT_EQ(Http({.url = ProxyUrl("obj")}).status, 200);

  proxy_->AddRule({.kind = FaultKind::kRespond, .status = 500, .times = -1});
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Http({.url = ProxyUrl("obj")}).status, 500);
  proxy_->ClearRules();
  EXPECT_EQ(Http({.url = ProxyUrl("obj")}).status, 200);
  EXPECT_EQ(proxy_->requests(), 8);
  EXPECT_EQ(proxy_->faults(), 6);
}

TEST_F(FaultProxyTest, RulesMatchByMethodAndTargetInOrder) {
  proxy_->AddRule({.method = "PUT", .kind = FaultKind::kRespond, .times = -1});
  proxy_->AddRule({.target_contains = "uploads", .kind = FaultKind::kRespond, .status = 500,
                   .times = -1});
  proxy_->AddRule({.target_contains = "list-type=2", .kind = FaultKind::kRespond,
                   .status = 404, .s3_code = "NoSuchBucket", .times = -1});
  EXPECT_EQ(Http({.url = ProxyUrl("obj")}).status, 200);  // GET matches none
  EXPECT_EQ(Http({.method = "PUT", .url = ProxyUrl("k"), .body = "x"}).status, 503);
  EXPECT_EQ(Http({.method = "POST", .url = ProxyUrl("k?uploads")}).status, 500);
  EXPECT_EQ(Http({.method = "PUT", .url = ProxyUrl("k?uploads")}).status, 503);  // first wins
  HttpResponse list =
      Http({.url = proxy_->endpoint() + "/" + kBucket + "?list-type=2&prefix=o"});
  EXPECT_EQ(list.status, 404);
  EXPECT_NE(list.body.find("NoSuchBucket"), std::string::npos);
}

TEST_F(FaultProxyTest, DestructorUnblocksIdleAndHalfSentConnections) {
  // Two clients that never finish a request: the proxy's threads block reading them.
  int fds[2];
  for (int& fd : fds) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(proxy_->port()));
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ASSERT_GT(::send(fds[1], "GET /fault-proxy/obj HTTP/1.1\r\nHo", 33, 0), 0);
  proxy_.reset();  // must return (a hang here fails the test by ctest's timeout)
  char c;
  for (int fd : fds) {
    EXPECT_LE(::recv(fd, &c, 1, 0), 0);  // the proxy closed its end
    ::close(fd);
  }
}

TEST_F(FaultProxyTest, LeavesNoThreadsOrSocketsBehind) {
  proxy_.reset();
  const int fds_before = CountProc("fd");
  const int threads_before = CountProc("task");
  GRANARY_ASSERT_OK_AND_ASSIGN(proxy_, FaultProxy::Start("127.0.0.1", moto_->port()));
  proxy_->AddRule({.kind = FaultKind::kResetMidBody, .after_body_bytes = 10});
  proxy_->AddRule({.kind = FaultKind::kTruncateBody, .after_body_bytes = 10});
  proxy_->AddRule({.kind = FaultKind::kResetBeforeResponse});
  proxy_->AddRule({.kind = FaultKind::kRespond});
  for (int i = 0; i < 8; ++i) Http({.url = ProxyUrl("obj")});
  proxy_.reset();
  EXPECT_EQ(CountProc("fd"), fds_before);
  // A joined thread can linger in /proc/self/task for a moment (its kernel exit completes
  // after pthread_join returns), here and in `threads_before`: wait for the count to settle.
  int threads_after = CountProc("task");
  for (int i = 0; i < 500 && threads_after > threads_before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    threads_after = CountProc("task");
  }
  EXPECT_LE(threads_after, threads_before);
}

}  // namespace
}  // namespace granary::s3::testing
