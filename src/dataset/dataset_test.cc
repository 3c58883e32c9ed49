// DatasetWriter + Dataset on a memory store and a local directory: round trips, versions and
// appends, key lookup, batch reads through the page-cache and O_DIRECT paths, interrupted
// writes and garbage collection.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "dataset/dataset_catalog.h"
#include "dataset/dataset_format.h"
#include "dataset/dataset_test_util.h"

namespace granary::dataset::testing {
namespace {

TEST_P(DatasetStoreTest, RoundTripAcrossManyShards) {
  DatasetWriterOptions options;
  options.shard_bytes = 64 << 10;  // many shards
  constexpr uint64_t kN = 600;
  GRANARY_ASSERT_OK_AND_ASSIGN(DatasetWriteStats ws, Write("ds/a", 0, kN, options));
  EXPECT_EQ(ws.version, 1u);
  EXPECT_EQ(ws.samples_added, kN);
  EXPECT_EQ(ws.total_samples, kN);
  EXPECT_GT(ws.shards_added, 5u);
  EXPECT_EQ(ws.duplicate_keys, 0u);

  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds/a"));
  EXPECT_EQ(ds->size(), kN);
  EXPECT_EQ(ds->version(), 1u);
  EXPECT_EQ(ds->total_bytes(), ws.bytes_added);
  EXPECT_EQ(ds->shards().size(), ws.shards_added);
  EXPECT_GT(ds->index_bytes(), 8 * kN);
  uint64_t next = 0;
  for (const ShardInfo& sh : ds->shards()) {
    EXPECT_EQ(sh.first_sample, next);
    EXPECT_TRUE(sh.key.starts_with("ds/a/seg-000000000001-")) << sh.key;
    next += sh.num_samples;
  }
  EXPECT_EQ(next, kN);
  std::set<std::string> names(ds->field_names().begin(), ds->field_names().end());
  EXPECT_TRUE(names.contains("jpg") && names.contains("empty") && names.contains("f39"));

  // Every sample, in reverse order, with repeats, in one batch.
  std::vector<uint64_t> indices(kN);
  std::iota(indices.rbegin(), indices.rend(), 0);
  indices.push_back(7);
  indices.push_back(7);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto batch, ds->ReadBatch(indices));
  ASSERT_EQ(batch->size(), indices.size());
  EXPECT_EQ(batch->corrupt_count(), 0u);
  for (size_t i = 0; i < indices.size(); ++i) {
    EXPECT_EQ(batch->index(i), indices[i]);
    EXPECT_EQ(Mismatch(*batch, i, MakeSample(indices[i])), "") << "sample " << indices[i];
  }
  EXPECT_FALSE(batch->field(0, "no-such-field").has_value());
  GRANARY_EXPECT_OK(ds->Verify());
  const DatasetStats st = ds->stats();
  EXPECT_EQ(st.samples_read, indices.size());
  EXPECT_GE(st.bytes_read, ds->total_bytes());
}

TEST_P(DatasetStoreTest, KeysAndIndexOf) {
  GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "ds"));
  for (uint64_t i = 0; i < 300; ++i) GRANARY_ASSERT_OK(AddSample(*w, MakeSample(i)));
  GRANARY_ASSERT_OK(w->Add("dup", {{"v", "first"}}));    // 300
  GRANARY_ASSERT_OK(w->Add("dup", {{"v", "second"}}));   // 301
  GRANARY_ASSERT_OK(w->Add("dup", {{"v", "third"}}));    // 302
  GRANARY_ASSERT_OK(w->Add("twice", {}));                // 303
  GRANARY_ASSERT_OK(w->Add("twice", {}));                // 304
  GRANARY_ASSERT_OK_AND_ASSIGN(DatasetWriteStats ws, w->Finish());
  EXPECT_EQ(ws.duplicate_keys, 2u);

  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds"));
  for (uint64_t i : {0ull, 5ull, 101ull, 202ull, 299ull}) {
    GRANARY_ASSERT_OK_AND_ASSIGN(std::string key, ds->Key(i));
    EXPECT_EQ(key, MakeSample(i).key);
    GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t found, ds->IndexOf(key));
    EXPECT_EQ(found, i);
  }
  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t dup, ds->IndexOf("dup"));
  EXPECT_EQ(dup, 300u);
  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t twice, ds->IndexOf("twice"));
  EXPECT_EQ(twice, 303u);
  Status missing = ds->IndexOf("missing-key").status();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("missing-key"), std::string::npos);
  EXPECT_EQ(ds->Key(305).status().code(), StatusCode::kOutOfRange);

  // An appended duplicate does not hide the earlier one.
  DatasetWriterOptions append;
  append.append = true;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto w2, DatasetWriter::Create(store_, "ds", append));
  GRANARY_ASSERT_OK(w2->Add("new", {}));
  GRANARY_ASSERT_OK(w2->Add("dup", {}));
  GRANARY_ASSERT_OK(w2->Finish().status());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds2, Dataset::Open(store_, "ds"));
  EXPECT_EQ(ds2->IndexOf("dup").value_or(0), 300u);
  EXPECT_EQ(ds2->IndexOf("new").value_or(0), 305u);
}

