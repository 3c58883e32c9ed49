// Leveled logging to stderr. The level comes from the GRANARY_LOG environment variable
// (debug|info|warn|error|off; default warn), read once, and can be changed with SetLogLevel.
// Thread-safe: each line is written with one write(2).
//
//   GRANARY_LOG_INFO("opened %s with %d shards", url.c_str(), n);
#ifndef GRANARY_CORE_LOGGING_H_
#define GRANARY_CORE_LOGGING_H_

#include <string_view>

namespace granary {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

LogLevel GetLogLevel();
void SetLogLevel(LogLevel level);
// Parses "debug", "info", "warn"/"warning", "error", "off" (case-insensitive); false if unknown.
bool ParseLogLevel(std::string_view text, LogLevel* level);

// printf-style; prefer the macros, which skip formatting when the level is off.
void LogMessage(LogLevel level, const char* file, int line, const char* format, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace granary

#define GRANARY_LOG_AT_(level, ...)                                     \
  do {                                                                  \
    if (static_cast<int>(level) >= static_cast<int>(::granary::GetLogLevel())) \
      ::granary::LogMessage(level, __FILE__, __LINE__, __VA_ARGS__);    \
  } while (0)
#define GRANARY_LOG_DEBUG(...) GRANARY_LOG_AT_(::granary::LogLevel::kDebug, __VA_ARGS__)
#define GRANARY_LOG_INFO(...) GRANARY_LOG_AT_(::granary::LogLevel::kInfo, __VA_ARGS__)
#define GRANARY_LOG_WARN(...) GRANARY_LOG_AT_(::granary::LogLevel::kWarn, __VA_ARGS__)
#define GRANARY_LOG_ERROR(...) GRANARY_LOG_AT_(::granary::LogLevel::kError, __VA_ARGS__)

#endif  // GRANARY_CORE_LOGGING_H_
