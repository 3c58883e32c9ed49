// Conformance: atomicity under concurrency and streaming writers.
#include <algorithm>
#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/testing/test_util.h"
#include "store/testing/store_conformance.h"
#include "store/testing/test_util.h"

namespace granary::testing {
namespace {

// Writes `data` through a Writer in uneven chunks.
Status WriteStreamed(ObjectStore& store, const std::string& key, const std::string& data,
                     const WriterOptions& options, size_t chunk_bytes) {
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<ObjectWriter> writer, store.NewWriter(key, options));
  for (size_t pos = 0; pos < data.size(); pos += chunk_bytes) {
    GRANARY_RETURN_IF_ERROR(
        writer->Append(AsBytes(std::string_view(data).substr(pos, chunk_bytes))));
  }
  return writer->Commit();
}

TEST_P(StoreConformanceTest, ConcurrentPutIfAbsentHasExactlyOneWinner) {
  constexpr int kThreads = 8;
  for (int round = 0; round < 5; ++round) {
    const std::string key = "race/manifest" + std::to_string(round);
    std::vector<Status> results(kThreads);
    std::vector<std::thread> threads;
    std::atomic<bool> go{false};
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        while (!go.load()) std::this_thread::yield();
        results[t] = store().PutIfAbsent(key, "writer " + std::to_string(t));
      });
    }
    go = true;
    for (std::thread& thread : threads) thread.join();
    int winner = -1;
    for (int t = 0; t < kThreads; ++t) {
      if (results[t].ok()) {
        EXPECT_EQ(winner, -1) << "two winners: " << winner << " and " << t;
        winner = t;
      } else {
        EXPECT_EQ(results[t].code(), StatusCode::kAlreadyExists) << results[t].ToString();
      }
    }
    ASSERT_NE(winner, -1);
    EXPECT_EQ(store().GetAll(key).value_or(""), "writer " + std::to_string(winner));
  }
}

TEST_P(StoreConformanceTest, ConcurrentWritersLeaveOneWholeValue) {
  constexpr int kThreads = 4;
  const std::string key = "contended/object";
  std::vector<std::string> values;
  for (int t = 0; t < kThreads; ++t) values.push_back(Payload(500 + t, 300000 + 4099 * t));
  std::vector<Status> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      WriterOptions options;
      options.part_bytes = 64 << 10;
      for (int i = 0; i < 4 && results[t].ok(); ++i) {
        results[t] = (i + t) % 2 == 0 ? store().Put(key, values[t])
                                      : WriteStreamed(store(), key, values[t], options, 10007);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const Status& s : results) GRANARY_ASSERT_OK(s);
  Result<std::string> final_value = store().GetAll(key);
  GRANARY_ASSERT_OK(final_value);
  EXPECT_NE(std::find(values.begin(), values.end(), *final_value), values.end())
      << "final value (" << final_value->size() << " bytes) is none of the written values";
}

TEST_P(StoreConformanceTest, ReadersNeverSeeTornValues) {
  const std::string key = "hot/object";
  std::vector<std::string> values;
  for (int v = 0; v < 6; ++v) values.push_back(Payload(900 + v, 50000 + 70001 * v));
  const std::set<std::string> allowed(values.begin(), values.end());
  GRANARY_ASSERT_OK(store().Put(key, values[0]));

  std::atomic<int> writers_left{2};
  std::atomic<int> reads{0};
  std::vector<std::string> problems[4];
  std::vector<std::thread> threads;
  std::vector<Status> writer_status(2);
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < 30 && writer_status[w].ok(); ++i) {
        writer_status[w] = store().Put(key, values[(i * 2 + w) % values.size()]);
      }
      --writers_left;
    });
  }
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      std::string buf(values.back().size() + 10, '\0');
      // Keep reading until both writers are done (and at least a few times).
      for (int i = 0; writers_left.load() > 0 || i < 5; ++i) {
        std::string got;
        if (r % 2 == 0) {
          Result<std::string> all = store().GetAll(key);
          if (!all.ok()) {
            problems[r].push_back(all.status().ToString());
            continue;
          }
          got = std::move(all).value();
        } else {
          ReadOp op;
          op.key = key;
          op.dest = AsWritableBytes(buf);
          Status s = store().GetMany(std::span(&op, 1));
          if (!s.ok() || !op.status.ok()) {
            problems[r].push_back(s.ok() ? op.status.ToString() : s.ToString());
            continue;
          }
          got = buf.substr(0, op.bytes_read);
        }
        ++reads;
        if (!allowed.contains(got)) {
          problems[r].push_back("torn read of " + std::to_string(got.size()) + " bytes");
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const Status& s : writer_status) GRANARY_ASSERT_OK(s);
  for (const auto& list : problems) {
    for (const std::string& p : list) ADD_FAILURE() << p;
  }
  EXPECT_GE(reads.load(), 20);
}

