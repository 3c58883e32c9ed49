// granary_bench_synth_dataset URL N: writes a dataset of N samples (key = 9+ decimal digits,
// one field "b" of 1 byte) with the real DatasetWriter, for the benchmark's open-time and
// index-memory point on 100M samples (Python's Writer.add would take minutes at that count).
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "granary/dataset.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s URL NUM_SAMPLES\n", argv[0]);
    return 2;
  }
  const uint64_t n = std::strtoull(argv[2], nullptr, 10);
  auto writer = granary::DatasetWriter::Create(argv[1]);
  if (!writer.ok()) {
    std::fprintf(stderr, "%s\n", writer.status().ToString().c_str());
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  char key[32];
  for (uint64_t i = 0; i < n; ++i) {
    int len = std::snprintf(key, sizeof(key), "%09" PRIu64, i);
    granary::Status s = (*writer)->Add(std::string_view(key, len), {{"b", "x"}});
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.ToString().c_str());
      return 1;
    }
  }
  auto stats = (*writer)->Finish();
  if (!stats.ok()) {
    std::fprintf(stderr, "%s\n", stats.status().ToString().c_str());
    return 1;
  }
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"samples\": %" PRIu64 ", \"write_s\": %.3f, \"shards\": %" PRIu64 "}\n",
              stats->total_samples, s, stats->shards_added);
  return 0;
}
