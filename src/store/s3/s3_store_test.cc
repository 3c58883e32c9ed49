// S3Store behaviour beyond the conformance suite, against the test server (s3_test_env.h):
// opening (missing bucket, bad credentials, URL redaction, the conditional-PUT probe), prefix
// isolation, awkward keys, S3's part rules, and many reads in flight.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/cache.h"
#include "granary/store.h"
#include "store/s3/s3_store.h"
#include "store/s3/s3_test_env.h"
#include "store/testing/test_util.h"

namespace granary::s3::testing {
namespace {

using granary::testing::AsBytes;
using granary::testing::AsWritableBytes;
using granary::testing::Payload;

constexpr char kBucket[] = "granary-s3-test";

class S3StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = S3SkipReason();
    if (!why.empty()) GTEST_SKIP() << why;
    ASSERT_FALSE(TestEnv("GRANARY_TEST_S3_ENDPOINT").empty())
        << "GRANARY_REQUIRE_S3=1 but GRANARY_TEST_S3_ENDPOINT is unset";
    prefix_ = UniquePrefix("s3t");
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, OpenStore(TestS3Url(kBucket, prefix_)));
  }
  void TearDown() override {
    if (store_ == nullptr) return;
    Result<std::vector<ObjectInfo>> all = store_->List("");
    if (all.ok()) {
      for (const ObjectInfo& o : *all) store_->Delete(o.key).IgnoreError();  // best effort
    }
  }

  std::string prefix_;
  std::unique_ptr<ObjectStore> store_;
};

TEST_F(S3StoreTest, UrlHidesSecretsAndTheProbeFindsConditionalPutsEnforced) {
  EXPECT_EQ(store_->url().find("secret_access_key"), std::string::npos) << store_->url();
  EXPECT_NE(store_->url().find("s3://granary-s3-test/" + prefix_), std::string::npos);
  // Ceph RGW enforces If-None-Match: * (moto and AWS do too).
  EXPECT_TRUE(ConditionalPutEnforced(*store_));
  // Nothing of the probe is visible.
  EXPECT_TRUE(store_->List("").value().empty());
}

TEST_F(S3StoreTest, MissingBucketNeedsCreateBucket) {
  const std::string url = "s3://granary-no-such-bucket/x?endpoint=" +
                          TestEnv("GRANARY_TEST_S3_ENDPOINT") +
                          "&access_key_id=" + TestEnv("GRANARY_TEST_S3_ACCESS_KEY") +
                          "&secret_access_key=" + TestEnv("GRANARY_TEST_S3_SECRET_KEY");
  Result<std::unique_ptr<ObjectStore>> s = OpenStore(url);
  EXPECT_EQ(s.status().code(), StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("granary-no-such-bucket"), std::string::npos);
  EXPECT_NE(s.status().message().find("create_bucket=true"), std::string::npos);
}

TEST_F(S3StoreTest, WrongSecretIsPermissionDeniedNamingKeyStatusAndCode) {
  const std::string url = "s3://" + std::string(kBucket) + "/" + prefix_ +
                          "?endpoint=" + TestEnv("GRANARY_TEST_S3_ENDPOINT") +
                          "&access_key_id=" + TestEnv("GRANARY_TEST_S3_ACCESS_KEY") +
                          "&secret_access_key=wrong";
  Result<std::unique_ptr<ObjectStore>> s = OpenStore(url);
  if (s.ok()) {  // the bucket HEAD may pass on some servers; the first write must not
    Status put = (*s)->Put("k", "v");
    EXPECT_EQ(put.code(), StatusCode::kPermissionDenied) << put.ToString();
    EXPECT_NE(put.message().find(prefix_ + "/k"), std::string::npos) << put.ToString();
    EXPECT_NE(put.message().find("403"), std::string::npos) << put.ToString();
  } else {
    EXPECT_EQ(s.status().code(), StatusCode::kPermissionDenied) << s.status().ToString();
    EXPECT_NE(s.status().message().find("403"), std::string::npos) << s.status().ToString();
    EXPECT_NE(s.status().message().find("SignatureDoesNotMatch"), std::string::npos)
        << s.status().ToString();
  }
}

TEST_F(S3StoreTest, PrefixesIsolateStoresInOneBucket) {
  GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> other,
                               OpenStore(TestS3Url(kBucket, prefix_ + "-other")));
  GRANARY_ASSERT_OK(store_->Put("a", "mine"));
  GRANARY_ASSERT_OK(other->Put("a", "theirs"));
  EXPECT_EQ(store_->GetAll("a").value_or(""), "mine");
  EXPECT_EQ(other->GetAll("a").value_or(""), "theirs");
  EXPECT_EQ(store_->List("").value().size(), 1u);
  // The parent sees both under their prefixes.
  GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> parent, OpenStore(TestS3Url(kBucket, "")));
  EXPECT_EQ(parent->GetAll(prefix_ + "/a").value_or(""), "mine");
  GRANARY_ASSERT_OK(other->Delete("a"));
}

