// How a reader rejects damage: flipped record bytes, truncated or missing shards, damaged
// indexes, key tables and shard headers, and manifests of another version or of no format at
// all. Objects are damaged through the store (Get, change, Put), so both stores are covered.
#include "core/envelope.h"
#include "dataset/dataset_format.h"
#include "dataset/dataset_manifest.h"
#include "dataset/dataset_record.h"
#include "dataset/dataset_test_util.h"

namespace granary::dataset::testing {
namespace {

class DatasetCorruptionTest : public DatasetStoreTest {
 protected:
  void SetUp() override {
    DatasetStoreTest::SetUp();
    DatasetWriterOptions options;
    options.shard_bytes = 64 << 10;
    GRANARY_ASSERT_OK(Write("ds", 0, 200, options).status());
    GRANARY_ASSERT_OK_AND_ASSIGN(ds_, Dataset::Open(store_, "ds"));
  }
  // Applies `edit` to the bytes of `key` and puts them back.
  void Damage(const std::string& key, const std::function<void(std::string&)>& edit) {
    GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, store_->GetAll(key));
    edit(bytes);
    GRANARY_ASSERT_OK(store_->Put(key, bytes));
  }
  std::string SegmentKey(std::string_view name) {
    const std::string shard = ds_->shards()[0].key;
    return shard.substr(0, shard.rfind('/') + 1) + std::string(name);
  }
  std::unique_ptr<Dataset> ds_;
};

TEST_P(DatasetCorruptionTest, FlippedRecordByteIsDataLossNamingShardAndSample) {
  constexpr uint64_t kVictim = 77;
  GRANARY_ASSERT_OK_AND_ASSIGN(SampleLocation loc, ds_->Locate(kVictim));
  const std::string shard = ds_->shards()[loc.shard].key;
  Damage(shard, [&](std::string& b) { b[loc.offset + loc.length - 1] ^= 0x40; });

  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds"));
  Status s = ds->ReadBatch(std::vector<uint64_t>{1, kVictim, 2}).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("shard " + shard + " sample 77"), std::string::npos) << s.ToString();
  Status v = ds->Verify();
  EXPECT_EQ(v.code(), StatusCode::kDataLoss);
  EXPECT_NE(v.message().find(shard), std::string::npos) << v.ToString();

  // Without verification the damaged bytes are delivered as they are.
  DatasetOptions no_verify;
  no_verify.verify = false;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto raw, Dataset::Open(store_, "ds", no_verify));
  GRANARY_EXPECT_OK(raw->ReadBatch(std::vector<uint64_t>{kVictim}).status());

  DatasetOptions skip;
  skip.skip_corrupt = true;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto skipping, Dataset::Open(store_, "ds", skip));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, skipping->ReadBatch(std::vector<uint64_t>{1, kVictim, 2, kVictim}));
  EXPECT_TRUE(b->ok(0));
  EXPECT_FALSE(b->ok(1));
  EXPECT_TRUE(b->ok(2));
  EXPECT_FALSE(b->ok(3));
  EXPECT_EQ(b->num_fields(1), 0u);
  EXPECT_EQ(b->key(1), "");
  EXPECT_EQ(b->corrupt_count(), 2u);
  EXPECT_EQ(Mismatch(*b, 2, MakeSample(2)), "");
  EXPECT_EQ(skipping->stats().corrupt_skipped, 2u);
  EXPECT_EQ(skipping->stats().samples_read, 2u);
}

TEST_P(DatasetCorruptionTest, TruncatedShardFailsAtOpenAndAtRead) {
  const ShardInfo last = ds_->shards().back();
  // Shrunk after open: the read of its last record finds the end of the object first.
  Damage(last.key, [](std::string& b) { b.resize(b.size() - 3); });
  const uint64_t victim = last.first_sample + last.num_samples - 1;
  Status s = ds_->ReadBatch(std::vector<uint64_t>{victim}).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find(last.key), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.ToString();
  // A new reader refuses the shard at open.
  Status open = Dataset::Open(store_, "ds").status();
  EXPECT_EQ(open.code(), StatusCode::kDataLoss);
  EXPECT_NE(open.message().find(last.key), std::string::npos) << open.ToString();
}

TEST_P(DatasetCorruptionTest, TruncatedRecordIsSkippedWhenAsked) {
  DatasetOptions skip;
  skip.skip_corrupt = true;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds", skip));
  const ShardInfo last = ds->shards().back();
  Damage(last.key, [](std::string& b) { b.resize(b.size() - 1); });
  const uint64_t victim = last.first_sample + last.num_samples - 1;
  GRANARY_ASSERT_OK_AND_ASSIGN(auto b, ds->ReadBatch(std::vector<uint64_t>{victim, 0}));
  EXPECT_FALSE(b->ok(0));
  EXPECT_TRUE(b->ok(1));
  EXPECT_EQ(b->corrupt_count(), 1u);
}

