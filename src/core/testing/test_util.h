// Helpers for the tests of every layer (core, io, store, tools, integration): a scratch
// directory and gtest assertions on Status and Result<T>. Test-only: never include it from
// library code. Layer-specific helpers live beside their tests (io/io_test_util.h,
// store/testing/test_util.h).
//
//   ScratchDir dir("local");                  // $GRANARY_TEST_TMPDIR/local-XXXXXX, removed at end
//   GRANARY_ASSERT_OK(store->Put("k", "v"));  // fails with the Status text when not OK
//   GRANARY_EXPECT_OK(file.Sync()) << "after rename";
//   GRANARY_ASSERT_OK_AND_ASSIGN(File file, File::Open(dir.Join("f"), {}));
#ifndef GRANARY_CORE_TESTING_TEST_UTIL_H_
#define GRANARY_CORE_TESTING_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "granary/status.h"

namespace granary::testing {

// A fresh directory "<tag>-XXXXXX" under $GRANARY_TEST_TMPDIR (set by ctest; /tmp when unset
// or empty), removed with everything in it on destruction. A directory that cannot be created
// is a test failure (path() is then empty). Thread-safe to construct concurrently (mkdtemp
// picks unique names); one instance is not meant to be shared across threads.
class ScratchDir {
 public:
  explicit ScratchDir(std::string_view tag = "granary") {
    const char* env = std::getenv("GRANARY_TEST_TMPDIR");
    const std::string base = env != nullptr && *env != '\0' ? env : "/tmp";
    std::error_code ec;
    std::filesystem::create_directories(base, ec);
    std::string templ = base + "/" + std::string(tag) + "-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) {
      ADD_FAILURE() << "cannot create a scratch directory " << templ << " under " << base;
      return;
    }
    path_ = std::move(templ);
  }
  ~ScratchDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Join(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

namespace internal {

inline const Status& StatusOf(const Status& status) { return status; }
template <typename T>
const Status& StatusOf(const Result<T>& result) {
  return result.status();
}

// gtest predicate-formatter behind GRANARY_{ASSERT,EXPECT}_OK: succeeds for an OK Status or
// Result; otherwise the failure names the expression and prints the Status.
template <typename T>
::testing::AssertionResult IsOk(const char* expr_text, const T& status_or_result) {
  const Status& status = StatusOf(status_or_result);
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << expr_text << " is not OK: " << status.ToString();
}

}  // namespace internal
}  // namespace granary::testing

// Asserts that `expr` (a Status or Result<T>) is OK, printing the Status otherwise. Evaluates
// `expr` once; more context can be streamed in: GRANARY_ASSERT_OK(s) << "key " << key;
// ASSERT_ returns from the enclosing (void) function on failure, EXPECT_ continues.
#define GRANARY_ASSERT_OK(expr) ASSERT_PRED_FORMAT1(::granary::testing::internal::IsOk, expr)
#define GRANARY_EXPECT_OK(expr) EXPECT_PRED_FORMAT1(::granary::testing::internal::IsOk, expr)

// `lhs = value of expr` (a Result<T>), or a fatal failure printing its Status. lhs may declare
// a variable: GRANARY_ASSERT_OK_AND_ASSIGN(auto file, File::Open(path, {})). Expands to several
// statements, so it cannot be the body of an unbraced if or loop.
#define GRANARY_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  GRANARY_ASSERT_OK_AND_ASSIGN_IMPL_(           \
      GRANARY_STATUS_CONCAT_(granary_test_result_, __LINE__), lhs, expr)
#define GRANARY_ASSERT_OK_AND_ASSIGN_IMPL_(result, lhs, expr)                      \
  auto result = (expr);                                                           \
  ASSERT_TRUE(result.ok()) << #expr << " is not OK: " << result.status().ToString(); \
  lhs = std::move(result).value()

#endif  // GRANARY_CORE_TESTING_TEST_UTIL_H_