TEST_P(DatasetStoreTest, VersionsAppendAndPinnedReaders) {
  DatasetWriterOptions options;
  options.shard_bytes = 32 << 10;
  GRANARY_ASSERT_OK(Write("ds", 0, 100, options).status());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto v1, Dataset::Open(store_, "ds"));

  // Without append, an existing dataset is refused.
  Status exists = DatasetWriter::Create(store_, "ds").status();
  EXPECT_EQ(exists.code(), StatusCode::kAlreadyExists) << exists.ToString();

  options.append = true;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "ds", options));
  for (uint64_t i = 100; i < 160; ++i) GRANARY_ASSERT_OK(AddSample(*w, MakeSample(i, "v2")));
  GRANARY_ASSERT_OK(w->Add("extra-sample", {{"brand-new", "x"}}));
  GRANARY_ASSERT_OK_AND_ASSIGN(DatasetWriteStats ws, w->Finish());
  EXPECT_EQ(ws.version, 2u);
  EXPECT_EQ(ws.samples_added, 61u);
  EXPECT_EQ(ws.total_samples, 161u);

  GRANARY_ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> versions, ListDatasetVersions(*store_, "ds"));
  EXPECT_EQ(versions, (std::vector<uint64_t>{1, 2}));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto v2, Dataset::Open(store_, "ds"));
  EXPECT_EQ(v2->version(), 2u);
  EXPECT_EQ(v2->size(), 161u);
  // Field ids of version 1 are unchanged; the new name is appended.
  ASSERT_GE(v2->field_names().size(), v1->field_names().size() + 1);
  EXPECT_TRUE(std::equal(v1->field_names().begin(), v1->field_names().end(),
                         v2->field_names().begin()));
  EXPECT_EQ(v2->field_names().back(), "brand-new");

  std::vector<uint64_t> idx = {0, 99, 100, 159, 160, 50};
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b2, v2->ReadBatch(idx));
  EXPECT_EQ(Mismatch(*b2, 0, MakeSample(0)), "");
  EXPECT_EQ(Mismatch(*b2, 1, MakeSample(99)), "");
  EXPECT_EQ(Mismatch(*b2, 2, MakeSample(100, "v2")), "");
  EXPECT_EQ(Mismatch(*b2, 3, MakeSample(159, "v2")), "");
  EXPECT_EQ(b2->key(4), "extra-sample");
  EXPECT_EQ(AsString(*b2->field(4, "brand-new")), "x");

  // The reader pinned to version 1 (open before the append) and a new one asking for it.
  DatasetOptions pin;
  pin.version = 1;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto v1b, Dataset::Open(store_, "ds", pin));
  for (Dataset* d : {v1.get(), v1b.get()}) {
    EXPECT_EQ(d->size(), 100u);
    GRANARY_ASSERT_OK_AND_ASSIGN(auto b1, d->ReadBatch(std::vector<uint64_t>{0, 99}));
    EXPECT_EQ(Mismatch(*b1, 1, MakeSample(99)), "");
    EXPECT_EQ(d->ReadBatch(std::vector<uint64_t>{100}).status().code(), StatusCode::kOutOfRange);
    GRANARY_EXPECT_OK(d->Verify());
  }
  GRANARY_EXPECT_OK(v2->Verify());
  pin.version = 3;
  Status no_version = Dataset::Open(store_, "ds", pin).status();
  EXPECT_EQ(no_version.code(), StatusCode::kNotFound);
  EXPECT_NE(no_version.message().find("version 3"), std::string::npos) << no_version.ToString();
}

