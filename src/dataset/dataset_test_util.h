// Helpers for the dataset tests: a store per parameter (memory or a local directory) and a
// deterministic sample generator whose samples vary in key length, field set and size.
#ifndef GRANARY_DATASET_DATASET_TEST_UTIL_H_
#define GRANARY_DATASET_DATASET_TEST_UTIL_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/testing/test_util.h"
#include "granary/dataset.h"
#include "granary/store.h"

namespace granary::dataset::testing {

struct Sample {
  std::string key;
  std::vector<std::pair<std::string, std::string>> fields;
};

// Sample i of a generated dataset (`tag` changes the bytes, e.g. per version). Keys are
// "k<i>-<tag>" except every 97th is 1 byte long-ish and every 101st is 3000 bytes; fields go
// from none to 40 small ones, with 0-byte fields and sizes up to ~30 KiB.
inline Sample MakeSample(uint64_t i, std::string_view tag = "") {
  Sample s;
  s.key = "k" + std::to_string(i) + "-" + std::string(tag);
  if (i % 101 == 0) s.key += std::string(3000, static_cast<char>('a' + i % 26));
  if (i % 97 == 5) s.key = std::string(1, static_cast<char>(33 + i % 90)) + std::string(tag);
  auto bytes = [&](size_t n, int salt) {
    std::string b(n, '\0');
    for (size_t j = 0; j < n; ++j) b[j] = static_cast<char>((i * 131 + j * 7 + salt) & 0xff);
    return b;
  };
  switch (i % 5) {
    case 0: break;  // no fields
    case 1: s.fields = {{"jpg", bytes((i * 977) % 30000, 1)}, {"cls", std::to_string(i % 10)}}; break;
    case 2: s.fields = {{"empty", ""}, {"jpg", bytes(1 + i % 300, 2)}}; break;
    case 3:
      for (int f = 0; f < 40; ++f) s.fields.push_back({"f" + std::to_string(f), bytes(f % 3, f)});
      break;
    default: s.fields = {{"cls", std::to_string(i)}, {"txt", bytes(4096 + i % 7, 3)}}; break;
  }
  return s;
}

inline Status AddSample(DatasetWriter& w, const Sample& s) {
  std::vector<FieldData> fields;
  for (const auto& [name, data] : s.fields) fields.emplace_back(name, data);
  return w.Add(s.key, fields);
}

inline std::string AsString(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// Checks sample i of `batch` against `expected`; returns a description of the first mismatch.
inline std::string Mismatch(const Batch& batch, size_t i, const Sample& expected) {
  if (!batch.ok(i)) return "not ok";
  if (batch.key(i) != expected.key) return "key " + std::string(batch.key(i).substr(0, 40));
  if (batch.num_fields(i) != expected.fields.size()) return "field count";
  for (size_t j = 0; j < expected.fields.size(); ++j) {
    if (batch.field_name(i, j) != expected.fields[j].first) return "field name " + std::to_string(j);
    if (AsString(batch.field(i, j)) != expected.fields[j].second) return "field " + std::to_string(j);
    auto named = batch.field(i, expected.fields[j].first);
    if (!named || AsString(*named) != expected.fields[j].second) return "named field";
  }
  return "";
}

enum class StoreKind { kMemory, kLocal };

// A fresh store of the parameter's kind, kept alive by the fixture.
class DatasetStoreTest : public ::testing::TestWithParam<StoreKind> {
 protected:
  void SetUp() override {
    if (GetParam() == StoreKind::kLocal) {
      auto s = OpenStore(dir_.path());
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      store_ = std::move(s).value();
    } else {
      static std::atomic<int> counter{0};
      auto s = OpenStore("mem://dataset-test-" + std::to_string(::getpid()) + "-" +
                         std::to_string(counter++));
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      store_ = std::move(s).value();
    }
  }
  bool local() const { return GetParam() == StoreKind::kLocal; }

  // Writes samples [first, first + count) generated with `tag` as one version.
  Result<DatasetWriteStats> Write(std::string_view prefix, uint64_t first, uint64_t count,
                                  DatasetWriterOptions options = {}, std::string_view tag = "") {
    GRANARY_ASSIGN_OR_RETURN(auto w, DatasetWriter::Create(store_, prefix, options));
    for (uint64_t i = first; i < first + count; ++i) {
      GRANARY_RETURN_IF_ERROR(AddSample(*w, MakeSample(i, tag)));
    }
    return w->Finish();
  }

  granary::testing::ScratchDir dir_{"dataset"};
  std::shared_ptr<ObjectStore> store_;
};

inline std::string StoreKindName(const ::testing::TestParamInfo<StoreKind>& info) {
  return info.param == StoreKind::kLocal ? "Local" : "Memory";
}

}  // namespace granary::dataset::testing

#endif  // GRANARY_DATASET_DATASET_TEST_UTIL_H_
