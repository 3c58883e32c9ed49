// MemoryStore specifics; the shared behaviour is covered by the conformance suite.
#include "store/memory/memory_store.h"

#include <gtest/gtest.h>

#include "core/testing/test_util.h"

namespace granary {
namespace {

TEST(MemoryStoreTest, AnonymousStoresArePrivate) {
  std::unique_ptr<ObjectStore> a = NewMemoryStore();
  std::unique_ptr<ObjectStore> b = NewMemoryStore();
  GRANARY_ASSERT_OK(a->Put("k", "v"));
  EXPECT_EQ(b->Stat("k").status().code(), StatusCode::kNotFound);
  EXPECT_NE(a->url(), b->url());
  EXPECT_TRUE(a->url().starts_with("mem://#anonymous-"));
}

TEST(MemoryStoreTest, NamedStoresAreShared) {
  Result<std::unique_ptr<ObjectStore>> a = OpenMemoryStore("memory-store-test");
  Result<std::unique_ptr<ObjectStore>> b = OpenMemoryStore("memory-store-test");
  ASSERT_TRUE(a.ok() && b.ok());
  GRANARY_ASSERT_OK((*a)->PutIfAbsent("m", "1"));
  EXPECT_EQ((*b)->PutIfAbsent("m", "2").code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(OpenMemoryStore("").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenMemoryStore("a/b").status().code(), StatusCode::kInvalidArgument);
}

TEST(MemoryStoreTest, WriterOutlivesStoreHandle) {
  std::unique_ptr<ObjectStore> store = NewMemoryStore();
  Result<std::unique_ptr<ObjectWriter>> writer = store->NewWriter("k");
  GRANARY_ASSERT_OK(writer);
  store.reset();
  std::string data = "abc";
  GRANARY_EXPECT_OK((*writer)->Append(std::as_bytes(std::span(data))));
  GRANARY_EXPECT_OK((*writer)->Commit());
}

}  // namespace
}  // namespace granary
