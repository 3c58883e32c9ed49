#include "core/logging.h"

#include <gtest/gtest.h>

namespace granary {
namespace {

TEST(LoggingTest, ParsesLevels) {
  LogLevel l;
  ASSERT_TRUE(ParseLogLevel("DEBUG", &l));
  EXPECT_EQ(l, LogLevel::kDebug);
  ASSERT_TRUE(ParseLogLevel("warning", &l));
  EXPECT_EQ(l, LogLevel::kWarn);
  ASSERT_TRUE(ParseLogLevel("off", &l));
  EXPECT_EQ(l, LogLevel::kOff);
  EXPECT_FALSE(ParseLogLevel("loud", &l));
}

TEST(LoggingTest, LevelFiltersMessages) {
  LogLevel saved = GetLogLevel();
  SetLogLevel(LogLevel::kError);
  testing::internal::CaptureStderr();
  GRANARY_LOG_INFO("hidden %d", 1);
  GRANARY_LOG_ERROR("shown %d", 2);
  std::string err = testing::internal::GetCapturedStderr();
  SetLogLevel(saved);
  EXPECT_EQ(err.find("hidden"), std::string::npos);
  EXPECT_NE(err.find("shown 2"), std::string::npos);
  EXPECT_NE(err.find("logging_test.cc"), std::string::npos);
}

}  // namespace
}  // namespace granary