TEST_P(DatasetStoreTest, ReadBatchEdgeCases) {
  GRANARY_ASSERT_OK(Write("", 0, 50).status());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, ""));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto empty, ds->ReadBatch({}));
  EXPECT_EQ(empty->size(), 0u);
  Status bad = ds->ReadBatch(std::vector<uint64_t>{1, 50, 2}).status();
  EXPECT_EQ(bad.code(), StatusCode::kOutOfRange);
  EXPECT_NE(bad.message().find("50"), std::string::npos);
  EXPECT_EQ(ds->stats().samples_read, 0u) << "nothing read before the range check";
  EXPECT_EQ(ds->Locate(50).status().code(), StatusCode::kOutOfRange);
  GRANARY_ASSERT_OK_AND_ASSIGN(SampleLocation loc, ds->Locate(0));
  EXPECT_EQ(loc.offset, kShardHeaderBytes);
  // A batch outlives its dataset (spans stay valid).
  GRANARY_ASSERT_OK_AND_ASSIGN(auto batch, ds->ReadBatch(std::vector<uint64_t>{3, 4}));
  ds.reset();
  EXPECT_EQ(Mismatch(*batch, 0, MakeSample(3)), "");
  EXPECT_EQ(Mismatch(*batch, 1, MakeSample(4)), "");
}

TEST_P(DatasetStoreTest, ThreadsAndDirectIoOptionsGiveTheSameBytes) {
  GRANARY_ASSERT_OK(Write("ds", 0, 400).status());
  std::vector<uint64_t> indices;
  for (uint64_t i = 0; i < 400; ++i) indices.push_back((i * 7919) % 400);
  for (unsigned threads : {1u, 2u, 3u}) {
    for (bool direct : {true, false}) {
      DatasetOptions o;
      o.read_threads = threads;
      o.direct_io = direct;
      GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds", o));
      GRANARY_ASSERT_OK_AND_ASSIGN(auto batch, ds->ReadBatch(indices));
      for (size_t i = 0; i < indices.size(); ++i) {
        ASSERT_EQ(Mismatch(*batch, i, MakeSample(indices[i])), "")
            << "threads " << threads << " direct " << direct << " sample " << indices[i];
      }
    }
  }
}

