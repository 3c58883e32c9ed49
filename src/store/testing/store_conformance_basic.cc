// Conformance: single-threaded behaviour of every ObjectStore (reads, puts, listing, delete,
// key validation). Concurrency and writers are in store_conformance_concurrency.cc.
#include <algorithm>
#include <string>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/io.h"
#include "store/testing/store_conformance.h"
#include "store/testing/test_util.h"

namespace granary::testing {
namespace {

std::vector<std::string> Keys(const std::vector<ObjectInfo>& infos) {
  std::vector<std::string> out;
  for (const ObjectInfo& info : infos) out.push_back(info.key);
  return out;
}

TEST_P(StoreConformanceTest, PutThenGetStatAndOverwrite) {
  GRANARY_ASSERT_OK(store().Put("runs/exp1/a.bin", "hello world"));
  Result<ObjectInfo> info = store().Stat("runs/exp1/a.bin");
  GRANARY_ASSERT_OK(info);
  EXPECT_EQ(info->key, "runs/exp1/a.bin");
  EXPECT_EQ(info->size_bytes, 11u);
  EXPECT_EQ(store().GetAll("runs/exp1/a.bin").value_or("?"), "hello world");

  GRANARY_ASSERT_OK(store().Put("runs/exp1/a.bin", "bye"));
  EXPECT_EQ(store().GetAll("runs/exp1/a.bin").value_or("?"), "bye");
  EXPECT_EQ(store().Stat("runs/exp1/a.bin")->size_bytes, 3u);
}

TEST_P(StoreConformanceTest, MissingKeyIsNotFound) {
  std::string buf(8, '\0');
  EXPECT_EQ(store().Stat("nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store().Get("nope", 0, AsWritableBytes(buf)).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store().GetAll("dir/nope").status().code(), StatusCode::kNotFound);
  Status s = store().Delete("nope");
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("nope"), std::string::npos) << s.ToString();
}

TEST_P(StoreConformanceTest, EmptyObject) {
  GRANARY_ASSERT_OK(store().Put("empty", ""));
  EXPECT_EQ(store().Stat("empty")->size_bytes, 0u);
  Result<std::string> all = store().GetAll("empty");
  GRANARY_ASSERT_OK(all);
  EXPECT_EQ(*all, "");
}

TEST_P(StoreConformanceTest, RangedGet) {
  const std::string data = Payload(1, 10000);
  GRANARY_ASSERT_OK(store().Put("obj", data));
  std::string buf(100, '\0');
  Result<size_t> n = store().Get("obj", 1234, AsWritableBytes(buf));
  GRANARY_ASSERT_OK(n);
  EXPECT_EQ(*n, 100u);
  EXPECT_EQ(buf, data.substr(1234, 100));

  // Ends early: fewer bytes.
  n = store().Get("obj", 9950, AsWritableBytes(buf));
  GRANARY_ASSERT_OK(n);
  EXPECT_EQ(*n, 50u);
  EXPECT_EQ(buf.substr(0, 50), data.substr(9950));

  // At and past the end: 0 bytes, not an error.
  EXPECT_EQ(store().Get("obj", 10000, AsWritableBytes(buf)).value_or(99), 0u);
  EXPECT_EQ(store().Get("obj", 1u << 30, AsWritableBytes(buf)).value_or(99), 0u);
  // Zero-length destination.
  EXPECT_EQ(store().Get("obj", 5, std::span<std::byte>()).value_or(99), 0u);
}

TEST_P(StoreConformanceTest, LargeAlignedAndUnalignedGets) {
  const size_t size = (3u << 20) + 777;  // above the O_DIRECT threshold, unaligned length
  const std::string data = Payload(2, size);
  GRANARY_ASSERT_OK(store().Put("big", data));
  Result<AlignedBuffer> aligned = AlignedBuffer::Allocate(size + 8192);
  GRANARY_ASSERT_OK(aligned);
  for (uint64_t offset : {uint64_t{0}, uint64_t{4096}, uint64_t{4095}, uint64_t{123457}}) {
    for (size_t shift : {size_t{0}, size_t{1}}) {
      std::span<std::byte> dest = aligned->span().subspan(shift, size);
      Result<size_t> n = store().Get("big", offset, dest);
      GRANARY_ASSERT_OK(n);
      ASSERT_EQ(*n, size - offset);
      ASSERT_EQ(std::string_view(reinterpret_cast<char*>(dest.data()), *n),
                std::string_view(data).substr(offset))
          << "offset " << offset << " shift " << shift;
    }
  }
  EXPECT_EQ(store().GetAll("big").value_or(""), data);
}

TEST_P(StoreConformanceTest, GetManyMixedBatch) {
  // 10 objects of assorted sizes, one large enough for O_DIRECT.
  std::vector<std::string> keys, datas;
  for (int k = 0; k < 10; ++k) {
    keys.push_back("batch/obj" + std::to_string(k));
    datas.push_back(Payload(100 + k, k == 3 ? (2u << 20) + 5 : 1000u * k + 17));
    GRANARY_ASSERT_OK(store().Put(keys.back(), datas.back()));
  }
  struct Want {
    StatusCode code;
    std::string bytes;
  };
  std::vector<ReadOp> ops;
  std::vector<size_t> arena_offset;
  std::vector<Want> want;
  size_t used = 0;
  auto add = [&](std::string key, uint64_t offset, size_t length, Want w) {
    ReadOp op;
    op.key = std::move(key);
    op.offset = offset;
    op.dest = std::span<std::byte>(static_cast<std::byte*>(nullptr), length);
    arena_offset.push_back(used);
    used += (length + 4095) / 4096 * 4096 + (ops.size() % 3 == 0 ? 0 : 512);  // vary alignment
    ops.push_back(std::move(op));
    want.push_back(std::move(w));
  };
  for (int i = 0; i < 120; ++i) {
    const int k = (i * 7) % 10;
    const std::string& d = datas[k];
    switch (i % 6) {
      case 0:  // whole object
        add(keys[k], 0, d.size(), {StatusCode::kOk, d});
        break;
      case 1: {  // middle range
        uint64_t off = d.size() / 3;
        size_t len = d.size() / 2;
        add(keys[k], off, len, {StatusCode::kOk, d.substr(off, len)});
        break;
      }
      case 2:  // runs past the end
        add(keys[k], d.size() - 5, 100, {StatusCode::kOk, d.substr(d.size() - 5)});
        break;
      case 3:  // starts past the end
        add(keys[k], d.size() + 10, 64, {StatusCode::kOk, ""});
        break;
      case 4:  // missing key
        add("batch/missing" + std::to_string(i), 0, 16, {StatusCode::kNotFound, ""});
        break;
      case 5:  // invalid key, then a zero-length read
        add(i % 12 == 5 ? "bad//key" : "../escape", 0, 16, {StatusCode::kInvalidArgument, ""});
        add(keys[k], 3, 0, {StatusCode::kOk, ""});
        break;
    }
  }
  // The large object read aligned from offset 4096 (exercises the direct path).
  add(keys[3], 4096, datas[3].size() - 4096, {StatusCode::kOk, datas[3].substr(4096)});
  ASSERT_GE(ops.size(), 100u);
  Result<AlignedBuffer> arena = AlignedBuffer::Allocate(used);
  GRANARY_ASSERT_OK(arena);
  for (size_t i = 0; i < ops.size(); ++i) {
    ops[i].dest = arena->span().subspan(arena_offset[i], ops[i].dest.size());
  }

  GRANARY_ASSERT_OK(store().GetMany(ops));
  for (size_t i = 0; i < ops.size(); ++i) {
    SCOPED_TRACE("op " + std::to_string(i) + " key " + ops[i].key);
    EXPECT_EQ(ops[i].status.code(), want[i].code) << ops[i].status.ToString();
    if (want[i].code != StatusCode::kOk) continue;
    ASSERT_EQ(ops[i].bytes_read, want[i].bytes.size());
    EXPECT_TRUE(std::equal(want[i].bytes.begin(), want[i].bytes.end(),
                           reinterpret_cast<const char*>(ops[i].dest.data())));
  }
}

TEST_P(StoreConformanceTest, PutIfAbsent) {
  GRANARY_ASSERT_OK(store().PutIfAbsent("manifest", "v1"));
  Status s = store().PutIfAbsent("manifest", "v2");
  EXPECT_EQ(s.code(), StatusCode::kAlreadyExists) << s.ToString();
  EXPECT_NE(s.message().find("manifest"), std::string::npos) << s.ToString();
  EXPECT_EQ(store().GetAll("manifest").value_or(""), "v1");
  GRANARY_ASSERT_OK(store().Delete("manifest"));
  GRANARY_ASSERT_OK(store().PutIfAbsent("manifest", "v3"));
  EXPECT_EQ(store().GetAll("manifest").value_or(""), "v3");
  GRANARY_ASSERT_OK(store().PutIfAbsent("deep/new/manifest", "x"));
}

TEST_P(StoreConformanceTest, ListIsSortedBytewiseWithPrefixes) {
  // Chosen so that directory order and key order differ ('-' and '.' sort before '/').
  std::vector<std::string> keys = {"a-b", "a.c", "a/b", "a/c/d", "a0", "ab-", "ab/x",
                                   "b",   "z/z/z", "a/c-", "a/c0"};
  for (const std::string& key : keys) GRANARY_ASSERT_OK(store().Put(key, key));
  std::sort(keys.begin(), keys.end());
  Result<std::vector<ObjectInfo>> all = store().List("");
  GRANARY_ASSERT_OK(all);
  EXPECT_EQ(Keys(*all), keys);
  for (const ObjectInfo& info : *all) EXPECT_EQ(info.size_bytes, info.key.size());

  EXPECT_EQ(Keys(store().List("a/").value()),
            (std::vector<std::string>{"a/b", "a/c-", "a/c/d", "a/c0"}));
  EXPECT_EQ(Keys(store().List("ab").value()), (std::vector<std::string>{"ab-", "ab/x"}));
  EXPECT_EQ(Keys(store().List("a/c").value()),
            (std::vector<std::string>{"a/c-", "a/c/d", "a/c0"}));
  EXPECT_TRUE(store().List("nothing/").value().empty());
  EXPECT_EQ(Keys(store().List("z/z/z").value()), (std::vector<std::string>{"z/z/z"}));
}

TEST_P(StoreConformanceTest, ListPagesInSmallPages) {
  std::vector<std::string> keys;
  for (int i = 0; i < 37; ++i) {
    std::string key = "p/" + std::to_string(i % 4) + "/k" + std::to_string(i);
    if (i % 5 == 0) key = "p/x" + std::to_string(i);
    keys.push_back(key);
    GRANARY_ASSERT_OK(store().Put(key, "x"));
  }
  GRANARY_ASSERT_OK(store().Put("q/other", "x"));
  std::sort(keys.begin(), keys.end());
  std::vector<std::string> seen;
  std::string start_after;
  int pages = 0;
  for (;;) {
    Result<ObjectPage> page = store().ListPage("p/", start_after, 3);
    GRANARY_ASSERT_OK(page);
    ASSERT_LE(page->objects.size(), 3u);
    for (const ObjectInfo& info : page->objects) seen.push_back(info.key);
    ++pages;
    ASSERT_LT(pages, 100);
    if (page->next_start_after.empty()) break;
    EXPECT_EQ(page->next_start_after, page->objects.back().key);
    start_after = page->next_start_after;
  }
  EXPECT_EQ(seen, keys);
  // start_after that is not itself a key.
  Result<ObjectPage> page = store().ListPage("p/", "p/2", 1000);
  GRANARY_ASSERT_OK(page);
  std::vector<std::string> tail;
  for (const std::string& key : keys) {
    if (key > "p/2") tail.push_back(key);
  }
  EXPECT_EQ(Keys(page->objects), tail);
  EXPECT_TRUE(page->next_start_after.empty());
}

TEST_P(StoreConformanceTest, DeleteRemovesAndFreesTheName) {
  GRANARY_ASSERT_OK(store().Put("d/x/y", "1"));
  GRANARY_ASSERT_OK(store().Put("d/x/z", "2"));
  GRANARY_ASSERT_OK(store().Delete("d/x/y"));
  EXPECT_EQ(store().Stat("d/x/y").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store().Delete("d/x/y").code(), StatusCode::kNotFound);
  EXPECT_EQ(Keys(store().List("").value()), (std::vector<std::string>{"d/x/z"}));
  GRANARY_ASSERT_OK(store().Delete("d/x/z"));
  EXPECT_TRUE(store().List("").value().empty());
  // Once nothing lives under "d/x/", "d/x" and "d" can be objects themselves.
  GRANARY_ASSERT_OK(store().Put("d/x", "now an object"));
  EXPECT_EQ(store().GetAll("d/x").value_or(""), "now an object");
  GRANARY_ASSERT_OK(store().Delete("d/x"));
  GRANARY_ASSERT_OK(store().Put("d", "top"));
  EXPECT_EQ(Keys(store().List("").value()), (std::vector<std::string>{"d"}));
}

TEST_P(StoreConformanceTest, LongKeys) {
  const size_t max = harness().max_key_bytes();
  std::string key;
  while (key.size() < max) key += (key.empty() ? "" : "/") + std::string(200, 'k');
  key.resize(max);
  ASSERT_NE(key.back(), '/');
  GRANARY_ASSERT_OK(store().Put(key, "long"));
  EXPECT_EQ(store().GetAll(key).value_or(""), "long");
  EXPECT_EQ(store().Put(key + "x", "x").code(), StatusCode::kInvalidArgument);
}

TEST_P(StoreConformanceTest, InvalidKeysAreRejectedBeforeAnyIo) {
  const std::vector<std::string> bad = {
      "", "/abs", "a//b", "a/../b", "..", ".", "a/./b", "trailing/", std::string("nul\0x", 5),
      ".granary/x", "a/.granary", ".granarything", "../escape", "a/../../escape",
      std::string(1025, 'k')};
  std::string buf(4, '\0');
  for (const std::string& key : bad) {
    SCOPED_TRACE("key '" + key + "'");
    Status put = store().Put(key, "data");
    EXPECT_EQ(put.code(), StatusCode::kInvalidArgument) << put.ToString();
    if (!key.empty() && key.find('\0') == std::string::npos && key.size() < 100) {
      EXPECT_NE(put.message().find(key), std::string::npos) << put.ToString();
    }
    EXPECT_EQ(store().PutIfAbsent(key, "data").code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(store().Get(key, 0, AsWritableBytes(buf)).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(store().Stat(key).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(store().Delete(key).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(store().NewWriter(key).status().code(), StatusCode::kInvalidArgument);
    ReadOp op;
    op.key = key;
    op.dest = AsWritableBytes(buf);
    GRANARY_ASSERT_OK(store().GetMany(std::span(&op, 1)));
    EXPECT_EQ(op.status.code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(store().List("").value().empty());
  EXPECT_TRUE(harness().StrayEntries().empty());
}

}  // namespace
}  // namespace granary::testing