TEST_F(S3StoreTest, AwkwardKeysRoundTrip) {
  const std::vector<std::string> keys = {
      "sp ace/x y", "plus+sign", "per%25cent", "q?mark&amp=eq", "hash#tag", "uni/caf\xc3\xa9",
      "tilde~/under_score", "ctl\x01char", "star*(paren)", "semi;colon,comma"};
  for (const std::string& k : keys) GRANARY_ASSERT_OK(store_->Put(k, "v:" + k)) << k;
  for (const std::string& k : keys) EXPECT_EQ(store_->GetAll(k).value_or("?"), "v:" + k) << k;
  GRANARY_ASSERT_OK_AND_ASSIGN(std::vector<ObjectInfo> listed, store_->List(""));
  std::vector<std::string> got;
  for (const ObjectInfo& o : listed) got.push_back(o.key);
  std::vector<std::string> want = keys;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
}

TEST_F(S3StoreTest, SmallPartsAreRaisedToS3sMinimum) {
  WriterOptions options;
  options.part_bytes = 1 << 20;  // below S3's 5 MiB: the writer uses 5 MiB parts
  const std::string data = Payload(7, (11u << 20) + 123);
  GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectWriter> w, store_->NewWriter("big", options));
  for (size_t pos = 0; pos < data.size(); pos += 300000) {
    GRANARY_ASSERT_OK(w->Append(AsBytes(std::string_view(data).substr(pos, 300000))));
  }
  GRANARY_ASSERT_OK(w->Commit());
  EXPECT_EQ(store_->GetAll("big").value_or(""), data);
}

TEST_F(S3StoreTest, ManyRangedReadsInFlightLandInTheirBuffers) {
  const std::string data = Payload(3, 4u << 20);
  GRANARY_ASSERT_OK(store_->Put("obj", data));
  constexpr size_t kOps = 300;
  std::vector<std::string> bufs(kOps);
  std::vector<ReadOp> ops(kOps);
  for (size_t i = 0; i < kOps; ++i) {
    bufs[i].assign(1000 + i * 37, '\0');
    ops[i].key = "obj";
    ops[i].offset = (i * 104729) % data.size();
    ops[i].dest = AsWritableBytes(bufs[i]);
  }
  ops[5].key = "missing";
  GRANARY_ASSERT_OK(store_->GetMany(ops));
  for (size_t i = 0; i < kOps; ++i) {
    if (i == 5) {
      EXPECT_EQ(ops[i].status.code(), StatusCode::kNotFound);
      continue;
    }
    GRANARY_ASSERT_OK(ops[i].status) << i;
    const std::string want = data.substr(ops[i].offset, bufs[i].size());
    ASSERT_EQ(ops[i].bytes_read, want.size()) << i;
    EXPECT_EQ(bufs[i].substr(0, want.size()), want) << i;
  }
}

TEST_F(S3StoreTest, NodeCacheServesRepeatReadsAndNeverAReplacedObject) {
  granary::testing::ScratchDir dir("s3cache");
  const std::string url = TestS3Url(kBucket, prefix_) + "&cache_dir=" + dir.Join("c") +
                          "&ram_cache_bytes=8M&cache_page_bytes=1M&cache_revalidate_seconds=0";
  GRANARY_ASSERT_OK_AND_ASSIGN(std::unique_ptr<ObjectStore> cached, OpenStore(url));
  const std::string v1 = Payload(11, (3u << 20) + 5), v2 = Payload(12, 2u << 20);
  GRANARY_ASSERT_OK(store_->Put("obj", v1));
  EXPECT_TRUE(cached->GetAll("obj").value_or("") == v1);
  EXPECT_TRUE(cached->GetAll("obj").value_or("") == v1);
  GRANARY_ASSERT_OK_AND_ASSIGN(CacheStats s, GetCacheStats(*cached));
  EXPECT_EQ(s.misses, 4u);
  EXPECT_EQ(s.miss_bytes, v1.size());
  EXPECT_EQ(s.ram_hits, 4u);
  // Another node replaces the object: the next read sees the new version only.
  GRANARY_ASSERT_OK(store_->Put("obj", v2));
  EXPECT_TRUE(cached->GetAll("obj").value_or("") == v2);
  EXPECT_EQ(GetCacheStats(*cached).value().stale, 1u);
  // A restart finds the pages on disk.
  cached.reset();
  GRANARY_ASSERT_OK_AND_ASSIGN(cached, OpenStore(url));
  EXPECT_TRUE(cached->GetAll("obj").value_or("") == v2);
  s = GetCacheStats(*cached).value();
  EXPECT_EQ(s.misses, 0u);
  EXPECT_EQ(s.disk_hits, 2u);
  EXPECT_EQ(GetCacheStats(*store_).status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace granary::s3::testing
