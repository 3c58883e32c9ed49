// ReadBatch on a store without local files (the S3 path): nearby records of a shard share one
// ranged GET, gaps are read and dropped only while at least half of a GET is records, no GET
// crosses a shard or exceeds 2 MiB, and damage inside a shared GET names the right sample.
#include <algorithm>
#include <mutex>
#include <numeric>
#include <random>

#include "dataset/dataset_test_util.h"
#include "store/memory/memory_store.h"
#include "store/testing/forwarding_store.h"

namespace granary::dataset::testing {
namespace {

// A MemoryStore that records every ranged read it is asked for.
class RecordingStore final : public granary::testing::ForwardingStore {
 public:
  struct Read {
    std::string key;
    uint64_t offset, length;
  };
  RecordingStore() : ForwardingStore(NewMemoryStore()) {}
  Result<size_t> Get(std::string_view k, uint64_t o, std::span<std::byte> d) override {
    Note(k, o, d.size());
    return ForwardingStore::Get(k, o, d);
  }
  Status GetMany(std::span<ReadOp> ops) override {
    for (const ReadOp& op : ops) Note(op.key, op.offset, op.dest.size());
    return ForwardingStore::GetMany(ops);
  }
  std::vector<Read> Take() {
    std::lock_guard lock(mu_);
    return std::exchange(reads_, {});
  }

 private:
  void Note(std::string_view k, uint64_t o, uint64_t n) {
    std::lock_guard lock(mu_);
    reads_.push_back({std::string(k), o, n});
  }
  std::mutex mu_;
  std::vector<Read> reads_;
};

// Sample i: 0 to ~6 KiB; sample kBig (5 MiB) is larger than any shared GET.
constexpr uint64_t kBig = 57;
std::string Payload(uint64_t i) {
  const size_t n = i == kBig ? (5u << 20) + 123 : (i * 2731) % 6000;
  std::string b(n, '\0');
  for (size_t j = 0; j < n; ++j) b[j] = static_cast<char>((i * 31 + j * 7 + 1) & 0xff);
  return b;
}
std::string Key(uint64_t i) { return "s" + std::to_string(i); }
std::vector<uint64_t> Range(uint64_t begin, uint64_t end) {
  std::vector<uint64_t> v(end - begin);
  std::iota(v.begin(), v.end(), begin);
  return v;
}

class RemoteBatchReadTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kN = 400;
  void SetUp() override {
    store_ = std::make_shared<RecordingStore>();
    GRANARY_ASSERT_OK_AND_ASSIGN(auto w, DatasetWriter::Create(store_, "", Options()));
    for (uint64_t i = 0; i < kN; ++i) GRANARY_ASSERT_OK(w->Add(Key(i), {FieldData("b", Payload(i))}));
    GRANARY_ASSERT_OK(w->Finish().status());
  }
  virtual DatasetWriterOptions Options() { return {}; }  // one shard
  std::unique_ptr<Dataset> Open(bool skip_corrupt = false) {
    DatasetOptions o;
    o.skip_corrupt = skip_corrupt;
    o.read_threads = 1;  // one GetMany per batch: the reads below are exactly the batch's
    std::unique_ptr<Dataset> ds = Dataset::Open(store_, "", o).value();
    std::vector<uint64_t> firsts;  // shard headers are checked (and read) once, here
    for (const ShardInfo& sh : ds->shards()) firsts.push_back(sh.first_sample);
    EXPECT_TRUE(ds->ReadBatch(firsts).ok());
    store_->Take();
    return ds;
  }
  // Reads `indices`, checks every sample and returns the ranged reads it took.
  std::vector<RecordingStore::Read> ReadAndCheck(Dataset& ds, const std::vector<uint64_t>& indices,
                                                 uint64_t skipped = kN + 1) {
    Result<std::shared_ptr<Batch>> b = ds.ReadBatch(indices);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    if (!b.ok()) return {};
    EXPECT_EQ((*b)->size(), indices.size());
    for (size_t i = 0; i < indices.size(); ++i) {
      EXPECT_EQ((*b)->index(i), indices[i]);
      if (indices[i] == skipped) {
        EXPECT_FALSE((*b)->ok(i)) << "position " << i;
        continue;
      }
      EXPECT_TRUE((*b)->ok(i)) << "position " << i << " sample " << indices[i];
      if (!(*b)->ok(i)) continue;
      EXPECT_EQ((*b)->key(i), Key(indices[i]));
      EXPECT_TRUE(AsString((*b)->field(i, 0)) == Payload(indices[i])) << "sample " << indices[i];
    }
    return store_->Take();
  }

