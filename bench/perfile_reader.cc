// granary_bench_perfile: the naive C++ way to read a dataset stored as one file per sample.
//
// Reads the files named in a list (one path per line; a file or "-" for stdin) in the given
// order, each with open / fstat / read (until st_size) / close, touching every byte (CRC-32C of
// each file's contents), optionally on N threads that take the next path from a shared counter
// (so the files are still started in list order; N threads keep up to N reads in flight).
// Plain POSIX, no granary code. Prints one JSON object:
//
//   {"samples": n, "bytes": B, "seconds": s, "samples_per_s": ..., "MBps": ... (1e6 bytes/s),
//    "p50_us": ..., "p99_us": ..., "cpu_s": user+sys, "cpu_user_s", "cpu_sys_s", "threads": N,
//    "crc_sum": sum of the files' CRC-32Cs mod 2^64}
//
// seconds, cpu_* and the rates cover the reads only (not reading the list). Latency = one file's
// open..close on its thread. crc_sum lets a caller check that the same bytes were read as by
// another reader (the sum does not depend on the order).
//
// Usage: granary_bench_perfile [--list FILE|-] [--threads N] [--limit N]
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace {

// ---- CRC-32C (Castagnoli): SSE4.2 where the CPU has it, else a table ----

uint32_t crc_table[8][256];

void InitTable() {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (int t = 1; t < 8; ++t) {
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
    }
  }
}

uint32_t CrcTable(const unsigned char* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= c;
    c = crc_table[7][v & 0xFF] ^ crc_table[6][(v >> 8) & 0xFF] ^
        crc_table[5][(v >> 16) & 0xFF] ^ crc_table[4][(v >> 24) & 0xFF] ^
        crc_table[3][(v >> 32) & 0xFF] ^ crc_table[2][(v >> 40) & 0xFF] ^
        crc_table[1][(v >> 48) & 0xFF] ^ crc_table[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
  return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t CrcHw(const unsigned char* p, size_t n) {
  uint64_t c = 0xFFFFFFFFu;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}
#endif

bool have_hw_crc = false;

uint32_t Crc32c(const unsigned char* p, size_t n) {
#if defined(__x86_64__)
  if (have_hw_crc) return CrcHw(p, n);
#endif
  return CrcTable(p, n);
}

// ---- reading ----

struct Worker {
  std::vector<uint32_t> latency_ns;  // per file this thread read
  uint64_t bytes = 0;
  uint64_t crc_sum = 0;
  std::string error;
};

double CpuSeconds(const rusage& r, bool user) {
  const timeval& t = user ? r.ru_utime : r.ru_stime;
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
}

void ReadFiles(const std::vector<std::string>& paths, std::atomic<size_t>& next,
               std::atomic<bool>& failed, Worker& w) {
  std::vector<unsigned char> buf(1 << 20);
  for (;;) {
    if (failed.load(std::memory_order_relaxed)) return;
    size_t i = next.fetch_add(1, std::memory_order_relaxed);
    if (i >= paths.size()) return;
    const std::string& path = paths[i];
    auto t0 = std::chrono::steady_clock::now();
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      w.error = "open " + path + ": " + std::strerror(errno);
      failed = true;
      return;
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      w.error = "fstat " + path + ": " + std::strerror(errno);
      ::close(fd);
      failed = true;
      return;
    }
    size_t want = static_cast<size_t>(st.st_size);
    if (buf.size() < want) buf.resize(want);
    size_t got = 0;
    while (got < want) {
      ssize_t n = ::read(fd, buf.data() + got, want - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        w.error = "read " + path + ": " + std::strerror(errno);
        ::close(fd);
        failed = true;
        return;
      }
      if (n == 0) break;  // the file shrank: take what is there
      got += static_cast<size_t>(n);
    }
    ::close(fd);
    auto t1 = std::chrono::steady_clock::now();
    w.crc_sum += Crc32c(buf.data(), got);
    w.bytes += got;
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
    w.latency_ns.push_back(static_cast<uint32_t>(std::min<int64_t>(ns, UINT32_MAX)));
  }
}

double Percentile(std::vector<uint32_t>& v, double q) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]);
}

int Usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--list FILE|-] [--threads N] [--limit N]\n"
               "Reads every file named in the list (one path per line; default: stdin) in\n"
               "order with open/fstat/read/close, CRC-32C of every file, on N threads\n"
               "(default 1); prints JSON: samples/s, MB/s, p50/p99 per-file latency, CPU.\n",
               argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string list = "-";
  unsigned threads = 1;
  size_t limit = SIZE_MAX;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::exit(Usage(argv[0]));
      }
      return argv[++i];
    };
    if (a == "--list") {
      list = value();
    } else if (a == "--threads") {
      threads = static_cast<unsigned>(std::strtoul(value(), nullptr, 10));
    } else if (a == "--limit") {
      limit = static_cast<size_t>(std::strtoull(value(), nullptr, 10));
    } else if (a == "-h" || a == "--help") {
      Usage(argv[0]);
      return 0;
    } else {
      return Usage(argv[0]);
    }
  }
  if (threads == 0 || threads > 4096) return Usage(argv[0]);
  InitTable();
#if defined(__x86_64__)
  have_hw_crc = __builtin_cpu_supports("sse4.2");
#endif

  std::vector<std::string> paths;
  {
    std::ifstream file;
    std::istream* in = &std::cin;
    if (list != "-") {
      file.open(list);
      if (!file) {
        std::fprintf(stderr, "granary_bench_perfile: cannot open %s: %s\n", list.c_str(),
                     std::strerror(errno));
        return 1;
      }
      in = &file;
    }
    std::string line;
    while (paths.size() < limit && std::getline(*in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) paths.push_back(std::move(line));
    }
  }

  std::vector<Worker> workers(threads);
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  rusage r0{}, r1{};
  ::getrusage(RUSAGE_SELF, &r0);
  auto t0 = std::chrono::steady_clock::now();
  if (threads == 1) {
    ReadFiles(paths, next, failed, workers[0]);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back(ReadFiles, std::cref(paths), std::ref(next), std::ref(failed),
                        std::ref(workers[t]));
    }
    for (auto& t : pool) t.join();
  }
  auto t1 = std::chrono::steady_clock::now();
  ::getrusage(RUSAGE_SELF, &r1);
  for (const auto& w : workers) {
    if (!w.error.empty()) {
      std::fprintf(stderr, "granary_bench_perfile: %s\n", w.error.c_str());
      return 1;
    }
  }

  std::vector<uint32_t> lat;
  lat.reserve(paths.size());
  uint64_t bytes = 0, crc_sum = 0;
  for (auto& w : workers) {
    lat.insert(lat.end(), w.latency_ns.begin(), w.latency_ns.end());
    bytes += w.bytes;
    crc_sum += w.crc_sum;
  }
  double seconds = std::chrono::duration<double>(t1 - t0).count();
  double user = CpuSeconds(r1, true) - CpuSeconds(r0, true);
  double sys = CpuSeconds(r1, false) - CpuSeconds(r0, false);
  double n = static_cast<double>(lat.size());
  double p50 = Percentile(lat, 0.50) / 1e3;
  double p99 = Percentile(lat, 0.99) / 1e3;
  std::printf(
      "{\"samples\": %zu, \"bytes\": %" PRIu64 ", \"seconds\": %.6f, \"samples_per_s\": %.3f, "
      "\"MBps\": %.3f, \"p50_us\": %.3f, \"p99_us\": %.3f, \"cpu_s\": %.6f, "
      "\"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f, \"threads\": %u, \"crc_sum\": %" PRIu64
      ", \"hw_crc\": %s}\n",
      lat.size(), bytes, seconds, seconds > 0 ? n / seconds : 0.0,
      seconds > 0 ? static_cast<double>(bytes) / seconds / 1e6 : 0.0, p50, p99, user + sys, user,
      sys, threads, crc_sum, have_hw_crc ? "true" : "false");
  return 0;
}
