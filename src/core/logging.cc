#include "core/logging.h"

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

namespace granary {
namespace {

LogLevel LevelFromEnv() {
  LogLevel level = LogLevel::kWarn;
  if (const char* env = std::getenv("GRANARY_LOG")) {
    if (!ParseLogLevel(env, &level)) level = LogLevel::kWarn;
  }
  return level;
}

std::atomic<int>& LevelStorage() {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}

const char* LevelTag(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "D";
    case LogLevel::kInfo: return "I";
    case LogLevel::kWarn: return "W";
    case LogLevel::kError: return "E";
    case LogLevel::kOff: return "-";
  }
  return "?";
}

}  // namespace

LogLevel GetLogLevel() {
  return static_cast<LogLevel>(LevelStorage().load(std::memory_order_relaxed));
}
void SetLogLevel(LogLevel level) {
  LevelStorage().store(static_cast<int>(level), std::memory_order_relaxed);
}

bool ParseLogLevel(std::string_view text, LogLevel* level) {
  std::string t(text);
  for (char& c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (t == "debug") *level = LogLevel::kDebug;
  else if (t == "info") *level = LogLevel::kInfo;
  else if (t == "warn" || t == "warning") *level = LogLevel::kWarn;
  else if (t == "error") *level = LogLevel::kError;
  else if (t == "off" || t == "none") *level = LogLevel::kOff;
  else return false;
  return true;
}

void LogMessage(LogLevel level, const char* file, int line, const char* format, ...) {
  char buf[2048];
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm tm_utc;
  gmtime_r(&ts.tv_sec, &tm_utc);
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  int n = std::snprintf(buf, sizeof(buf), "granary %s %02d:%02d:%02d.%03ld %s:%d] ",
                        LevelTag(level), tm_utc.tm_hour, tm_utc.tm_min, tm_utc.tm_sec,
                        ts.tv_nsec / 1000000, base, line);
  va_list ap;
  va_start(ap, format);
  int m = std::vsnprintf(buf + n, sizeof(buf) - n - 1, format, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(n) + (m < 0 ? 0 : std::min<size_t>(m, sizeof(buf) - n - 2));
  buf[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, buf, len);
  (void)ignored;  // Logging must never fail the caller.
}

}  // namespace granary
