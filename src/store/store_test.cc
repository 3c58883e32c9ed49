// Driver-independent parts of granary/store.h: key rules, options, OpenStore.
#include "granary/store.h"

#include <gtest/gtest.h>

#include <string>

#include "core/testing/test_util.h"

namespace granary {
namespace {

TEST(ValidateKeyTest, AcceptsOrdinaryKeys) {
  for (const char* key : {"a", "runs/exp1/step-100/rank0.bin", "a.b/c-d/e_f", "x/.hidden",
                          "a/..b", "a/b.", "...", "granary/.granar"}) {
    GRANARY_EXPECT_OK(ValidateKey(key)) << key;
  }
  GRANARY_EXPECT_OK(ValidateKey(std::string(1024, 'k')));
}

TEST(ValidateKeyTest, RejectsBadKeysNamingThem) {
  const std::string bad[] = {"", "/abs", "a//b", "a/../b", "..", ".", "a/./b", "trailing/",
                             std::string("nul\0x", 5), ".granary", ".granary/x", "a/.granary-tmp",
                             std::string(1025, 'k')};
  for (const std::string& key : bad) {
    Status s = ValidateKey(key);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << "'" << key << "'";
    if (key.find('\0') == std::string::npos && key.size() < 100) {
      EXPECT_NE(s.message().find("'" + key + "'"), std::string::npos) << s.ToString();
    }
  }
  // A NUL is shown escaped.
  EXPECT_NE(ValidateKey(std::string("nul\0x", 5)).message().find("nul\\x00x"), std::string::npos);
}

TEST(OptionsTest, Validate) {
  GRANARY_EXPECT_OK(WriterOptions().Validate());
  GRANARY_EXPECT_OK(StoreOptions().Validate());
  WriterOptions writer;
  writer.part_bytes = 0;
  EXPECT_EQ(writer.Validate().code(), StatusCode::kInvalidArgument);
  writer = WriterOptions();
  writer.max_parts_in_flight = 0;
  EXPECT_EQ(writer.Validate().code(), StatusCode::kInvalidArgument);
  StoreOptions store;
  store.direct_io_min_bytes = 100;
  EXPECT_EQ(store.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(OpenStoreTest, MemoryUrlsShareDataByName) {
  Result<std::unique_ptr<ObjectStore>> a = OpenStore("mem://open-store-test");
  Result<std::unique_ptr<ObjectStore>> b = OpenStore("mem://open-store-test");
  Result<std::unique_ptr<ObjectStore>> other = OpenStore("mem://open-store-test-other");
  ASSERT_TRUE(a.ok() && b.ok() && other.ok());
  EXPECT_EQ((*a)->url(), "mem://open-store-test");
  GRANARY_ASSERT_OK((*a)->Put("k", "v"));
  EXPECT_EQ((*b)->GetAll("k").value_or(""), "v");
  EXPECT_EQ((*other)->Stat("k").status().code(), StatusCode::kNotFound);
  a->reset();
  b->reset();
  // The data outlives every handle.
  EXPECT_EQ(OpenStore("mem://open-store-test").value()->GetAll("k").value_or(""), "v");
}

TEST(OpenStoreTest, FileUrlsAndPlainPaths) {
  testing::ScratchDir dir("openstore");
  Result<std::unique_ptr<ObjectStore>> a = OpenStore("file://" + dir.Join("s"));
  GRANARY_ASSERT_OK(a);
  EXPECT_EQ((*a)->url(), "file://" + dir.Join("s"));
  GRANARY_ASSERT_OK((*a)->Put("x/y", "data"));
  Result<std::unique_ptr<ObjectStore>> b = OpenStore(dir.Join("s/"));
  GRANARY_ASSERT_OK(b);
  EXPECT_EQ((*b)->GetAll("x/y").value_or(""), "data");

  StoreOptions no_create;
  no_create.create_if_missing = false;
  EXPECT_EQ(OpenStore(dir.Join("missing"), no_create).status().code(), StatusCode::kNotFound);
}

TEST(OpenStoreTest, S3ErrorsAreClearAndUnknownSchemesAreRejected) {
  Result<std::unique_ptr<ObjectStore>> bad = OpenStore("s3://bucket/prefix?colour=blue");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("colour"), std::string::npos) << bad.status().ToString();
  // Nothing listens on port 1: Unavailable naming the bucket and the endpoint, after retries.
  Result<std::unique_ptr<ObjectStore>> down =
      OpenStore("s3://bucket/prefix?endpoint=http://127.0.0.1:1&access_key_id=a&secret_access_key=b");
  EXPECT_EQ(down.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(down.status().message().find("s3://bucket"), std::string::npos)
      << down.status().ToString();
  EXPECT_NE(down.status().message().find("http://127.0.0.1:1"), std::string::npos)
      << down.status().ToString();
  Result<std::unique_ptr<ObjectStore>> http = OpenStore("http://example.com/x");
  EXPECT_EQ(http.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(http.status().message().find("http://example.com/x"), std::string::npos);
  EXPECT_EQ(OpenStore("mem://#anonymous-1").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace granary