  std::shared_ptr<RecordingStore> store_;
};

TEST_F(RemoteBatchReadTest, SequentialRecordsShareGetsOfAtMostTwoMiB) {
  auto ds = Open();
  const std::vector<uint64_t> before = Range(0, kBig), after = Range(kBig + 1, kN);
  for (const auto& indices : {before, after}) {
    const auto reads = ReadAndCheck(*ds, indices);
    SampleLocation a = ds->Locate(indices.front()).value(), z = ds->Locate(indices.back()).value();
    const uint64_t span = z.offset + z.length - a.offset;
    uint64_t fetched = 0;
    for (const auto& r : reads) {
      EXPECT_LE(r.length, 2u << 20);
      fetched += r.length;
    }
    EXPECT_EQ(fetched, span);  // contiguous records: nothing read twice, no gap
    EXPECT_LE(reads.size(), span / (2u << 20) + 2) << "GETs for " << indices.size() << " records";
  }
}

TEST_F(RemoteBatchReadTest, OrderRepeatsAndTheBigRecord) {
  auto ds = Open();
  std::vector<uint64_t> indices = {5, 4, 5, 3, 3, 10, 6, 7, 9, 8, 4, 56, 57, 58, 57, 0, 399, 398};
  const auto reads = ReadAndCheck(*ds, indices);
  // In file order 0, 3-10, 56, 57, 58, 398-399: 0 may join 3-10; 56 is too far from 10 to be
  // worth the gap; 57 is larger than a shared GET, so it and 58 start GETs of their own.
  EXPECT_GE(reads.size(), 5u);
  EXPECT_LE(reads.size(), 6u);
  const uint64_t big = ds->Locate(kBig).value().length;
  for (const auto& r : reads) EXPECT_TRUE(r.length <= (2u << 20) || r.length == big) << r.length;
  std::mt19937 rng(7);
  std::vector<uint64_t> all = Range(0, kN);
  std::shuffle(all.begin(), all.end(), rng);
  ReadAndCheck(*ds, all);
}

TEST_F(RemoteBatchReadTest, SparseRecordsAreNotMergedWhenGapsOutweighThem) {
  auto ds = Open();
  // Every other record: gaps about as large as the records (kept at >= half useful: merged).
  std::vector<uint64_t> even;
  for (uint64_t i = 100; i < 300; i += 2) even.push_back(i);
  const auto even_reads = ReadAndCheck(*ds, even);
  EXPECT_LT(even_reads.size(), even.size() / 4);
  // Every tenth record: a GET would be mostly gap; each record is its own GET of its own bytes.
  std::vector<uint64_t> tenth;
  for (uint64_t i = 101; i < 400; i += 10) tenth.push_back(i);
  const auto reads = ReadAndCheck(*ds, tenth);
  ASSERT_EQ(reads.size(), tenth.size());
  uint64_t fetched = 0, records = 0;
  for (const auto& r : reads) fetched += r.length;
  for (uint64_t i : tenth) records += ds->Locate(i).value().length;
  EXPECT_EQ(fetched, records);
}

TEST_F(RemoteBatchReadTest, CorruptRecordInsideASharedGetNamesItsSample) {
  constexpr uint64_t kVictim = 123;
  auto probe = Open();
  SampleLocation loc = probe->Locate(kVictim).value();
  const std::string shard = probe->shards()[loc.shard].key;
  std::string bytes(probe->shards()[loc.shard].size_bytes, '\0');
  GRANARY_ASSERT_OK(store_->Get(shard, 0, std::as_writable_bytes(std::span(bytes))).status());
  bytes[loc.offset + loc.length / 2] ^= 0x10;
  GRANARY_ASSERT_OK(store_->Put(shard, std::as_bytes(std::span(bytes))));
  const std::vector<uint64_t> indices = Range(kVictim - 20, kVictim + 20);
  Status s = Open()->ReadBatch(indices).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("shard " + shard + " sample 123"), std::string::npos)
      << s.ToString();
  std::vector<uint64_t> with_repeat = indices;
  with_repeat.push_back(kVictim);
  auto skipping = Open(/*skip_corrupt=*/true);
  const auto reads = ReadAndCheck(*skipping, with_repeat, kVictim);
  EXPECT_EQ(reads.size(), 1u);
}

TEST_F(RemoteBatchReadTest, ShardEndingInsideASharedGet) {
  auto ds = Open();
  auto skipping = Open(/*skip_corrupt=*/true);
  const ShardInfo sh = ds->shards().back();
  const uint64_t last = sh.first_sample + sh.num_samples - 1;
  SampleLocation loc = ds->Locate(last).value();
  ASSERT_GT(loc.length, 100u);
  // Replaced after the readers opened: the shard now ends 50 bytes into its last record.
  std::string bytes(loc.offset + 50, '\0');
  GRANARY_ASSERT_OK(store_->Get(sh.key, 0, std::as_writable_bytes(std::span(bytes))).status());
  GRANARY_ASSERT_OK(store_->Put(sh.key, std::as_bytes(std::span(bytes))));
  const std::vector<uint64_t> indices = Range(last - 30, last + 1);
  Status s = ds->ReadBatch(indices).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("sample " + std::to_string(last)), std::string::npos)
      << s.ToString();
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.ToString();
  ReadAndCheck(*skipping, indices, last);
}

// Many small shards: no GET crosses a shard boundary.
class RemoteBatchReadManyShardsTest : public RemoteBatchReadTest {
 protected:
  DatasetWriterOptions Options() override {
    DatasetWriterOptions o;
    o.shard_bytes = 48 << 10;
    return o;
  }
};

TEST_F(RemoteBatchReadManyShardsTest, SharedGetsStayInsideTheirShard) {
  auto ds = Open();
  ASSERT_GT(ds->shards().size(), 10u);
  const auto reads = ReadAndCheck(*ds, Range(0, kN));
  EXPECT_GE(reads.size(), ds->shards().size());
  for (const auto& r : reads) {
    const auto it = std::find_if(ds->shards().begin(), ds->shards().end(),
                                 [&](const ShardInfo& sh) { return sh.key == r.key; });
    ASSERT_NE(it, ds->shards().end()) << r.key;
    EXPECT_LE(r.offset + r.length, it->size_bytes) << r.key;
  }
}

}  // namespace
}  // namespace granary::dataset::testing
