// S3 response XML as AWS documents it and as RGW/MinIO send it (namespaces, whitespace,
// url-encoded keys), and the bodies granary sends.
#include "store/s3/s3_xml.h"

#include <gtest/gtest.h>

namespace granary::s3 {
namespace {

constexpr char kList[] = R"(<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bucket</Name><Prefix>runs%2F</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys>
  <EncodingType>url</EncodingType>
  <IsTruncated>true</IsTruncated>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
  <Contents>
    <Key>runs%2Fa%20b.bin</Key>
    <LastModified>2009-10-12T17:50:30.000Z</LastModified>
    <ETag>&quot;fba9dede5f27731c9771645a39863328&quot;</ETag>
    <Size>434234</Size><StorageClass>STANDARD</StorageClass>
  </Contents>
  <Contents><Key>runs%2F%01ctl</Key><Size>0</Size><LastModified>2026-11-26T12:00:00Z</LastModified></Contents>
  <CommonPrefixes><Prefix>runs%2Fsub%2F</Prefix></CommonPrefixes>
</ListBucketResult>)";

TEST(S3XmlTest, ListObjectsV2) {
  Result<ListResult> r = ParseListObjectsV2(kList, "bucket/runs/");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->objects.size(), 2u);
  EXPECT_EQ(r->objects[0].key, "runs/a b.bin");
  EXPECT_EQ(r->objects[0].size_bytes, 434234u);
  EXPECT_EQ(r->objects[0].etag, "fba9dede5f27731c9771645a39863328");
  EXPECT_EQ(r->objects[0].mtime_ns, 1255369830LL * 1000000000);
  EXPECT_EQ(r->objects[1].key, "runs/\x01" "ctl");
  EXPECT_EQ(r->objects[1].size_bytes, 0u);
  EXPECT_EQ(r->common_prefixes, std::vector<std::string>{"runs/sub/"});
  EXPECT_TRUE(r->truncated);
  EXPECT_EQ(r->next_continuation_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
}

TEST(S3XmlTest, ListingDamageIsDataLoss) {
  for (const char* bad : {"<ListBucketResult><Contents><Key>a</Key>",  // truncated
                          "<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents>"
                          "</ListBucketResult>",
                          "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
                          "not xml at all"}) {
    Result<ListResult> r = ParseListObjectsV2(bad, "b/p");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find("b/p"), std::string::npos);
  }
  // Plain keys (no EncodingType) are taken as they are; an empty listing is fine.
  Result<ListResult> r = ParseListObjectsV2(
      "<ListBucketResult><Contents><Key>a%20b</Key><Size>1</Size></Contents></ListBucketResult>",
      "b");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->objects[0].key, "a%20b");
  EXPECT_TRUE(ParseListObjectsV2("<ListBucketResult/>", "b")->objects.empty());
}

TEST(S3XmlTest, ErrorsAndUploads) {
  std::optional<S3Error> e = ParseError(
      "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request "
      "rate.</Message><Resource>/b/k</Resource><RequestId>4442587FB7D0A2F9</RequestId></Error>");
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->code, "SlowDown");
  EXPECT_EQ(e->request_id, "4442587FB7D0A2F9");
  EXPECT_EQ(e->resource, "/b/k");
  EXPECT_FALSE(ParseError("<CompleteMultipartUploadResult/>").has_value());
  EXPECT_FALSE(ParseError("").has_value());
  EXPECT_EQ(ParseUploadId("<InitiateMultipartUploadResult xmlns=\"x\"><Bucket>b</Bucket><Key>k"
                          "</Key><UploadId>VXBsb2FkIElE</UploadId></InitiateMultipartUploadResult>",
                          "b/k")
                .value(),
            "VXBsb2FkIElE");
  EXPECT_EQ(ParseUploadId("<InitiateMultipartUploadResult/>", "b/k").status().code(),
            StatusCode::kDataLoss);
  std::vector<std::pair<int, std::string>> parts{{1, "\"a&b\""}, {2, "c"}};
  EXPECT_EQ(CompleteMultipartUploadBody(parts),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b\"</ETag>"
            "</Part><Part><PartNumber>2</PartNumber><ETag>\"c\"</ETag></Part>"
            "</CompleteMultipartUpload>");
}

TEST(S3XmlTest, Iso8601) {
  EXPECT_EQ(ParseIso8601("1970-01-01T00:00:01Z").value(), 1000000000);
  EXPECT_EQ(ParseIso8601("2009-10-12T17:50:30.5Z").value(), 1255369830500000000);
  EXPECT_FALSE(ParseIso8601("2009-10-12 17:50:30Z").has_value());
  EXPECT_FALSE(ParseIso8601("yesterday").has_value());
}

}  // namespace
}  // namespace granary::s3
