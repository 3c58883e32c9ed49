#include "doctor_measure.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/clock.h"

namespace granary::doctor {
namespace {

constexpr size_t kKiB = size_t{1} << 10;
constexpr size_t kMiB = size_t{1} << 20;
// Every disk point's buffers come from one arena: 128 MiB holds 2 x QD blocks of the largest
// point (4 MiB x 16).
constexpr size_t kArenaBytes = 128 * kMiB;
// The file size is a multiple of the largest block so every point covers it exactly.
constexpr uint64_t kFileGranule = 4 * kMiB;
// Random reads run in batches; a batch grows until it lasts this long, so the queue drains at
// batch boundaries (and the clock is checked) rarely enough not to matter (< 1%).
constexpr uint64_t kTargetBatchNanos = 100'000'000;
constexpr size_t kMaxBatch = 65536;

// xorshift64*: fast, seedable, good enough for offsets and filler bytes.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed ? seed : 0x9E3779B97F4A7C15ull) {}
  uint64_t Next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545F4914F6CDD1Dull;
  }

 private:
  uint64_t state_;
};

void FillRandom(std::byte* data, size_t size, uint64_t seed) {
  Rng rng(seed);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t v = rng.Next();
    std::memcpy(data + i, &v, 8);
  }
  for (; i < size; ++i) data[i] = static_cast<std::byte>(rng.Next());
}

double MiBPerSecond(uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / static_cast<double>(kMiB) / seconds : 0;
}

// Checks every request of a finished batch: full length, else an error naming the file.
Status CheckResults(std::span<const IoRequest> requests, const std::string& path) {
  for (const IoRequest& r : requests) {
    if (r.result == static_cast<int64_t>(r.length)) continue;
    const char* verb = r.opcode == IoOpcode::kRead ? "read" : "write";
    std::string what = std::string(verb) + " of " + std::to_string(r.length) + " bytes at offset " +
                       std::to_string(r.offset) + " of " + path;
    if (r.result < 0) return ErrnoToStatus(static_cast<int>(-r.result), what);
    return InternalError(what + ": short transfer (" + std::to_string(r.result) + " bytes)");
  }
  return Status::OK();
}

// Opens the test file with O_DIRECT; a file system without O_DIRECT support gets an error that
// says so instead of a bare EINVAL.
Result<File> OpenDirect(const std::string& path, File::Mode mode) {
  File::OpenOptions options;
  options.mode = mode;
  options.direct = true;
  Result<File> file = File::Open(path, options);
  if (file.ok() || file.status().code() != StatusCode::kInvalidArgument) return file;
  return InvalidArgumentError("cannot open " + path +
                              " with O_DIRECT: the file system does not support it (older "
                              "tmpfs does not); choose a directory on a disk");
}

// Buffers a point cycles through: 2 x QD blocks, like fio's iodepth buffers. Requests are handed
// slots round-robin, so two reads in flight rarely share one (and if they do, only the junk they
// read mixes). A small, hot set seems to matter on VMs: cycling reads through all 128 MiB of the
// arena measured ~10-15% fewer IOPS at 16 KiB QD 32 here (noisy; see docs/benchmarks.md).
size_t BufferSlots(const Point& point) {
  return std::min<size_t>(kArenaBytes / point.block_bytes, 2 * size_t{point.queue_depth});
}

// One request per block of a `file_bytes` file, front to back, cycling through BufferSlots.
std::vector<IoRequest> SequentialRequests(const Point& point, IoOpcode opcode, int fd,
                                          uint64_t file_bytes, std::byte* arena) {
  const size_t slots = BufferSlots(point);
  std::vector<IoRequest> requests(file_bytes / point.block_bytes);
  for (size_t i = 0; i < requests.size(); ++i) {
    IoRequest& r = requests[i];
    r.opcode = opcode;
    r.fd = fd;
    r.offset = i * point.block_bytes;
    r.buffer = arena + (i % slots) * point.block_bytes;
    r.length = point.block_bytes;
  }
  return requests;
}

Measurement BaseMeasurement(const Point& point, std::string_view engine) {
  Measurement m;
  m.point = point.id;
  m.engine = std::string(engine);
  m.block_bytes = point.block_bytes;
  m.queue_depth = point.queue_depth;
  return m;
}