TEST_P(DatasetCorruptionTest, MissingShardFailsAtOpenNamingIt) {
  const std::string victim = ds_->shards()[2].key;
  GRANARY_ASSERT_OK(store_->Delete(victim));
  Status s = Dataset::Open(store_, "ds").status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_NE(s.message().find(victim), std::string::npos) << s.ToString();
}

TEST_P(DatasetCorruptionTest, DamagedShardHeaderIsDataLoss) {
  const std::string victim = ds_->shards()[1].key;
  Damage(victim, [](std::string& b) { b[20] ^= 1; });  // writer id
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds"));
  Status s = ds->ReadBatch(std::vector<uint64_t>{ds->shards()[1].first_sample}).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(victim), std::string::npos) << s.ToString();
}

TEST_P(DatasetCorruptionTest, DamagedIndexEntryIsDataLossNamingTheIndex) {
  const std::string index = SegmentKey("index");
  // Entry 11 jumps past the end of its shard: sample 10 and 11 now claim impossible records.
  Damage(index, [](std::string& b) { StoreLe<uint64_t>(b.data() + kIndexHeaderBytes + 8 * 11, 1ULL << 40); });
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds"));  // lazily validated
  Status s = ds->ReadBatch(std::vector<uint64_t>{0, 11}).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(index), std::string::npos) << s.ToString();
  EXPECT_EQ(ds->Locate(10).status().code(), StatusCode::kDataLoss);
  GRANARY_EXPECT_OK(ds->Locate(12).status());
  EXPECT_EQ(ds->Verify().code(), StatusCode::kDataLoss);
  // A damaged header is caught at open.
  Damage(index, [](std::string& b) { b[17] ^= 1; });
  Status open = Dataset::Open(store_, "ds").status();
  EXPECT_EQ(open.code(), StatusCode::kDataLoss);
  EXPECT_NE(open.message().find(index), std::string::npos) << open.ToString();
}

TEST_P(DatasetCorruptionTest, DamagedKeyTable) {
  const std::string keys = SegmentKey("keys");
  // Point every entry at sample 0: lookups confirm keys, so they fail cleanly, and Verify sees it.
  Damage(keys, [](std::string& b) {
    for (size_t p = kKeysHeaderBytes; p < b.size(); p += kKeyEntryBytes) StoreLe<uint64_t>(b.data() + p + 8, 0);
  });
  GRANARY_ASSERT_OK_AND_ASSIGN(auto ds, Dataset::Open(store_, "ds"));
  EXPECT_EQ(ds->IndexOf(MakeSample(50).key).status().code(), StatusCode::kNotFound);
  Status v = ds->Verify();
  EXPECT_EQ(v.code(), StatusCode::kDataLoss);
  EXPECT_NE(v.message().find(keys), std::string::npos) << v.ToString();
}

TEST_P(DatasetCorruptionTest, ManifestOfAnotherVersionOrGarbage) {
  const std::string key = "ds/" + ManifestKey(1);
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, store_->GetAll(key));
  std::string body(UnwrapEnvelope(bytes, kManifestMagic, kFormatVersion, 1 << 30, "m", key).value());
  GRANARY_ASSERT_OK(store_->Put(key, WrapEnvelope(kManifestMagic, kFormatVersion + 1, body)));
  Status s = Dataset::Open(store_, "ds").status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(key), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("version 2"), std::string::npos) << s.ToString();

  GRANARY_ASSERT_OK(store_->Put(key, "this is not a manifest, just some bytes"));
  s = Dataset::Open(store_, "ds").status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(key), std::string::npos) << s.ToString();
  // An appending writer will not build on it either.
  EXPECT_EQ(DatasetWriter::Create(store_, "ds", {.append = true}).status().code(), StatusCode::kDataLoss);
}

TEST_P(DatasetCorruptionTest, ManifestWithoutSamplesIsRefused) {
  DatasetManifest empty;
  empty.version = 1;
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string bytes, EncodeManifest(empty));
  GRANARY_ASSERT_OK(store_->Put("other/" + ManifestKey(1), bytes));
  Status s = Dataset::Open(store_, "other").status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("no samples"), std::string::npos) << s.ToString();
}

INSTANTIATE_TEST_SUITE_P(Stores, DatasetCorruptionTest,
                         ::testing::Values(StoreKind::kMemory, StoreKind::kLocal), StoreKindName);

}  // namespace
}  // namespace granary::dataset::testing