TEST_P(StoreConformanceTest, WriterStreamsManyPartsInParallel) {
  const std::string data = Payload(7, (20u << 20) + 12345);  // odd total length
  WriterOptions options;
  options.part_bytes = 1u << 20;
  options.max_parts_in_flight = 4;
  GRANARY_ASSERT_OK(store().Put("w/target", "old"));
  Result<std::unique_ptr<ObjectWriter>> writer = store().NewWriter("w/target", options);
  GRANARY_ASSERT_OK(writer);
  // Uneven appends that straddle part boundaries.
  size_t pos = 0;
  for (size_t step = 1; pos < data.size(); step = step * 3 % 700001 + 4097) {
    size_t n = std::min(step, data.size() - pos);
    GRANARY_ASSERT_OK((*writer)->Append(AsBytes(std::string_view(data).substr(pos, n))));
    pos += n;
    // Nothing new is visible before Commit.
    if (pos > (8u << 20) && pos - n <= (8u << 20)) {
      EXPECT_EQ(store().GetAll("w/target").value_or(""), "old");
    }
  }
  EXPECT_EQ((*writer)->bytes_appended(), data.size());
  EXPECT_EQ(store().GetAll("w/target").value_or(""), "old");
  GRANARY_ASSERT_OK((*writer)->Commit());
  Result<std::string> got = store().GetAll("w/target");
  GRANARY_ASSERT_OK(got);
  EXPECT_EQ(got->size(), data.size());
  EXPECT_TRUE(*got == data);
  // A committed writer refuses more work.
  EXPECT_FALSE((*writer)->Append(AsBytes("more")).ok());
  EXPECT_FALSE((*writer)->Commit().ok());
}

TEST_P(StoreConformanceTest, EmptyWriterCommitsEmptyObject) {
  Result<std::unique_ptr<ObjectWriter>> writer = store().NewWriter("w/empty");
  GRANARY_ASSERT_OK(writer);
  GRANARY_ASSERT_OK((*writer)->Commit());
  EXPECT_EQ(store().Stat("w/empty")->size_bytes, 0u);
}

TEST_P(StoreConformanceTest, AbortedOrDroppedWriterLeavesNothing) {
  const std::string data = Payload(8, (3u << 20) + 1);
  WriterOptions options;
  options.part_bytes = 1u << 20;
  GRANARY_ASSERT_OK(store().Put("keep", "old value"));
  {
    Result<std::unique_ptr<ObjectWriter>> writer = store().NewWriter("keep", options);
    GRANARY_ASSERT_OK(writer);
    GRANARY_ASSERT_OK((*writer)->Append(AsBytes(data)));
    GRANARY_ASSERT_OK((*writer)->Abort());
    GRANARY_ASSERT_OK((*writer)->Abort());  // idempotent
    EXPECT_FALSE((*writer)->Append(AsBytes("x")).ok());
    EXPECT_FALSE((*writer)->Commit().ok());
  }
  {
    Result<std::unique_ptr<ObjectWriter>> writer = store().NewWriter("fresh/key", options);
    GRANARY_ASSERT_OK(writer);
    GRANARY_ASSERT_OK((*writer)->Append(AsBytes(data)));
    // Destroyed without Commit.
  }
  {
    Result<std::unique_ptr<ObjectWriter>> writer = store().NewWriter("keep", options);
    GRANARY_ASSERT_OK(writer);
    GRANARY_ASSERT_OK((*writer)->Append(AsBytes(data)));
  }
  EXPECT_EQ(store().GetAll("keep").value_or(""), "old value");
  EXPECT_EQ(store().Stat("fresh/key").status().code(), StatusCode::kNotFound);
  Result<std::vector<ObjectInfo>> all = store().List("");
  GRANARY_ASSERT_OK(all);
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].key, "keep");
}

TEST_P(StoreConformanceTest, WriterRejectsBadOptions) {
  WriterOptions options;
  options.part_bytes = 0;
  EXPECT_EQ(store().NewWriter("k", options).status().code(), StatusCode::kInvalidArgument);
  options = WriterOptions();
  options.max_parts_in_flight = 0;
  EXPECT_EQ(store().NewWriter("k", options).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace granary::testing
