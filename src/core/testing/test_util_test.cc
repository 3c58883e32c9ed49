#include "core/testing/test_util.h"

#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace granary::testing {
namespace {

Result<int> Answer(bool ok) {
  if (!ok) return NotFoundError("no answer in /deep/thought");
  return 42;
}

TEST(ScratchDirTest, IsFreshUnderTheTestTmpdirAndRemovedWithItsContents) {
  std::string path;
  {
    ScratchDir a("scratch");
    ScratchDir b("scratch");
    path = a.path();
    ASSERT_FALSE(path.empty());
    EXPECT_NE(a.path(), b.path());
    EXPECT_TRUE(std::filesystem::is_directory(path));
    EXPECT_TRUE(std::filesystem::is_empty(path));
    EXPECT_EQ(std::filesystem::path(path).filename().string().rfind("scratch-", 0), 0u) << path;
    if (const char* root = std::getenv("GRANARY_TEST_TMPDIR"); root != nullptr && *root != '\0') {
      EXPECT_EQ(path.rfind(std::string(root) + "/", 0), 0u) << path;
    }
    EXPECT_EQ(a.Join("x/y"), path + "/x/y");
    std::filesystem::create_directories(a.Join("sub"));
    std::ofstream(a.Join("sub/file")) << "data";
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(StatusAssertionsTest, PassOnOkStatusAndResult) {
  GRANARY_ASSERT_OK(Status::OK());
  GRANARY_EXPECT_OK(Status::OK());
  GRANARY_ASSERT_OK(Answer(true));
  GRANARY_EXPECT_OK(Answer(true)) << "never printed";
  GRANARY_ASSERT_OK_AND_ASSIGN(int answer, Answer(true));
  EXPECT_EQ(answer, 42);
  GRANARY_ASSERT_OK_AND_ASSIGN(answer, Answer(true));  // assigns to an existing variable
  EXPECT_EQ(answer, 42);
}

TEST(StatusAssertionsTest, ExpectOkFailsAndPrintsTheStatus) {
  EXPECT_NONFATAL_FAILURE(GRANARY_EXPECT_OK(InternalError("disk on fire")), "disk on fire");
  EXPECT_NONFATAL_FAILURE(GRANARY_EXPECT_OK(Answer(false)) << "extra context", "extra context");
  EXPECT_NONFATAL_FAILURE(GRANARY_EXPECT_OK(Answer(false)), "/deep/thought");
}

TEST(StatusAssertionsTest, AssertOkFailsFatallyAndStops) {
  EXPECT_FATAL_FAILURE(GRANARY_ASSERT_OK(InternalError("disk on fire")), "disk on fire");
  EXPECT_FATAL_FAILURE(GRANARY_ASSERT_OK(Answer(false)), "Answer(false) is not OK");
  EXPECT_FATAL_FAILURE(
      {
        GRANARY_ASSERT_OK_AND_ASSIGN(int unused, Answer(false));
        (void)unused;
      },
      "/deep/thought");
}

}  // namespace
}  // namespace granary::testing
