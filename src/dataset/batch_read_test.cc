// ReadBatch on a local directory: merged reads of nearby records (cold, warm and mixed), repeats
// and order inside a merged read, records larger than a batch chunk, and damage inside a merged
// read (a flipped byte, a shard cut short), each naming the right sample.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <filesystem>
#include <numeric>
#include <random>
#include <thread>

#include "dataset/dataset_test_util.h"

namespace granary::dataset::testing {
namespace {

// Sample i: sizes from 0 to ~6 KiB, so neighbours share pages and many records straddle page
// boundaries; sample kBig is larger than a batch chunk (4 MiB).
constexpr uint64_t kBig = 57;
std::string Payload(uint64_t i) {
  const size_t n = i == kBig ? (5u << 20) + 123 : (i * 2731) % 6000;
  std::string b(n, '\0');
  for (size_t j = 0; j < n; ++j) b[j] = static_cast<char>((i * 31 + j * 7) & 0xff);
  return b;
}
std::string Key(uint64_t i) { return "s" + std::to_string(i); }

class BatchReadTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kN = 400;
  void SetUp() override {
    store_ = OpenStore(dir_.path()).value();
    GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "", Options()));
    for (uint64_t i = 0; i < kN; ++i) {
      const std::string p = Payload(i);
      GRANARY_ASSERT_OK(w->Add(Key(i), {FieldData("b", p)}));
    }
    GRANARY_ASSERT_OK(w->Finish().status());
  }
  virtual DatasetWriterOptions Options() { return {}; }  // one shard
  std::unique_ptr<Dataset> Open(bool skip_corrupt = false, bool direct_io = true) {
    DatasetOptions o;
    o.skip_corrupt = skip_corrupt;
    o.direct_io = direct_io;
    std::unique_ptr<Dataset> ds = Dataset::Open(store_, "", o).value();
    // Check every shard header now: its buffered read pulls readahead into the page cache.
    std::vector<uint64_t> firsts;
    for (const ShardInfo& sh : ds->shards()) firsts.push_back(sh.first_sample);
    EXPECT_TRUE(ds->ReadBatch(firsts).ok());
    return ds;
  }
  std::string Path(const std::string& key) const { return dir_.path() + "/" + key; }

  // Evicts every shard from the page cache (repeats until mincore shows nothing resident).
  void DropCache(Dataset& ds) {
    for (int attempt = 0; attempt < 50; ++attempt) {
      size_t resident = 0;
      for (const ShardInfo& sh : ds.shards()) {
        const int fd = ::open(Path(sh.key).c_str(), O_RDONLY);
        ASSERT_GE(fd, 0);
        ::fdatasync(fd);
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        void* map = ::mmap(nullptr, sh.size_bytes, PROT_READ, MAP_SHARED, fd, 0);
        ASSERT_NE(map, MAP_FAILED);
        std::vector<unsigned char> pages((sh.size_bytes + 4095) / 4096);
        ASSERT_EQ(::mincore(map, sh.size_bytes, pages.data()), 0);
        ::munmap(map, sh.size_bytes);
        ::close(fd);
        for (unsigned char p : pages) resident += p & 1;
      }
      if (resident == 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "the page cache keeps shard pages resident";
  }
  // Makes exactly the pages of the given samples resident (no readahead around them).
  void Warm(Dataset& ds, const std::vector<uint64_t>& indices) {
    for (uint64_t i : indices) {
      SampleLocation loc = ds.Locate(i).value();
      const int fd = ::open(Path(ds.shards()[loc.shard].key).c_str(), O_RDONLY);
      ASSERT_GE(fd, 0);
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
      std::string buf(loc.length, '\0');
      ASSERT_EQ(::pread(fd, buf.data(), buf.size(), static_cast<off_t>(loc.offset)),
                static_cast<ssize_t>(buf.size()));
      ::close(fd);
    }
  }
  static void Check(const Batch& b, const std::vector<uint64_t>& indices,
                    uint64_t skipped = kN + 1) {
    ASSERT_EQ(b.size(), indices.size());
    for (size_t i = 0; i < indices.size(); ++i) {
      ASSERT_EQ(b.index(i), indices[i]);
      if (indices[i] == skipped) {
        ASSERT_FALSE(b.ok(i)) << "position " << i;
        continue;
      }
      ASSERT_TRUE(b.ok(i)) << "position " << i << " sample " << indices[i];
      ASSERT_EQ(b.key(i), Key(indices[i]));
      ASSERT_EQ(AsString(b.field(i, 0)), Payload(indices[i])) << "sample " << indices[i];
    }
  }
  // Block-aligned bytes covering samples [first, last] of shard 0.
  uint64_t Cover(Dataset& ds, uint64_t first, uint64_t last) {
    SampleLocation a = ds.Locate(first).value(), b = ds.Locate(last).value();
    return (b.offset + b.length + 4095) / 4096 * 4096 - a.offset / 4096 * 4096;
  }

  granary::testing::ScratchDir dir_{"batch-read"};
  std::shared_ptr<ObjectStore> store_;
};

std::vector<uint64_t> Range(uint64_t begin, uint64_t end) {
  std::vector<uint64_t> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

TEST_F(BatchReadTest, ColdSequentialReadsAreMerged) {
  auto ds = Open();
  ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
  const std::vector<uint64_t> indices = Range(0, kN);
  const DatasetStats before = ds->stats();
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(indices));
  Check(*b, indices);
  const DatasetStats after = ds->stats();
  EXPECT_EQ(after.page_cache_hits, before.page_cache_hits);
  // One pass over the shard: each block once, plus at most a shared block per 256 KiB request.
  uint64_t unmerged = 0;
  for (uint64_t i : indices) unmerged += Cover(*ds, i, i);
  const uint64_t whole = Cover(*ds, 0, kN - 1);
  EXPECT_GE(after.device_bytes - before.device_bytes, whole);
  EXPECT_LE(after.device_bytes - before.device_bytes, whole + 4096 * (whole >> 18) + 4096 * 8);
  EXPECT_LT(after.device_bytes - before.device_bytes, unmerged);
}

TEST_F(BatchReadTest, MergedReadsKeepOrderAndRepeats) {
  auto ds = Open();
  std::vector<uint64_t> indices = {5, 4, 5, 3, 3, 10, 6, 7, 9, 8, 4, 56, 57, 58, 57, 0, 399, 398};
  for (bool cold : {true, false}) {
    if (cold) {
      ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
    }
    if (!cold) {
      ASSERT_NO_FATAL_FAILURE(Warm(*ds, indices));
    }
    GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(indices));
    Check(*b, indices);
  }
  // Every other sample: the gaps are small enough to be read and dropped.
  ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
  std::vector<uint64_t> even;
  for (uint64_t i = 0; i < kN; i += 2) even.push_back(i);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(even));
  Check(*b, even);
}

