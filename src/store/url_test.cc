#include "store/url.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <string>

#include "core/testing/test_util.h"

namespace granary {
namespace {

std::string Cwd() {
  char buf[PATH_MAX];
  return getcwd(buf, sizeof(buf)) != nullptr ? buf : "";
}

TEST(StoreUrlTest, ParsesFileUrls) {
  Result<StoreUrl> url = ParseStoreUrl("file:///data/x");
  GRANARY_ASSERT_OK(url);
  EXPECT_EQ(url->scheme, UrlScheme::kFile);
  EXPECT_EQ(url->location, "/data/x");
  EXPECT_EQ(url->ToString(), "file:///data/x");
  EXPECT_EQ(ParseStoreUrl("file://localhost/data/x/")->location, "/data/x");
  EXPECT_EQ(ParseStoreUrl("file:///data//./y/../x")->location, "/data/x");
  EXPECT_EQ(ParseStoreUrl("file:///")->location, "/");
}

TEST(StoreUrlTest, PlainPathsBecomeAbsolute) {
  EXPECT_EQ(ParseStoreUrl("/abs/dir")->ToString(), "file:///abs/dir");
  EXPECT_EQ(ParseStoreUrl("rel/dir")->location, Cwd() + "/rel/dir");
  EXPECT_EQ(ParseStoreUrl("./rel")->location, Cwd() + "/rel");
}

TEST(StoreUrlTest, ParsesMemAndS3) {
  Result<StoreUrl> mem = ParseStoreUrl("mem://scratch");
  GRANARY_ASSERT_OK(mem);
  EXPECT_EQ(mem->scheme, UrlScheme::kMemory);
  EXPECT_EQ(mem->location, "scratch");
  Result<StoreUrl> s3 = ParseStoreUrl("s3://bucket/runs/exp1?region=us-east-1&endpoint=x");
  GRANARY_ASSERT_OK(s3);
  EXPECT_EQ(s3->scheme, UrlScheme::kS3);
  EXPECT_EQ(s3->location, "bucket");
  EXPECT_EQ(s3->path, "runs/exp1");
  ASSERT_EQ(s3->query.size(), 2u);
  EXPECT_EQ(s3->query[0].first, "region");
  EXPECT_EQ(s3->query[0].second, "us-east-1");
  EXPECT_EQ(s3->ToString(), "s3://bucket/runs/exp1?region=us-east-1&endpoint=x");
  EXPECT_EQ(ParseStoreUrl("s3://bucket")->path, "");
}

TEST(StoreUrlTest, RejectsMalformedUrlsNamingThem) {
  for (const char* bad : {"", "http://host/x", "file://host/x", "file://relative", "mem://",
                          "mem://a/b", "s3://", "s3:///prefix", "ftp://x"}) {
    Result<StoreUrl> url = ParseStoreUrl(bad);
    EXPECT_EQ(url.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(url.status().message().find(std::string("'") + bad + "'"), std::string::npos)
        << url.status().ToString();
  }
}

}  // namespace
}  // namespace granary
