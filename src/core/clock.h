// Monotonic time for measurements and timeouts.
#ifndef GRANARY_CORE_CLOCK_H_
#define GRANARY_CORE_CLOCK_H_

#include <time.h>

#include <cstdint>

namespace granary {

// Nanoseconds on CLOCK_MONOTONIC.
inline uint64_t NowNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Measures elapsed time since construction or the last Reset().
class Stopwatch {
 public:
  Stopwatch() : start_(NowNanos()) {}
  void Reset() { start_ = NowNanos(); }
  uint64_t ElapsedNanos() const { return NowNanos() - start_; }
  double ElapsedSeconds() const { return static_cast<double>(ElapsedNanos()) * 1e-9; }

 private:
  uint64_t start_;
};

}  // namespace granary

#endif  // GRANARY_CORE_CLOCK_H_