TEST_F(BatchReadTest, MixedResidencyInsideAMergedRead) {
  auto ds = Open();
  std::mt19937 rng(3);
  for (int round = 0; round < 3; ++round) {
    ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
    std::vector<uint64_t> warm;
    for (uint64_t i = 0; i < kN; ++i) {
      if (rng() % 3 == 0) warm.push_back(i);
    }
    ASSERT_NO_FATAL_FAILURE(Warm(*ds, warm));
    std::vector<uint64_t> indices = Range(0, kN);
    if (round == 2) std::shuffle(indices.begin(), indices.end(), rng);
    const DatasetStats before = ds->stats();
    GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(indices));
    Check(*b, indices);
    const DatasetStats after = ds->stats();
    EXPECT_GE(after.page_cache_hits - before.page_cache_hits, warm.size()) << "round " << round;
    EXPECT_LT(after.page_cache_hits - before.page_cache_hits, kN) << "round " << round;
    EXPECT_GT(after.device_bytes, before.device_bytes);
  }
  // All resident: nothing from the device.
  ASSERT_NO_FATAL_FAILURE(Warm(*ds, Range(0, kN)));
  const DatasetStats before = ds->stats();
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(Range(0, kN)));
  Check(*b, Range(0, kN));
  EXPECT_EQ(ds->stats().page_cache_hits - before.page_cache_hits, kN);
  EXPECT_EQ(ds->stats().device_bytes, before.device_bytes);
}

