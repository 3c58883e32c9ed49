// The ObjectStore conformance suite: one set of tests that every driver must pass, written once
// as a value-parameterized gtest suite (in the spirit of tensorstore's kvstore/test_util).
//
// A driver's test file instantiates it with a factory for fresh, empty stores:
//
//   INSTANTIATE_TEST_SUITE_P(Local, StoreConformanceTest,
//                            ::testing::Values(LocalStoreHarnessParam()),
//                            ConformanceParamName);
//
// and links the granary_store_conformance object library. The suite covers the promises of
// granary/store.h: whole and ranged reads, batched reads with per-op outcomes, atomic and
// create-only puts under concurrency, streaming writers (commit, abort, destruction), sorted
// paginated listing, delete, and key validation (nothing written outside the store).
#ifndef GRANARY_STORE_TESTING_STORE_CONFORMANCE_H_
#define GRANARY_STORE_TESTING_STORE_CONFORMANCE_H_

#include <gtest/gtest.h>

#include <functional>
#include <ostream>
#include <memory>
#include <string>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/status.h"
#include "granary/store.h"

namespace granary::testing {

// One fresh store plus whatever keeps it alive (a scratch directory, a server connection);
// destroying the harness cleans up.
class StoreHarness {
 public:
  virtual ~StoreHarness() = default;
  virtual ObjectStore& store() = 0;
  // Files or objects that exist outside the store's own namespace (for a directory store:
  // anything next to the root, or inside it but outside the keys and .granary). The suite
  // checks this stays empty after invalid keys were tried.
  virtual std::vector<std::string> StrayEntries() { return {}; }
  // The longest key the store accepts (1024 bytes, less what a driver's prefix takes).
  virtual size_t max_key_bytes() { return 1024; }
};

struct ConformanceParam {
  std::string name;  // test-name suffix: "Local", "Memory", "S3"
  std::function<Result<std::unique_ptr<StoreHarness>>()> make;
  // Why the driver cannot be tested here (no server configured), "" when it can; the tests
  // then skip with that reason.
  std::function<std::string()> skip_reason;
};

// Shown by gtest instead of a byte dump.
inline void PrintTo(const ConformanceParam& param, std::ostream* os) { *os << param.name; }

// gtest name generator for INSTANTIATE_TEST_SUITE_P.
inline std::string ConformanceParamName(
    const ::testing::TestParamInfo<ConformanceParam>& info) {
  return info.param.name;
}

class StoreConformanceTest : public ::testing::TestWithParam<ConformanceParam> {
 protected:
  void SetUp() override {
    if (GetParam().skip_reason) {
      const std::string why = GetParam().skip_reason();
      if (!why.empty()) GTEST_SKIP() << why;
    }
    GRANARY_ASSERT_OK_AND_ASSIGN(harness_, GetParam().make());
  }
  void TearDown() override {
    // Whatever a test did (aborts, failures, concurrency), nothing may be left behind.
    if (harness_ != nullptr) {
      for (const std::string& stray : harness_->StrayEntries()) ADD_FAILURE() << "stray " << stray;
    }
    harness_.reset();
  }

  ObjectStore& store() { return harness_->store(); }
  StoreHarness& harness() { return *harness_; }

 private:
  std::unique_ptr<StoreHarness> harness_;
};

// Factories for the drivers in this repository (store_conformance_harness.cc).
ConformanceParam LocalStoreConformanceParam();
ConformanceParam MemoryStoreConformanceParam();

}  // namespace granary::testing

#endif  // GRANARY_STORE_TESTING_STORE_CONFORMANCE_H_
