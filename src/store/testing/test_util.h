// Helpers for store tests: scratch directories and recognizable payloads. Test-only.
#ifndef GRANARY_STORE_TESTING_TEST_UTIL_H_
#define GRANARY_STORE_TESTING_TEST_UTIL_H_

#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace granary::testing {

// A fresh directory under $GRANARY_TEST_TMPDIR (or /tmp), removed with everything in it on
// destruction. Not thread-safe to construct concurrently with the same tag (names are unique).
class ScratchDir {
 public:
  explicit ScratchDir(std::string_view tag = "store") {
    const char* env = std::getenv("GRANARY_TEST_TMPDIR");
    std::filesystem::path base = env != nullptr && *env != '\0' ? env : "/tmp";
    std::error_code ec;
    std::filesystem::create_directories(base, ec);
    static std::atomic<int> counter{0};
    for (;;) {
      path_ = (base / (std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
                       std::to_string(counter.fetch_add(1))))
                  .string();
      if (std::filesystem::create_directory(path_, ec)) break;
      if (ec) std::abort();  // the base directory is unusable: nothing sensible to do in a test
    }
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Join(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

// `size` bytes that depend on (seed, position), so a piece of one payload never equals the same
// piece of another.
inline std::string Payload(uint64_t seed, size_t size) {
  std::string out(size, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < size; ++i) {
    if (i % 8 == 0) {  // splitmix64 step every 8 bytes
      x += 0x9E3779B97F4A7C15ull;
      uint64_t z = x;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      x = z ^ (z >> 31);
    }
    out[i] = static_cast<char>(x >> (8 * (i % 8)));
  }
  return out;
}

inline std::span<const std::byte> AsBytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}
inline std::span<std::byte> AsWritableBytes(std::string& s) {
  return std::as_writable_bytes(std::span(s.data(), s.size()));
}

}  // namespace granary::testing

#endif  // GRANARY_STORE_TESTING_TEST_UTIL_H_