// The single MiB/s figure of a point that moved `bytes` in `ops` operations in `seconds`.
std::vector<Measurement> Bandwidth(const Point& point, std::string_view engine, uint64_t bytes,
                                   uint64_t ops, double seconds) {
  Measurement m = BaseMeasurement(point, engine);
  m.metric = "bandwidth";
  m.unit = "MiB/s";
  m.bytes = bytes;
  m.ops = ops;
  m.seconds = seconds;
  m.value = MiBPerSecond(bytes, seconds);
  return {m};
}

}  // namespace

const std::vector<Point>& StandardPoints() {
  static const std::vector<Point>* points = [] {
    auto* p = new std::vector<Point>{
        {"seqwrite-1m", PointKind::kSeqWrite, 1 * kMiB, 32},
        {"seqwrite-4m", PointKind::kSeqWrite, 4 * kMiB, 16},
        {"seqread-1m", PointKind::kSeqRead, 1 * kMiB, 32},
        {"seqread-4m", PointKind::kSeqRead, 4 * kMiB, 16},
    };
    for (size_t kib : {4, 16, 128}) {
      for (unsigned qd : {1u, 32u}) {
        p->push_back({"randread-" + std::to_string(kib) + "k-qd" + std::to_string(qd),
                      PointKind::kRandRead, kib * kKiB, qd});
      }
    }
    p->push_back({"memcpy-reused", PointKind::kMemcpyReused, 0, 0});
    p->push_back({"memcpy-fresh", PointKind::kMemcpyFresh, 0, 0});
    return p;
  }();
  return *points;
}

bool PointMatches(std::string_view id, std::string_view pattern) {
  if (pattern.empty() || pattern.size() > id.size()) return false;
  if (id.substr(0, pattern.size()) != pattern) return false;
  return pattern.size() == id.size() || id[pattern.size()] == '-';
}

std::string_view FioRw(PointKind kind) {
  switch (kind) {
    case PointKind::kSeqWrite: return "write";
    case PointKind::kSeqRead: return "read";
    case PointKind::kRandRead: return "randread";
    default: return "";
  }
}

Status MeasureOptions::Validate() const {
  if (dir.empty()) return InvalidArgumentError("doctor: no directory given");
  if (file_bytes < kFileGranule) {
    return InvalidArgumentError("doctor: test file must be at least 4 MiB, got " +
                                std::to_string(file_bytes) + " bytes");
  }
  if (!(runtime_s > 0) || runtime_s > 3600) {
    return InvalidArgumentError("doctor: runtime must be in (0, 3600] seconds, got " +
                                std::to_string(runtime_s));
  }
  if (memcpy_bytes < kDirectIoAlignment) {
    return InvalidArgumentError("doctor: memcpy size must be at least 4 KiB");
  }
  if (memcpy_repeats < 1) return InvalidArgumentError("doctor: memcpy repeats must be >= 1");
  return Status::OK();
}

uint64_t Percentile(std::vector<uint64_t>& values, double q) {
  if (values.empty()) return 0;
  const double rank = std::ceil(q * static_cast<double>(values.size()));
  size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  index = std::min(index, values.size() - 1);
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(index),
                   values.end());
  return values[index];
}

Result<std::unique_ptr<Doctor>> Doctor::Create(const MeasureOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  MeasureOptions opts = options;
  opts.file_bytes = (opts.file_bytes + kFileGranule - 1) / kFileGranule * kFileGranule;
  GRANARY_ASSIGN_OR_RETURN(AlignedBuffer arena, AlignedBuffer::Allocate(kArenaBytes));
  // Random bytes, so that no layer below (file system, virtual disk) can shortcut zeros.
  FillRandom(arena.data(), arena.size(), 42);
  return std::unique_ptr<Doctor>(new Doctor(opts, std::move(arena)));
}

Doctor::Doctor(const MeasureOptions& options, AlignedBuffer arena)
    : options_(options), arena_(std::move(arena)) {
  path_ = options_.dir;
  if (path_.back() != '/') path_ += '/';
  path_ += options_.keep_file ? std::string("granary-doctor.dat")
                              : "granary-doctor-" + std::to_string(::getpid()) + ".dat";
}

Doctor::~Doctor() {
  if (!options_.keep_file) RemoveFile().IgnoreError();  // best effort; nothing to report to
}

Status Doctor::RemoveFile() {
  laid_out_ = false;
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, "remove test file " + path_);
  }
  return Status::OK();
}

Result<std::unique_ptr<IoEngine>> Doctor::MakeEngine(unsigned queue_depth, bool record_latency) {
  IoEngineOptions engine_options;
  engine_options.kind = options_.engine_kind;
  engine_options.queue_depth = queue_depth;
  engine_options.record_latency = record_latency;
  return IoEngine::Create(engine_options);
}