TEST_P(DatasetStoreTest, EmptyWriteAndBadInputPublishNothing) {
  GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "ds"));
  EXPECT_EQ(w->Add("", {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w->Add("k", {{"a", "1"}, {"a", "2"}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w->Add("k", {{"__key__", "1"}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w->Add(std::string_view("a\0b", 3), {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w->samples_added(), 0u);
  Status s = w->Finish().status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_EQ(ListDatasetVersions(*store_, "ds").status().code(), StatusCode::kNotFound);
  Status open = Dataset::Open(store_, "ds").status();
  EXPECT_EQ(open.code(), StatusCode::kNotFound);
  EXPECT_NE(open.message().find("ds"), std::string::npos);
  DatasetWriterOptions bad;
  bad.shard_writers = 0;
  EXPECT_EQ(DatasetWriter::Create(store_, "x", bad).status().code(), StatusCode::kInvalidArgument);
  DatasetOptions bad_read;
  bad_read.read_threads = 0;
  EXPECT_EQ(Dataset::Open(store_, "x", bad_read).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(DatasetStoreTest, DestroyWithoutFinishLeavesNoVersionAndGarbageIsCollected) {
  GRANARY_ASSERT_OK(Write("ds", 0, 20).status());
  {
    DatasetWriterOptions options;
    options.append = true;
    options.shard_bytes = 16 << 10;  // several shards committed before the writer dies
    GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "ds", options));
    for (uint64_t i = 0; i < 200; ++i) GRANARY_ASSERT_OK(AddSample(*w, MakeSample(i, "lost")));
  }
  GRANARY_ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> versions, ListDatasetVersions(*store_, "ds"));
  EXPECT_EQ(versions, std::vector<uint64_t>{1});
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds"));
  EXPECT_EQ(ds->size(), 20u);

  auto segments = [&] {
    std::set<std::string> names;
    const std::vector<ObjectInfo> objects = store_->List("ds/seg-").value();
    for (const ObjectInfo& o : objects) {
      names.insert(o.key.substr(3, o.key.find('/', 3) - 3));
    }
    return names;
  };
  ASSERT_EQ(segments().size(), 2u) << "the interrupted writer's committed shards";
  // Young garbage stays (a writer may still be running) ...
  GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "ds", {.append = true}));
  w.reset();
  EXPECT_EQ(segments().size(), 2u);
  // ... old garbage goes; referenced segments stay whatever their age.
  std::set<std::string> referenced = {ds->shards()[0].key.substr(3, ds->shards()[0].key.find('/', 3) - 3)};
  GRANARY_ASSERT_OK_AND_ASSIGN(
      GarbageStats gs,
      CollectGarbageSegments(*store_, "ds", referenced, WallClockNanos() + 2 * kGarbageGraceNs));
  EXPECT_EQ(gs.segments_removed, 1u);
  EXPECT_GE(gs.objects_removed, 1u);
  EXPECT_EQ(segments(), referenced);
  GRANARY_EXPECT_OK(ds->Verify());
}

TEST_P(DatasetStoreTest, WriterCreateRemovesOldGarbage) {
  if (!local()) GTEST_SKIP() << "needs file mtimes that can be set back";
  GRANARY_ASSERT_OK(Write("ds", 0, 10).status());
  {
    GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "ds", {.shard_bytes = 1, .append = true}));
    for (uint64_t i = 0; i < 5; ++i) GRANARY_ASSERT_OK(AddSample(*w, MakeSample(i, "x")));
  }
  // Age every object by two grace periods.
  const timespec old[2] = {{.tv_sec = time(nullptr) - 3 * kGarbageGraceNs / 1'000'000'000, .tv_nsec = 0},
                           {.tv_sec = time(nullptr) - 3 * kGarbageGraceNs / 1'000'000'000, .tv_nsec = 0}};
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.Join("ds"))) {
    if (e.is_regular_file()) {
      ASSERT_EQ(::utimensat(AT_FDCWD, e.path().c_str(), old, 0), 0);
    }
  }
  const size_t before = store_->List("ds/seg-").value().size();
  GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "ds", {.append = true}));
  const size_t after = store_->List("ds/seg-").value().size();
  EXPECT_LT(after, before);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds"));
  GRANARY_EXPECT_OK(ds->Verify());
  EXPECT_EQ(after, ds->shards().size() + 2) << "shards + index + keys of the published segment";
}

INSTANTIATE_TEST_SUITE_P(Stores, DatasetStoreTest,
                         ::testing::Values(StoreKind::kMemory, StoreKind::kLocal), StoreKindName);

// The two local read paths: page cache (RWF_NOWAIT copy) and device (O_DIRECT into the slot).
TEST(DatasetLocalReadTest, PageCacheAndDirectPathsGiveIdenticalBytes) {
  granary::testing::ScratchDir dir("dataset-paths");
  std::shared_ptr<ObjectStore> store = OpenStore(dir.path()).value();
  DatasetWriterOptions options;
  options.shard_bytes = 256 << 10;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store, "", options));
  constexpr uint64_t kN = 300;
  for (uint64_t i = 0; i < kN; ++i) GRANARY_ASSERT_OK(AddSample(*w, MakeSample(i)));
  GRANARY_ASSERT_OK(w->Finish().status());

  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store, ""));
  std::vector<uint64_t> indices(kN);
  std::iota(indices.begin(), indices.end(), 0);
  std::shuffle(indices.begin(), indices.end(), std::mt19937(7));
  // Pages still in another CPU's LRU batch can survive one DONTNEED; repeat until mincore
  // shows nothing resident.
  auto drop_cache = [&] {
    for (int attempt = 0; attempt < 50; ++attempt) {
      size_t resident = 0;
      for (const ShardInfo& sh : ds->shards()) {
        File f = store->OpenLocalFile(sh.key, false).value();
        ASSERT_EQ(::fdatasync(f.fd()), 0);
        ASSERT_EQ(::posix_fadvise(f.fd(), 0, 0, POSIX_FADV_DONTNEED), 0);
        void* map = ::mmap(nullptr, sh.size_bytes, PROT_READ, MAP_SHARED, f.fd(), 0);
        ASSERT_NE(map, MAP_FAILED);
        std::vector<unsigned char> pages((sh.size_bytes + 4095) / 4096);
        ASSERT_EQ(::mincore(map, sh.size_bytes, pages.data()), 0);
        ::munmap(map, sh.size_bytes);
        for (unsigned char p : pages) resident += p & 1;
      }
      if (resident == 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "the page cache keeps shard pages resident";
  };
  auto check = [&](const Batch& b) {
    for (size_t i = 0; i < indices.size(); ++i) {
      ASSERT_EQ(Mismatch(b, i, MakeSample(indices[i])), "") << "sample " << indices[i];
    }
  };

  // A first read checks every shard header (its buffered read pulls readahead into the cache).
  GRANARY_ASSERT_OK(ds->ReadBatch(indices).status());
  const DatasetStats before = ds->stats();
  ASSERT_NO_FATAL_FAILURE(drop_cache());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto cold, ds->ReadBatch(indices));
  check(*cold);
  const DatasetStats after_cold = ds->stats();
  const uint64_t cold_device = after_cold.device_bytes - before.device_bytes;
  EXPECT_GE(cold_device, ds->total_bytes()) << "cold reads went to the device";
  EXPECT_EQ(after_cold.page_cache_hits, before.page_cache_hits);
  EXPECT_EQ(cold_device % kDirectIoAlignment, 0u) << "O_DIRECT reads whole blocks";

  // Warm the page cache with a buffered reader, then read again: served by copies.
  DatasetOptions buffered;
  buffered.direct_io = false;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto warm_reader, Dataset::Open(store, "", buffered));
  GRANARY_ASSERT_OK(warm_reader->ReadBatch(indices).status());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto warm, ds->ReadBatch(indices));
  check(*warm);
  const DatasetStats after_warm = ds->stats();
  EXPECT_EQ(after_warm.page_cache_hits - after_cold.page_cache_hits, kN);
  EXPECT_EQ(after_warm.device_bytes, after_cold.device_bytes);
  for (size_t i = 0; i < kN; ++i) {
    ASSERT_EQ(cold->key(i), warm->key(i));
    for (size_t j = 0; j < cold->num_fields(i); ++j) {
      ASSERT_EQ(AsString(cold->field(i, j)), AsString(warm->field(i, j)));
    }
  }
  // Half resident, half not: one batch takes both paths.
  ASSERT_NO_FATAL_FAILURE(drop_cache());
  std::vector<uint64_t> half(indices.begin(), indices.begin() + kN / 2);
  GRANARY_ASSERT_OK(warm_reader->ReadBatch(half).status());
  GRANARY_ASSERT_OK_AND_ASSIGN(auto mixed, ds->ReadBatch(indices));
  check(*mixed);
}

}  // namespace
}  // namespace granary::dataset::testing
