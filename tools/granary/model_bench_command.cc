// `granary model bench SOURCE...`: loads every tensor with Model::Read --rounds times and reports
// seconds, GB/s, time to the first tensor and where the bytes came from, next to a ceiling
// measured between the rounds on the same bytes (cold: O_DIRECT reads; warm: buffered preads into
// one reused buffer). Arguments and usage: model_commands.cc.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "model_cli.h"
#include "granary/io.h"
#include "granary/model.h"
#include "granary/status.h"
#include "io/page_cache.h"
#include "model/model_impl.h"  // DTypeAlignment: the loader's own rule for "misaligned"

namespace granary::cli {
namespace {

using Clock = std::chrono::steady_clock;

// The ceiling's reads, as the brief for a fair comparison fixes them.
constexpr size_t kCeilingRequestBytes = 8u << 20;
constexpr unsigned kCeilingInFlight = 8;
constexpr size_t kHugePageBytes = 2u << 20;


double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double Gbps(uint64_t bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e9 : 0; }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// One model file opened again for eviction, residency probes and the ceiling.
struct BenchFile {
  std::string path;
  uint64_t begin = 0, end = 0;  // the data buffer: the bytes the loader reads
  File buffered;
  File direct;  // not open where O_DIRECT is unsupported (tmpfs)
};

// The local path of a model file (ModelFile::url is one for local files, file:// sources
// included); nullopt for files of other stores.
std::optional<std::string> LocalPath(const std::string& url) {
  if (url.find("://") != std::string::npos) return std::nullopt;
  return url;
}

Result<std::vector<BenchFile>> OpenBenchFiles(const Model& m) {
  std::vector<BenchFile> out;
  for (const ModelFile& f : m.files()) {
    std::optional<std::string> path = LocalPath(f.url);
    if (!path) return UnimplementedError(f.url + " is not a local file");
    BenchFile b;
    b.path = *path;
    b.begin = f.data_start;
    b.end = f.size_bytes;
    GRANARY_ASSIGN_OR_RETURN(b.buffered, File::Open(b.path, {}));
    Result<File> direct = File::Open(b.path, {.mode = File::Mode::kRead, .direct = true});
    if (direct.ok()) b.direct = std::move(*direct);
    out.push_back(std::move(b));
  }
  return out;
}

// Bytes of `f` in the page cache: cachestat(2), else mincore(2) on a mapping; -1 if unknown.
int64_t ResidentBytes(const BenchFile& f) {
  if (f.end == 0) return 0;
  uint64_t pages = 0;
  const int64_t cached = CachedPages(f.buffered.fd(), 0, f.end, &pages);
  if (cached >= 0) return std::min<int64_t>(cached * kDirectIoAlignment, f.end);
  void* map = ::mmap(nullptr, f.end, PROT_READ, MAP_SHARED, f.buffered.fd(), 0);
  if (map == MAP_FAILED) return -1;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> in_core((f.end + page - 1) / page);
  const int rc = ::mincore(map, f.end, in_core.data());
  ::munmap(map, f.end);
  if (rc != 0) return -1;
  const int64_t n = std::count_if(in_core.begin(), in_core.end(), [](auto c) { return c & 1; });
  return std::min<int64_t>(n * page, f.end);
}

int64_t ResidentBytes(const std::vector<BenchFile>& files) {
  int64_t total = 0;
  for (const BenchFile& f : files) {
    const int64_t n = ResidentBytes(f);
    if (n < 0) return -1;
    total += n;
  }
  return total;
}

// Drops the files from the page cache: written back first (dirty pages are not dropped), then
// DONTNEED. Best effort by design: what stays resident is measured and reported.
void Evict(std::vector<BenchFile>& files) {
  for (BenchFile& f : files) {
    f.buffered.DataSync().IgnoreError();  // a failed writeback only leaves pages resident
    ::posix_fadvise(f.buffered.fd(), 0, 0, POSIX_FADV_DONTNEED);
  }
}

struct Round {
  double seconds = 0, first_tensor_s = 0;
  ReadStats stats;
  int64_t resident_bytes = -1;  // of the files, just before the load
  double ceiling_seconds = 0;
  uint64_t ceiling_bytes = 0;
  int64_t ceiling_resident_bytes = -1;
};

// Loads every tensor, keeping them until the last arrives as a real load would, then drops them.
Status LoadAll(Model& m, const ReadOptions& options, Round* round) {
  std::vector<size_t> all(m.tensors().size());
  std::iota(all.begin(), all.end(), size_t{0});
  std::vector<std::shared_ptr<void>> owners;
  owners.reserve(all.size());
  uint64_t bytes = 0;
  const Clock::time_point t0 = Clock::now();
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<TensorStream> stream, m.Read(std::move(all), options));
  while (true) {
    GRANARY_ASSIGN_OR_RETURN(std::optional<LoadedTensor> t, stream->Next());
    if (!t) break;
    if (owners.empty()) round->first_tensor_s = SecondsSince(t0);
    bytes += t->data.size();
    owners.push_back(std::move(t->owner));
  }
  round->seconds = SecondsSince(t0);
  round->stats = stream->stats();
  if (bytes != m.total_bytes()) {
    return InternalError("loaded " + std::to_string(bytes) + " bytes of " +
                         std::to_string(m.total_bytes()));
  }
  return Status::OK();
}

// The cold ceiling: O_DIRECT reads of the 4 KiB-aligned cover of every file's data buffer, in
// kCeilingRequestBytes requests, kCeilingInFlight in flight. The bytes are discarded, so the
// buffers are reused round-robin (two reads landing in one buffer at once would be harmless).
Status DirectCeiling(const std::vector<BenchFile>& files, IoEngine& engine,
                     const std::vector<AlignedBuffer>& buffers, Round* round) {
  std::vector<IoRequest> requests;
  for (const BenchFile& f : files) {
    const uint64_t end = (f.end + kDirectIoAlignment - 1) / kDirectIoAlignment * kDirectIoAlignment;
    for (uint64_t off = f.begin / kDirectIoAlignment * kDirectIoAlignment; off < end;
         off += kCeilingRequestBytes) {
      IoRequest r;
      r.fd = f.direct.fd();
      r.offset = off;
      r.length = std::min<uint64_t>(kCeilingRequestBytes, end - off);
      r.buffer = buffers[requests.size() % buffers.size()].data();
      requests.push_back(r);
    }
  }
  const Clock::time_point t0 = Clock::now();
  GRANARY_RETURN_IF_ERROR(engine.Run(requests));
  round->ceiling_seconds = SecondsSince(t0);
  for (const IoRequest& r : requests) {
    if (r.result < 0) return ErrnoToStatus(static_cast<int>(-r.result), "O_DIRECT ceiling read");
    round->ceiling_bytes += static_cast<uint64_t>(r.result);
  }
  return Status::OK();
}

// The warm ceiling: buffered preads of every file's data buffer into one reused buffer, i.e.
// what copying the bytes out of the page cache costs on one thread.
Status BufferedCeiling(const std::vector<BenchFile>& files, const AlignedBuffer& buffer,
                       Round* round) {
  const Clock::time_point t0 = Clock::now();
  for (const BenchFile& f : files) {
    for (uint64_t off = f.begin; off < f.end;) {
      const ssize_t n = ::pread(f.buffered.fd(), buffer.data(),
                                std::min<uint64_t>(buffer.size(), f.end - off), off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoToStatus(errno, f.path);
      if (n == 0) return DataLossError(f.path + ": shorter than its header says");
      off += static_cast<uint64_t>(n);
      round->ceiling_bytes += static_cast<uint64_t>(n);
    }
  }
  round->ceiling_seconds = SecondsSince(t0);
  return Status::OK();
}

Json StatsJson(const ReadStats& s) {
  return {{"bytes", s.bytes}, {"cached_bytes", s.cached_bytes}, {"direct_bytes", s.direct_bytes},
          {"staged_bytes", s.staged_bytes}, {"store_bytes", s.store_bytes},
          {"requests", s.requests}, {"segments", s.segments},
          {"peak_window_bytes", s.peak_window_bytes}};
}

std::string ResidentText(int64_t bytes) { return bytes < 0 ? "?" : HumanBytes(bytes); }

// One run of `model bench`, for printing.
struct BenchRun {
  bool cold = false;
  ReadOptions options;
  std::vector<Round> rounds;
  std::string no_ceiling;  // why the ceiling was skipped; empty when it was measured
  double gbps = 0, ceiling_gbps = 0;  // medians
};

void PrintBenchJson(const Model& m, const BenchRun& b) {
  const bool ceiling = b.no_ceiling.empty();
  Json rounds = Json::array();
  for (size_t i = 0; i < b.rounds.size(); ++i) {
    const Round& r = b.rounds[i];
    Json j{{"round", i + 1}, {"seconds", r.seconds}, {"gbps", Gbps(m.total_bytes(), r.seconds)},
           {"first_tensor_seconds", r.first_tensor_s}, {"stats", StatsJson(r.stats)},
           {"resident_bytes", r.resident_bytes}};
    if (ceiling) {
      j["ceiling_seconds"] = r.ceiling_seconds;
      j["ceiling_bytes"] = r.ceiling_bytes;
      j["ceiling_gbps"] = Gbps(r.ceiling_bytes, r.ceiling_seconds);
      j["ceiling_resident_bytes"] = r.ceiling_resident_bytes;
    }
    rounds.push_back(std::move(j));
  }
  Json out{{"files", m.files().size()}, {"tensors", m.tensors().size()},
           {"bytes", m.total_bytes()}, {"mode", b.cold ? "cold" : "warm"},
           {"request_bytes", b.options.request_bytes}, {"io_threads", b.options.io_threads},
           {"rounds", rounds}, {"median_gbps", b.gbps}};
  if (ceiling) {
    out["ceiling"] = {{"kind", b.cold ? "o_direct" : "buffered_pread"},
                      {"request_bytes", kCeilingRequestBytes},
                      {"in_flight", b.cold ? kCeilingInFlight : 1u},
                      {"median_gbps", b.ceiling_gbps}};
    out["ratio"] = b.ceiling_gbps > 0 ? b.gbps / b.ceiling_gbps : 0;
  } else {
    out["ceiling"] = nullptr;
    out["ceiling_skipped"] = b.no_ceiling;
  }
  std::printf("%s\n", DumpJson(out).c_str());
}

void PrintBenchText(const Model& m, const BenchRun& b) {
  const bool ceiling = b.no_ceiling.empty();
  std::printf("model: %zu files, %zu tensors, %s\n", m.files().size(), m.tensors().size(),
              BothBytes(m.total_bytes()).c_str());
  std::printf("mode: %s; loader: requests of %s, %zu in flight\n",
              b.cold ? "cold (files dropped from the page cache before each round)"
                     : "warm (files in the page cache)",
              HumanBytes(b.options.request_bytes).c_str(), b.options.io_threads);
  if (ceiling) {
    std::printf("ceiling: %s\n", b.cold ? "O_DIRECT reads of the same bytes, 8 MiB x 8 in flight"
                                        : "buffered pread of the same bytes into one buffer");
  } else {
    std::printf("ceiling: skipped (%s)\n", b.no_ceiling.c_str());
  }
  std::printf("\n%5s %9s %8s %9s %10s %10s %10s %10s %10s %8s\n", "ROUND", "SECONDS", "GB/S",
              "FIRST_MS", "CACHED", "DIRECT", "STAGED", "RESIDENT", "CEIL_S", "CEIL_GB/S");
  for (size_t i = 0; i < b.rounds.size(); ++i) {
    const Round& r = b.rounds[i];
    std::printf("%5zu %9.4f %8.3f %9.2f %10s %10s %10s %10s", i + 1, r.seconds,
                Gbps(m.total_bytes(), r.seconds), r.first_tensor_s * 1e3,
                HumanBytes(r.stats.cached_bytes).c_str(),
                HumanBytes(r.stats.direct_bytes).c_str(),
                HumanBytes(r.stats.staged_bytes).c_str(), ResidentText(r.resident_bytes).c_str());
    if (ceiling) {
      std::printf(" %10.4f %8.3f\n", r.ceiling_seconds, Gbps(r.ceiling_bytes, r.ceiling_seconds));
    } else {
      std::printf(" %10s %8s\n", "-", "-");
    }
  }
  std::printf("\nmedian: granary %.3f GB/s", b.gbps);
  if (ceiling && b.ceiling_gbps > 0) {
    std::printf(", ceiling %.3f GB/s, ratio %.2f", b.ceiling_gbps, b.gbps / b.ceiling_gbps);
  }
  std::printf("\n");
  for (size_t i = 0; b.cold && i < b.rounds.size(); ++i) {
    const int64_t left = std::max(b.rounds[i].resident_bytes, b.rounds[i].ceiling_resident_bytes);
    if (left > 0) {
      std::printf("note: round %zu: %s of the files stayed in the page cache after eviction\n",
                  i + 1, HumanBytes(left).c_str());
    }
  }
}

}  // namespace

int RunModelBench(int argc, char** argv) {
  ModelArgs args;
  int code = kExitOk;
  if (!ParseModelArgs("model bench", true, argc, argv, &args, &code)) return code;
  const std::string context = ModelContext("model bench", args.sources);
  auto opened = Model::Open(args.sources);
  if (!opened.ok()) return Fail(context, opened.status());
  Model& m = **opened;
  BenchRun b;
  b.cold = args.cold;
  b.options.request_bytes = args.request_mib << 20;
  b.options.io_threads = args.threads;
  // The ceiling needs the files themselves; without them (another store) it is skipped.
  Result<std::vector<BenchFile>> files = OpenBenchFiles(m);
  if (!files.ok()) {
    b.no_ceiling = files.status().ToString();
  } else if (b.cold) {
    for (const BenchFile& f : *files) {
      if (!f.direct.is_open()) b.no_ceiling = "O_DIRECT unsupported for " + f.path;
    }
  }
  std::unique_ptr<IoEngine> engine;
  std::vector<AlignedBuffer> buffers;
  if (b.no_ceiling.empty()) {
    IoEngineOptions engine_options;
    engine_options.queue_depth = kCeilingInFlight;
    auto created = IoEngine::Create(engine_options);
    if (!created.ok()) return Fail(context, created.status());
    engine = std::move(*created);
    for (unsigned i = 0; i < (b.cold ? kCeilingInFlight : 1); ++i) {
      // 2 MiB-aligned: huge pages, like the loader's own memory (pinning 4 KiB pages for
      // O_DIRECT costs measurably more).
      auto buffer = AlignedBuffer::Allocate(kCeilingRequestBytes, kHugePageBytes);
      if (!buffer.ok()) return Fail(context, buffer.status());
      buffers.push_back(std::move(*buffer));
    }
    if (!b.cold) {  // warm means in the page cache: one untimed pass puts the files there
      Round warmup;
      Status s = BufferedCeiling(*files, buffers[0], &warmup);
      if (!s.ok()) return Fail(context, s);
    }
  }
  b.rounds.resize(args.rounds);
  std::vector<double> gbps, ceiling_gbps;
  for (Round& r : b.rounds) {  // load and ceiling interleaved, so both see the same machine
    if (files.ok() && b.cold) Evict(*files);
    if (files.ok()) r.resident_bytes = ResidentBytes(*files);
    if (Status s = LoadAll(m, b.options, &r); !s.ok()) return Fail(context, s);
    gbps.push_back(Gbps(m.total_bytes(), r.seconds));
    if (!b.no_ceiling.empty()) continue;
    if (b.cold) Evict(*files);
    r.ceiling_resident_bytes = ResidentBytes(*files);
    Status s = b.cold ? DirectCeiling(*files, *engine, buffers, &r)
                      : BufferedCeiling(*files, buffers[0], &r);
    if (!s.ok()) return Fail(context, s.WithContext("ceiling"));
    ceiling_gbps.push_back(Gbps(r.ceiling_bytes, r.ceiling_seconds));
  }
  b.gbps = Median(gbps);
  b.ceiling_gbps = Median(ceiling_gbps);
  if (args.json) {
    PrintBenchJson(m, b);
  } else {
    PrintBenchText(m, b);
  }
  return kExitOk;
}

}  // namespace granary::cli