Status Doctor::EnsureLaidOut() {
  if (!laid_out_ && options_.keep_file) {
    // A kept file from an earlier run serves for reads if it has the right size.
    struct stat st;
    if (::stat(path_.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<uint64_t>(st.st_size) == options_.file_bytes) {
      laid_out_ = true;
    }
  }
  if (laid_out_) return Status::OK();
  GRANARY_ASSIGN_OR_RETURN(auto ignored, SeqWrite(StandardPoints().front(), /*report=*/false));
  (void)ignored;
  return Status::OK();
}

Result<std::vector<Measurement>> Doctor::Run(const Point& point) {
  if (Cancelled()) return CancelledError("interrupted");
  switch (point.kind) {
    case PointKind::kSeqWrite: return SeqWrite(point, /*report=*/true);
    case PointKind::kSeqRead: return SeqRead(point);
    case PointKind::kRandRead: return RandRead(point);
    case PointKind::kMemcpyReused:
    case PointKind::kMemcpyFresh: return Memcpy(point);
  }
  return InvalidArgumentError("doctor: unknown point " + point.id);
}

// Like fio --rw=write on a file that does not exist: unlink, create, fallocate the full size,
// then write it front to back with queue_depth in flight and fsync; the fsync is timed.
Result<std::vector<Measurement>> Doctor::SeqWrite(const Point& point, bool report) {
  GRANARY_RETURN_IF_ERROR(RemoveFile());
  GRANARY_ASSIGN_OR_RETURN(File file, OpenDirect(path_, File::Mode::kCreateNew));
  const uint64_t size = options_.file_bytes;
  if (::fallocate(file.fd(), 0, 0, static_cast<off_t>(size)) != 0) {
    const int err = errno;
    if (err == ENOSPC || err == EDQUOT) {
      return ResourceExhaustedError("not enough free space for a " + std::to_string(size / kMiB) +
                                    " MiB test file " + path_ + " (try a smaller --size-mib)");
    }
    if (err != EOPNOTSUPP) return ErrnoToStatus(err, "fallocate " + path_);
    GRANARY_RETURN_IF_ERROR(file.Truncate(size));  // no fallocate here: a sparse file will do
  }
  GRANARY_ASSIGN_OR_RETURN(auto engine, MakeEngine(point.queue_depth, false));

  std::vector<IoRequest> requests =
      SequentialRequests(point, IoOpcode::kWrite, file.fd(), size, arena_.data());
  Stopwatch watch;
  GRANARY_RETURN_IF_ERROR(engine->Run(requests).WithContext("write " + path_));
  GRANARY_RETURN_IF_ERROR(CheckResults(requests, path_));
  GRANARY_RETURN_IF_ERROR(file.Sync());
  const double seconds = watch.ElapsedSeconds();
  GRANARY_RETURN_IF_ERROR(file.Close());
  laid_out_ = true;
  if (!report) return std::vector<Measurement>{};
  return Bandwidth(point, engine->name(), size, requests.size(), seconds);
}

// Like fio --rw=read: the whole file once, front to back.
Result<std::vector<Measurement>> Doctor::SeqRead(const Point& point) {
  GRANARY_RETURN_IF_ERROR(EnsureLaidOut());
  GRANARY_ASSIGN_OR_RETURN(File file, OpenDirect(path_, File::Mode::kRead));
  GRANARY_ASSIGN_OR_RETURN(auto engine, MakeEngine(point.queue_depth, false));

  const uint64_t size = options_.file_bytes;
  std::vector<IoRequest> requests =
      SequentialRequests(point, IoOpcode::kRead, file.fd(), size, arena_.data());
  Stopwatch watch;
  GRANARY_RETURN_IF_ERROR(engine->Run(requests).WithContext("read " + path_));
  const double seconds = watch.ElapsedSeconds();
  GRANARY_RETURN_IF_ERROR(CheckResults(requests, path_));
  return Bandwidth(point, engine->name(), size, requests.size(), seconds);
}

// Like fio --rw=randread --time_based: block-aligned uniformly random offsets over the whole
// file until runtime_s has passed. Batches are handed to IoEngine::Run, each growing until it
// lasts ~100 ms so the queue rarely drains.
Result<std::vector<Measurement>> Doctor::RandRead(const Point& point) {
  GRANARY_RETURN_IF_ERROR(EnsureLaidOut());
  GRANARY_ASSIGN_OR_RETURN(File file, OpenDirect(path_, File::Mode::kRead));
  GRANARY_ASSIGN_OR_RETURN(auto engine, MakeEngine(point.queue_depth, true));

  const uint64_t blocks = options_.file_bytes / point.block_bytes;
  const size_t slots = BufferSlots(point);
  const uint64_t runtime_ns = static_cast<uint64_t>(options_.runtime_s * 1e9);
  Rng rng(0x5EEDull * point.block_bytes + point.queue_depth);
  size_t batch = std::max<size_t>(4 * point.queue_depth, 16);
  std::vector<IoRequest> requests;
  std::vector<uint64_t> latencies;
  latencies.reserve(1 << 20);
  uint64_t ops = 0;
  size_t next_slot = 0;
  Stopwatch watch;
  while (true) {
    requests.resize(batch);
    for (IoRequest& r : requests) {
      r = IoRequest{};
      r.opcode = IoOpcode::kRead;
      r.fd = file.fd();
      r.offset = (rng.Next() % blocks) * point.block_bytes;
      r.buffer = arena_.data() + next_slot * point.block_bytes;
      r.length = point.block_bytes;
      next_slot = next_slot + 1 == slots ? 0 : next_slot + 1;
    }
    const uint64_t batch_start = NowNanos();
    GRANARY_RETURN_IF_ERROR(engine->Run(requests).WithContext("read " + path_));
    const uint64_t batch_nanos = NowNanos() - batch_start;
    GRANARY_RETURN_IF_ERROR(CheckResults(requests, path_));
    for (const IoRequest& r : requests) latencies.push_back(r.latency_ns);
    ops += requests.size();
    if (watch.ElapsedNanos() >= runtime_ns) break;
    if (Cancelled()) return CancelledError("interrupted");
    if (batch_nanos < kTargetBatchNanos && batch < kMaxBatch) batch *= 2;
  }
  const double seconds = watch.ElapsedSeconds();

  std::vector<Measurement> out;
  Measurement m = BaseMeasurement(point, engine->name());
  m.bytes = ops * point.block_bytes;
  m.ops = ops;
  m.seconds = seconds;
  m.metric = "iops";
  m.unit = "IOPS";
  m.value = seconds > 0 ? static_cast<double>(ops) / seconds : 0;
  out.push_back(m);
  m.metric = "p50_latency";
  m.unit = "us";
  m.value = static_cast<double>(Percentile(latencies, 0.50)) / 1e3;
  out.push_back(m);
  m.metric = "p99_latency";
  m.value = static_cast<double>(Percentile(latencies, 0.99)) / 1e3;
  out.push_back(m);
  return out;
}

// memcpy bandwidth into a pre-faulted destination versus into fresh anonymous memory (a new
// mmap per copy, so every destination page faults). Median of memcpy_repeats timed copies.
Result<std::vector<Measurement>> Doctor::Memcpy(const Point& point) {
  const size_t size = options_.memcpy_bytes;
  GRANARY_ASSIGN_OR_RETURN(AlignedBuffer src, AlignedBuffer::Allocate(size));
  FillRandom(src.data(), src.size(), 7);
  AlignedBuffer dst;
  if (point.kind == PointKind::kMemcpyReused) {
    GRANARY_ASSIGN_OR_RETURN(dst, AlignedBuffer::Allocate(size));
    std::memcpy(dst.data(), src.data(), size);  // warm-up, untimed
  }
  std::vector<double> seconds;
  for (int i = 0; i < options_.memcpy_repeats; ++i) {
    if (Cancelled()) return CancelledError("interrupted");
    void* target = dst.data();
    Stopwatch watch;
    if (point.kind == PointKind::kMemcpyFresh) {
      target = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (target == MAP_FAILED) {
        return ResourceExhaustedError("doctor: mmap of " + std::to_string(size) +
                                      " bytes failed: " + std::strerror(errno));
      }
    }
    std::memcpy(target, src.data(), size);
    // Keep the compiler from treating the copy as dead.
    asm volatile("" : : "r"(target) : "memory");
    seconds.push_back(watch.ElapsedSeconds());
    if (point.kind == PointKind::kMemcpyFresh) ::munmap(target, size);
  }
  std::sort(seconds.begin(), seconds.end());
  return Bandwidth(point, "cpu", size, /*ops=*/1, seconds[seconds.size() / 2]);  // the median
}

}  // namespace granary::doctor
