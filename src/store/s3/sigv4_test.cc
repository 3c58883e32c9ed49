// SigV4 against AWS's published S3 example and against botocore's signer (vectors written by
// scripts/sigv4_vectors.py into testdata/sigv4_botocore.json).
#include "store/s3/sigv4.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace granary::s3 {
namespace {

TEST(SigV4Test, UriEncodeKeepsUnreservedOnly) {
  EXPECT_EQ(UriEncode("aZ09-._~", true), "aZ09-._~");
  EXPECT_EQ(UriEncode("a b+c=d&e/f", true), "a%20b%2Bc%3Dd%26e%2Ff");
  EXPECT_EQ(UriEncode("a b/c", false), "a%20b/c");
  EXPECT_EQ(UriEncode("\xc3\xbc*", true), "%C3%BC%2A");
  EXPECT_EQ(UriDecode("a%20b%2fc%C3%BC%zz%2"), "a b/c\xc3\xbc%zz%2");
  EXPECT_EQ(UriDecode(UriEncode("k =/\x01", true)), "k =/\x01");
}

TEST(SigV4Test, Sha256AndDate) {
  EXPECT_EQ(Sha256Hex(""), kEmptySha256);
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(AmzDate(std::chrono::system_clock::from_time_t(1369353600)), "20130524T000000Z");
}

// "Example: GET Object" of the Amazon S3 API Reference (Signature Version 4, header-based).
TEST(SigV4Test, AwsDocumentationGetObjectExample) {
  SignRequest r;
  r.method = "GET";
  r.path = "/test.txt";
  r.headers = {{"Host", "examplebucket.s3.amazonaws.com"},
               {"Range", "bytes=0-9"},
               {"x-amz-content-sha256", std::string(kEmptySha256)}};
  r.payload_sha256 = kEmptySha256;
  Credentials c{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
  SignScope scope{"us-east-1", "s3", "20130524T000000Z"};
  const std::string auth = Sign(r, c, scope);
  EXPECT_EQ(CanonicalRequest(r).request,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
            "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            "\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(SigV4Test, RepeatedHeadersJoinWithCommas) {
  SignRequest r;
  r.method = "GET";
  r.path = "/";
  r.headers = {{"host", "h"}, {"X-Amz-Meta-A", "1"}, {"x-amz-meta-a", " 2 "}};
  r.payload_sha256 = kEmptySha256;
  const Canonical c = CanonicalRequest(r);
  EXPECT_NE(c.request.find("\nx-amz-meta-a:1,2\n"), std::string::npos) << c.request;
  EXPECT_EQ(c.signed_headers, "host;x-amz-meta-a");
}

TEST(SigV4Test, MatchesBotocore) {
  std::ifstream in(GRANARY_SIGV4_VECTORS);
  ASSERT_TRUE(in) << "missing " << GRANARY_SIGV4_VECTORS;
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json doc = nlohmann::json::parse(text.str());
  ASSERT_GE(doc["cases"].size(), 40u);
  for (const auto& v : doc["cases"]) {
    SignRequest r;
    r.method = v["method"];
    r.path = v["path"];
    for (const auto& q : v["query"]) r.query.emplace_back(q[0], q[1]);
    for (const auto& h : v["headers"]) r.headers.emplace_back(h[0], h[1]);
    r.payload_sha256 = v["payload_sha256"];
    Credentials c{v["access_key_id"], v["secret_access_key"], v["session_token"]};
    SignScope scope{v["region"], "s3", v["amz_date"]};
    const std::string auth = Sign(r, c, scope);
    EXPECT_EQ(CanonicalRequest(r).request, v["canonical_request"].get<std::string>())
        << r.method << " " << r.path;
    EXPECT_EQ(auth, v["authorization"].get<std::string>()) << r.method << " " << r.path;
  }
}

}  // namespace
}  // namespace granary::s3