TEST_F(BatchReadTest, CorruptRecordInsideAMergedReadNamesItsSample) {
  constexpr uint64_t kVictim = 123;
  std::unique_ptr<Dataset> probe = Open();
  SampleLocation loc = probe->Locate(kVictim).value();
  const std::string shard = probe->shards()[loc.shard].key;
  {
    const int fd = ::open(Path(shard).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c;
    ASSERT_EQ(::pread(fd, &c, 1, static_cast<off_t>(loc.offset + loc.length / 2)), 1);
    c ^= 0x10;
    ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(loc.offset + loc.length / 2)), 1);
    ::close(fd);
  }
  const std::vector<uint64_t> indices = Range(kVictim - 20, kVictim + 20);
  for (bool cold : {true, false}) {
    auto ds = Open();
    if (cold) {
      ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
    }
    if (!cold) {
      ASSERT_NO_FATAL_FAILURE(Warm(*ds, indices));
    }
    Status s = ds->ReadBatch(indices).status();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_NE(s.message().find("shard " + shard + " sample 123"), std::string::npos)
        << s.ToString();
    auto skipping = Open(/*skip_corrupt=*/true);
    if (cold) {
      ASSERT_NO_FATAL_FAILURE(DropCache(*skipping));
    }
    if (!cold) {
      ASSERT_NO_FATAL_FAILURE(Warm(*skipping, indices));
    }
    std::vector<uint64_t> with_repeat = indices;
    with_repeat.push_back(kVictim);
    GRANARY_ASSERT_OK_AND_ASSIGN(auto b, skipping->ReadBatch(with_repeat));
    Check(*b, with_repeat, kVictim);
    EXPECT_EQ(b->corrupt_count(), 2u);
  }
}

TEST_F(BatchReadTest, ShardEndingInsideAMergedRead) {
  auto ds = Open();
  auto skipping = Open(/*skip_corrupt=*/true);
  const ShardInfo sh = ds->shards().back();
  const uint64_t last = sh.first_sample + sh.num_samples - 1;
  SampleLocation loc = ds->Locate(last).value();
  ASSERT_GT(loc.length, 100u);
  // Opened before the cut: the readers see a shard that ends 50 bytes into its last record.
  std::filesystem::resize_file(Path(sh.key), loc.offset + 50);
  const std::vector<uint64_t> indices = Range(last - 30, last + 1);
  for (bool cold : {true, false}) {
    if (cold) {
      ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
    } else {
      ASSERT_NO_FATAL_FAILURE(Warm(*ds, Range(last - 30, last)));
    }
    Status s = ds->ReadBatch(indices).status();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_NE(s.message().find("sample " + std::to_string(last)), std::string::npos)
        << s.ToString();
    EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.ToString();
    GRANARY_ASSERT_OK_AND_ASSIGN(auto b, skipping->ReadBatch(indices));
    Check(*b, indices, last);
    EXPECT_EQ(b->corrupt_count(), 1u);
  }
}

TEST_F(BatchReadTest, BufferedOnlyReaderGivesTheSameBytes) {
  auto ds = Open(/*skip_corrupt=*/false, /*direct_io=*/false);
  ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
  std::vector<uint64_t> indices = Range(0, kN);
  indices.push_back(57);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(indices));
  Check(*b, indices);
}

// Many small shards: runs and merged reads never cross a shard boundary.
class BatchReadManyShardsTest : public BatchReadTest {
 protected:
  DatasetWriterOptions Options() override {
    DatasetWriterOptions o;
    o.shard_bytes = 48 << 10;
    return o;
  }
};

TEST_F(BatchReadManyShardsTest, MergedReadsStayInsideTheirShard) {
  auto ds = Open();
  ASSERT_GT(ds->shards().size(), 10u);
  std::vector<uint64_t> indices = Range(0, kN);
  for (bool cold : {true, false}) {
    if (cold) {
      ASSERT_NO_FATAL_FAILURE(DropCache(*ds));
    }
    if (!cold) {
      ASSERT_NO_FATAL_FAILURE(Warm(*ds, indices));
    }
    const DatasetStats before = ds->stats();
    GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(indices));
    Check(*b, indices);
    EXPECT_EQ(ds->stats().page_cache_hits - before.page_cache_hits, cold ? 0 : kN);
    std::reverse(indices.begin(), indices.end());
  }
}

}  // namespace
}  // namespace granary::dataset::testing
