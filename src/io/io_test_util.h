// Helpers shared by the src/io tests: random bytes and raw file access. The scratch directory and
// the Status assertions every layer uses are in core/testing/test_util.h.
#ifndef GRANARY_IO_IO_TEST_UTIL_H_
#define GRANARY_IO_IO_TEST_UTIL_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace granary::testing {

inline std::vector<std::byte> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    for (size_t j = 0; j < 8 && i + j < n; ++j) out[i + j] = std::byte(v >> (8 * j));
  }
  return out;
}

// Writes `data` to `path` (created or truncated) with plain POSIX calls.
inline void WriteRawFile(const std::string& path, const std::vector<std::byte>& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    ASSERT_GT(n, 0) << path;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

// The whole content of `path`, read with plain POSIX calls; empty if it cannot be opened.
inline std::vector<std::byte> ReadRawFile(const std::string& path) {
  std::vector<std::byte> out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  std::byte buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  ::close(fd);
  return out;
}

inline bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

inline int64_t RawSize(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

// True when the ctest variant forces the psync engine.
inline bool PsyncForced() {
  const char* v = std::getenv("GRANARY_IO");
  return v != nullptr && std::string(v) == "psync";
}

}  // namespace granary::testing

#endif  // GRANARY_IO_IO_TEST_UTIL_H_
