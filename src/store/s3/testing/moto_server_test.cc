// MotoServer starts and stops a real moto, and moto implements the S3 behaviours the driver's
// tests rely on. If one of the MotoBehaviour tests fails after a moto upgrade, the driver test
// that depends on the behaviour has to move to Ceph RGW (or be rewritten).
#include "store/s3/testing/moto_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "core/testing/test_util.h"
#include "store/s3/testing/http_test_client.h"

namespace granary::s3::testing {
namespace {

bool Listening(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

// The text between <tag> and </tag>, or "" when absent.
std::string Element(const std::string& xml, const std::string& tag) {
  const size_t begin = xml.find("<" + tag + ">");
  if (begin == std::string::npos) return "";
  const size_t start = begin + tag.size() + 2;
  return xml.substr(start, xml.find("</" + tag + ">", start) - start);
}

TEST(MotoServerTest, StartsAnswersAndStopsWithItsProcessGroup) {
  GRANARY_ASSERT_OK_AND_ASSIGN(auto moto, MotoServer::Start());
  const int port = moto->port();
  EXPECT_EQ(moto->endpoint(), "http://127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(Http({.method = "PUT", .url = moto->endpoint() + "/smoke-bucket"}).status, 200);
  moto.reset();
  EXPECT_FALSE(Listening(port));
}

class MotoBehaviourTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto moto = MotoServer::Start();
    if (!moto.ok()) {
      start_error_ = moto.status();
      return;
    }
    moto_ = std::move(moto).value().release();
    bucket_status_ = Http({.method = "PUT", .url = moto_->endpoint() + "/behaviour"}).status;
  }
  static void TearDownTestSuite() {
    delete moto_;
    moto_ = nullptr;
  }
  void SetUp() override {
    GRANARY_ASSERT_OK(start_error_);
    ASSERT_EQ(bucket_status_, 200);
  }
  static std::string Url(const std::string& rest) {
    return moto_->endpoint() + "/behaviour" + rest;
  }

  static inline MotoServer* moto_ = nullptr;
  static inline Status start_error_;
  static inline long bucket_status_ = 0;
};

// Create-only PUT (the driver's PutIfAbsent) works on moto.
TEST_F(MotoBehaviourTest, IfNoneMatchStarRefusesTheSecondPut) {
  const std::vector<std::string> create_only = {"If-None-Match: *"};
  EXPECT_EQ(Http({.method = "PUT", .url = Url("/once"), .body = "1", .headers = create_only})
                .status, 200);
  HttpResponse second =
      Http({.method = "PUT", .url = Url("/once"), .body = "2", .headers = create_only});
  EXPECT_EQ(second.status, 412);
  EXPECT_EQ(Element(second.body, "Code"), "PreconditionFailed");
  EXPECT_EQ(Http({.url = Url("/once")}).body, "1");
}

TEST_F(MotoBehaviourTest, ListObjectsV2PercentEncodesKeysWithEncodingTypeUrl) {
  ASSERT_EQ(Http({.method = "PUT", .url = Url("/enc/a%20b%2Bc%26%C3%A9"), .body = "x"}).status,
            200);
  HttpResponse list = Http({.url = Url("?list-type=2&prefix=enc/&encoding-type=url")});
  EXPECT_EQ(list.status, 200);
  EXPECT_EQ(Element(list.body, "EncodingType"), "url");
  EXPECT_EQ(Element(list.body, "Key"), "enc/a%20b%2Bc%26%C3%A9") << list.body;
  // Without encoding-type the raw key comes back (XML-escaped).
  HttpResponse raw = Http({.url = Url("?list-type=2&prefix=enc/")});
  EXPECT_EQ(Element(raw.body, "Key"), "enc/a b+c&amp;\xC3\xA9") << raw.body;
}

TEST_F(MotoBehaviourTest, RangedGetReturns206AndContentRange) {
  ASSERT_EQ(Http({.method = "PUT", .url = Url("/ranged"), .body = "0123456789"}).status, 200);
  HttpResponse r = Http({.url = Url("/ranged"), .headers = {"Range: bytes=2-5"}});
  EXPECT_EQ(r.status, 206);
  EXPECT_EQ(r.body, "2345");
  EXPECT_NE(r.headers.find("bytes 2-5/10"), std::string::npos) << r.headers;
  EXPECT_EQ(Http({.url = Url("/ranged"), .headers = {"Range: bytes=7-"}}).body, "789");
  EXPECT_EQ(Http({.url = Url("/ranged"), .headers = {"Range: bytes=20-30"}}).status, 416);
}

TEST_F(MotoBehaviourTest, MultipartUploadAssemblesParts) {
  HttpResponse init = Http({.method = "POST", .url = Url("/multi?uploads")});
  ASSERT_EQ(init.status, 200) << init.body;
  const std::string upload_id = Element(init.body, "UploadId");
  ASSERT_FALSE(upload_id.empty()) << init.body;

  // Every part but the last must be at least 5 MiB, as on S3.
  const std::string part1(5 << 20, 'a');
  const std::string part2 = "tail";
  std::string complete = "<CompleteMultipartUpload>";
  int number = 1;
  for (const std::string* part : {&part1, &part2}) {
    HttpResponse put = Http({.method = "PUT",
                             .url = Url("/multi?partNumber=" + std::to_string(number) +
                                        "&uploadId=" + upload_id),
                             .body = *part});
    ASSERT_EQ(put.status, 200) << put.body;
    const size_t etag = put.headers.find("ETag: ");
    ASSERT_NE(etag, std::string::npos) << put.headers;
    const std::string value =
        put.headers.substr(etag + 6, put.headers.find("\r\n", etag) - etag - 6);
    complete += "<Part><PartNumber>" + std::to_string(number++) + "</PartNumber><ETag>" +
                value + "</ETag></Part>";
  }
  complete += "</CompleteMultipartUpload>";
  HttpResponse done = Http({.method = "POST", .url = Url("/multi?uploadId=" + upload_id),
                            .body = complete});
  ASSERT_EQ(done.status, 200) << done.body;
  EXPECT_TRUE(Http({.url = Url("/multi")}).body == part1 + part2);
  // A too-small non-last part is refused at completion (EntityTooSmall), as on S3.
}

}  // namespace
}  // namespace granary::s3::testing
