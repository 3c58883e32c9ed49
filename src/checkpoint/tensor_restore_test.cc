// RestoreTensors over a LocalStore: tensors of every size spanning and sharing 4 MiB blocks, in
// several data files, read into destinations at every alignment; damage and truncation.
#include "checkpoint/tensor_restore.h"

#include <gtest/gtest.h>

#include <cstring>

#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_test_util.h"
#include "core/testing/test_util.h"

namespace granary::checkpoint {
namespace {

using testing::Contains;
using testing::StepSpec;
using testing::TensorBytes;
using testing::WriteStep;

class TensorRestoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, OpenStore(dir_.path()));
    BufferPool::Options options;
    options.buffer_bytes = kRestoreBlockBytes;
    options.max_buffers = 2 * kRestoreBlocksPerBatch;
    GRANARY_ASSERT_OK_AND_ASSIGN(blocks_, BufferPool::Create(options));
  }

  // Commits step 1: small and large tensors, a data file roll-over every ~9 MiB.
  RankManifest WriteState() {
    StepSpec spec;
    spec.step = 1;
    spec.tensors = {{"a", 3}, {"b", 70000}, {"c", (5u << 20) + 17}, {"d", 1}, {"e", 0},
                    {"f", (9u << 20) + 4095}, {"g", 4096}, {"h", 123457}, {"i", 2u << 20}};
    spec.options.data_file_bytes = 9u << 20;
    spec.options.chunk_bytes = 1u << 20;  // chunks straddle the 4 MiB blocks
    auto m = WriteStep(*store_, "", spec);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? (*m)[0] : RankManifest{};
  }

  // Reads every tensor of `m` into memory at `misalign` bytes past a page boundary.
  Status Restore(const RankManifest& m, size_t misalign, std::vector<std::string>* out) {
    memory_.clear();
    std::vector<TensorRead> reads;
    for (const TensorEntry& e : m.tensors) {
      memory_.emplace_back(e.length + misalign + 4096, '\0');
      std::string& mem = memory_.back();
      const uintptr_t base = reinterpret_cast<uintptr_t>(mem.data());
      const size_t skip = (4096 - base % 4096) % 4096 + misalign;
      reads.push_back(TensorRead{&e, std::span(reinterpret_cast<std::byte*>(mem.data()) + skip, e.length)});
    }
    Status s = RestoreTensors(*store_, "", m, reads, *blocks_);
    out->clear();
    for (const TensorRead& r : reads) out->emplace_back(reinterpret_cast<const char*>(r.dest.data()), r.dest.size());
    return s;
  }

  granary::testing::ScratchDir dir_;
  std::unique_ptr<ObjectStore> store_;
  std::unique_ptr<BufferPool> blocks_;
  std::vector<std::string> memory_;
};

TEST_F(TensorRestoreTest, EveryTensorArrivesExactlyAtAnyDestinationAlignment) {
  const RankManifest m = WriteState();
  ASSERT_GT(m.tensors.back().key, m.tensors.front().key);  // more than one data file
  for (size_t misalign : {size_t{0}, size_t{64}, size_t{4095}}) {
    std::vector<std::string> got;
    GRANARY_ASSERT_OK(Restore(m, misalign, &got));
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      EXPECT_EQ(got[i], TensorBytes(1, 0, m.tensors[i].name, m.tensors[i].length))
          << m.tensors[i].name << " misalign " << misalign;
    }
  }
  // A subset of the tensors, in another order.
  std::vector<TensorRead> reads;
  std::string f(m.tensors[5].length, '\0'), a(m.tensors[0].length, '\0');
  reads.push_back(TensorRead{&m.tensors[5], std::as_writable_bytes(std::span(f))});
  reads.push_back(TensorRead{&m.tensors[0], std::as_writable_bytes(std::span(a))});
  GRANARY_ASSERT_OK(RestoreTensors(*store_, "", m, reads, *blocks_));
  EXPECT_EQ(f, TensorBytes(1, 0, "f", m.tensors[5].length));
  EXPECT_EQ(a, TensorBytes(1, 0, "a", 3));
}

TEST_F(TensorRestoreTest, FlippedByteIsDataLossNamingTensorAndFile) {
  const RankManifest m = WriteState();
  const TensorEntry& f = m.tensors[5];
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, f.key, f.offset + (4u << 20) + 5));
  std::vector<std::string> got;
  Status s = Restore(m, 64, &got);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "\"f\"")) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), f.key)) << s.ToString();
}

TEST_F(TensorRestoreTest, TruncatedOrMissingDataFileIsReported) {
  const RankManifest m = WriteState();
  const TensorEntry& c = m.tensors[2];
  GRANARY_ASSERT_OK(testing::Truncate(*store_, c.key, c.offset + 1000));
  std::vector<std::string> got;
  Status s = Restore(m, 0, &got);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "\"c\"")) << s.ToString();
  GRANARY_ASSERT_OK(store_->Delete(c.key));
  s = Restore(m, 0, &got);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(Contains(s.message(), c.key)) << s.ToString();
}

TEST_F(TensorRestoreTest, WrongDestinationSizeIsRejectedBeforeReading) {
  const RankManifest m = WriteState();
  std::string small(10, '\0');
  TensorRead read{&m.tensors[1], std::as_writable_bytes(std::span(small))};
  Status s = RestoreTensors(*store_, "", m, std::span(&read, 1), *blocks_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), "\"b\"")) << s.ToString();
}

}  // namespace
}  // namespace granary::checkpoint
