// doctor_measure.h: the measurements behind `granary doctor`, usable on their own (by the CLI, by
// tests, and later by `granary bench` to measure ceilings in the same run).
//
// Every disk measurement goes through granary's own IoEngine with O_DIRECT on one test file, with
// the parameters of the equivalent fio job so the two can be compared point by point:
//
//   seqwrite-<bs>     fio --rw=write --bs=<bs> --iodepth=<qd> --end_fsync=1 on a fresh file:
//                     unlink, create, fallocate(0, size), write it front to back, fsync (counted).
//   seqread-<bs>      fio --rw=read: the whole file once, front to back.
//   randread-<bs>-qd<qd>  fio --rw=randread --time_based: reads at uniformly random offsets
//                     aligned to <bs> over the whole file for `runtime_s`; IOPS and the p50/p99
//                     of submission-to-completion latency (fio's "lat", not "clat").
//   memcpy-reused     memcpy of memcpy_bytes into a buffer that was already faulted in.
//   memcpy-fresh      the same copy into a new anonymous mmap each time (page faults included).
#ifndef GRANARY_TOOLS_GRANARY_DOCTOR_MEASURE_H_
#define GRANARY_TOOLS_GRANARY_DOCTOR_MEASURE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "granary/io.h"
#include "granary/status.h"

namespace granary::doctor {

enum class PointKind { kSeqWrite, kSeqRead, kRandRead, kMemcpyReused, kMemcpyFresh };

// One measurement point: what to run and with which block size and queue depth.
struct Point {
  std::string id;  // "seqwrite-1m", "randread-4k-qd32", "memcpy-fresh"; stable, used by scripts
  PointKind kind = PointKind::kSeqRead;
  size_t block_bytes = 0;    // 0 for memcpy points
  unsigned queue_depth = 0;  // 0 for memcpy points
};

// The points doctor runs, in the order it runs them (writes first: they lay out the file).
const std::vector<Point>& StandardPoints();

// True if `id` is selected by `pattern`: equal, or a prefix ending at a '-' boundary
// ("randread" selects every randread point, "randread-4k" both of its queue depths).
bool PointMatches(std::string_view id, std::string_view pattern);

// fio's --rw value for a disk point ("write", "read", "randread"); empty for memcpy points.
std::string_view FioRw(PointKind kind);

struct MeasureOptions {
  // Directory holding the test file; must exist. Required.
  std::string dir;
  // Size of the test file; rounded up to a multiple of 4 MiB. Default: 2 GiB.
  uint64_t file_bytes = uint64_t{2} << 30;
  // Duration of each random-read point. Default: 5 s.
  double runtime_s = 5.0;
  // Bytes per memcpy. Default: 256 MiB.
  size_t memcpy_bytes = size_t{256} << 20;
  // Timed copies per memcpy point (the median is reported). Default: 5.
  int memcpy_repeats = 5;
  // Which IoEngine to use. Default: kAuto (io_uring, or psync where it is unavailable).
  IoEngineKind engine_kind = IoEngineKind::kAuto;
  // Keep the test file (fixed name granary-doctor.dat) after the run and reuse it for reads
  // when it has the right size. Default: false (a per-process name, removed at the end).
  bool keep_file = false;
  // If set and becomes true, running points stop early with Cancelled. Not owned. Default: null.
  const std::atomic<bool>* cancel = nullptr;
  Status Validate() const;
};

// One reported number.
struct Measurement {
  std::string point;         // Point::id
  std::string metric;        // "bandwidth", "iops", "p50_latency", "p99_latency"
  double value = 0;
  std::string unit;          // "MiB/s", "IOPS", "us"
  std::string engine;        // "io_uring", "psync", or "cpu" for memcpy
  size_t block_bytes = 0;    // 0 for memcpy
  unsigned queue_depth = 0;  // 0 for memcpy
  uint64_t bytes = 0;        // bytes moved in the timed part
  uint64_t ops = 0;          // I/O operations (or copies) in the timed part
  double seconds = 0;        // length of the timed part
};

// Runs measurement points against one test file in a directory. The file is created on first
// need and removed by the destructor unless keep_file. Not thread-safe: one point at a time.
class Doctor {
 public:
  // Allocates the I/O buffers; does not touch the directory yet. InvalidArgument for bad options.
  static Result<std::unique_ptr<Doctor>> Create(const MeasureOptions& options);
  ~Doctor();
  Doctor(const Doctor&) = delete;
  Doctor& operator=(const Doctor&) = delete;

  // Runs one point and returns its numbers (one for bandwidth points, three for random reads).
  // Read points lay out the file first (untimed) if it is missing or has the wrong size.
  // Errors name the file: PermissionDenied, ResourceExhausted (disk full), InvalidArgument
  // (O_DIRECT unsupported by the file system), Cancelled.
  Result<std::vector<Measurement>> Run(const Point& point);

  const std::string& file_path() const { return path_; }
  uint64_t file_bytes() const { return options_.file_bytes; }

  // Removes the test file now (also done by the destructor unless keep_file). OK if absent.
  Status RemoveFile();

 private:
  Doctor(const MeasureOptions& options, AlignedBuffer arena);
  Result<std::unique_ptr<IoEngine>> MakeEngine(unsigned queue_depth, bool record_latency);
  Status EnsureLaidOut();
  Result<std::vector<Measurement>> SeqWrite(const Point& point, bool report);
  Result<std::vector<Measurement>> SeqRead(const Point& point);
  Result<std::vector<Measurement>> RandRead(const Point& point);
  Result<std::vector<Measurement>> Memcpy(const Point& point);
  bool Cancelled() const { return options_.cancel != nullptr && options_.cancel->load(); }

  MeasureOptions options_;
  std::string path_;
  // I/O buffers for every disk point: 128 MiB, pre-faulted, filled with pseudo-random bytes.
  AlignedBuffer arena_;
  bool laid_out_ = false;  // the file at path_ holds file_bytes of data written by us
};

// The value at quantile q (0..1) of `values` by nearest rank; reorders `values`. 0 if empty.
uint64_t Percentile(std::vector<uint64_t>& values, double q);

}  // namespace granary::doctor

#endif  // GRANARY_TOOLS_GRANARY_DOCTOR_MEASURE_H_
