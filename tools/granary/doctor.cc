// `granary doctor`: argument parsing, output (table or JSON lines), directory handling, signals.
#include "doctor.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "doctor_measure.h"

namespace granary::doctor {
namespace {

constexpr uint64_t kDefaultSizeMib = 2048;
constexpr uint64_t kQuickSizeMib = 256;
constexpr double kDefaultRuntimeS = 5;
constexpr double kQuickRuntimeS = 1;

std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

// SIGINT/SIGTERM stop the run at the next check so the test file is still removed; a second
// signal kills the process the default way (SA_RESETHAND).
void InstallSignalHandlers() {
  struct sigaction action;
  std::memset(&action, 0, sizeof(action));
  action.sa_handler = OnSignal;
  action.sa_flags = SA_RESETHAND;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

Result<double> ParseNumber(std::string_view flag, const char* text) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !(v > 0)) {
    return InvalidArgumentError(std::string(flag) + " needs a positive number, got '" + text +
                                "'");
  }
  return v;
}

std::string FormatBytes(size_t bytes) {
  if (bytes >= (size_t{1} << 20) && bytes % (size_t{1} << 20) == 0) {
    return std::to_string(bytes >> 20) + " MiB";
  }
  return std::to_string(bytes >> 10) + " KiB";
}

std::string Describe(const Measurement& m, const MeasureOptions& options) {
  const std::string block = FormatBytes(m.block_bytes);
  if (m.point.rfind("seqwrite", 0) == 0) return "seq write, " + block + " blocks";
  if (m.point.rfind("seqread", 0) == 0) return "seq read, " + block + " blocks";
  if (m.point.rfind("randread", 0) == 0) {
    std::string s = "random read " + block;
    if (m.metric == "p50_latency") s += ", p50 latency";
    if (m.metric == "p99_latency") s += ", p99 latency";
    return s;
  }
  const std::string copy = "memcpy " + FormatBytes(options.memcpy_bytes);
  return m.point == "memcpy-fresh" ? copy + ", fresh mmap" : copy + ", reused buffer";
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

void PrintRow(const Measurement& m, const MeasureOptions& options) {
  const char* format = m.unit == "IOPS" ? "%-34s %11.0f  %-6s %-9s %3s\n"
                                        : "%-34s %11.1f  %-6s %-9s %3s\n";
  const std::string qd = m.queue_depth ? std::to_string(m.queue_depth) : "-";
  std::printf(format, Describe(m, options).c_str(), m.value, m.unit.c_str(), m.engine.c_str(),
              qd.c_str());
  std::fflush(stdout);
}

void PrintJson(const Measurement& m, const MeasureOptions& options, const std::string& dir) {
  std::printf(
      "{\"point\":%s,\"metric\":%s,\"value\":%.3f,\"unit\":%s,\"engine\":%s,"
      "\"queue_depth\":%u,\"block_bytes\":%zu,\"bytes\":%llu,\"ops\":%llu,\"seconds\":%.6f,"
      "\"file_bytes\":%llu,\"direct\":%s,\"dir\":%s}\n",
      JsonString(m.point).c_str(), JsonString(m.metric).c_str(), m.value,
      JsonString(m.unit).c_str(), JsonString(m.engine).c_str(), m.queue_depth, m.block_bytes,
      static_cast<unsigned long long>(m.bytes), static_cast<unsigned long long>(m.ops), m.seconds,
      static_cast<unsigned long long>(options.file_bytes), m.block_bytes ? "true" : "false",
      JsonString(dir).c_str());
  std::fflush(stdout);
}

void PrintList(const std::vector<Point>& points, bool json) {
  for (const Point& p : points) {
    const std::string_view rw = FioRw(p.kind);
    if (json) {
      std::printf("{\"point\":%s,\"block_bytes\":%zu,\"queue_depth\":%u,\"fio_rw\":%s,"
                  "\"time_based\":%s}\n",
                  JsonString(p.id).c_str(), p.block_bytes, p.queue_depth,
                  rw.empty() ? "null" : JsonString(rw).c_str(),
                  p.kind == PointKind::kRandRead ? "true" : "false");
    } else {
      std::printf("%-18s bs=%-8s qd=%-3u %s\n", p.id.c_str(),
                  p.block_bytes ? FormatBytes(p.block_bytes).c_str() : "-", p.queue_depth,
                  rw.empty() ? "(memory only)" : ("fio --rw=" + std::string(rw)).c_str());
    }
  }
}

// mkdir -p that remembers which directories it made, so they can be removed afterwards.
Status MakeDirs(const std::string& dir, std::vector<std::string>* created) {
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return FailedPreconditionError(dir + " is not a directory");
    return Status::OK();
  }
  if (errno != ENOENT) return ErrnoToStatus(errno, "stat " + dir);
  const size_t slash = dir.find_last_of('/', dir.size() > 1 ? dir.size() - 2 : 0);
  if (slash != std::string::npos && slash > 0) {
    GRANARY_RETURN_IF_ERROR(MakeDirs(dir.substr(0, slash), created));
  }
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, "create directory " + dir);
  }
  created->push_back(dir);
  return Status::OK();
}

void RemoveCreatedDirs(const std::vector<std::string>& created) {
  for (auto it = created.rbegin(); it != created.rend(); ++it) ::rmdir(it->c_str());
}

// Fails early, with the numbers, when the test file cannot fit.
Status CheckFreeSpace(const std::string& dir, uint64_t need_bytes, const std::string& file) {
  struct statvfs vfs;
  if (::statvfs(dir.c_str(), &vfs) != 0) return ErrnoToStatus(errno, "statvfs " + dir);
  uint64_t avail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  struct stat st;
  if (::stat(file.c_str(), &st) == 0) avail += static_cast<uint64_t>(st.st_size);  // replaced
  if (avail >= need_bytes) return Status::OK();
  return ResourceExhaustedError("not enough free space: the test file needs " +
                                std::to_string(need_bytes >> 20) + " MiB, " +
                                std::to_string(avail >> 20) +
                                " MiB are available (try a smaller --size-mib)");
}

// Error lines follow the CLI's convention (tools/granary/cli.h):
//   failure:     granary: doctor <dir>: <Code>: <message>          exit 1 (130 if interrupted)
//   usage error: granary: doctor: <message> (see 'granary doctor --help')   exit 2
int Fail(const std::string& dir, const Status& status, int code) {
  std::fprintf(stderr, "granary: doctor %s: %s: %s\n", dir.c_str(),
               std::string(StatusCodeName(status.code())).c_str(), status.message().c_str());
  return code;
}

int UsageError(const Status& status) {
  std::fprintf(stderr, "granary: doctor: %s (see 'granary doctor --help')\n",
               status.message().c_str());
  return 2;
}

}  // namespace

const char* DoctorUsage() {
  return "usage: granary doctor [DIR] [--json] [--quick] [--size-mib N] [--runtime-s S]\n"
         "                      [--only ID[,ID...]] [--list] [--keep-file]\n"
         "                      [--engine auto|uring|psync]\n"
         "\n"
         "Measures this machine with granary's own I/O engine, on a test file in DIR (default:\n"
         "the current directory; created if missing; the file is removed afterwards):\n"
         "  seq write/read   O_DIRECT, 1 MiB blocks at QD 32 and 4 MiB blocks at QD 16; the\n"
         "                   write lays out a fresh fallocated file and includes the final fsync\n"
         "  random read      O_DIRECT, 4/16/128 KiB at QD 1 and QD 32, random block-aligned\n"
         "                   offsets over the whole file, time-bounded: IOPS, p50, p99 latency\n"
         "  memcpy           256 MiB into a reused (pre-faulted) buffer vs. a fresh mmap\n"
         "Each disk point mirrors an fio job (--direct=1 --ioengine=io_uring); see --list.\n"
         "\n"
         "  --json          one JSON object per line instead of a table\n"
         "  --quick         256 MiB file, 1 s per random-read point (for demos)\n"
         "  --size-mib N    test file size (default 2048; rounded up to 4 MiB)\n"
         "  --runtime-s S   seconds per random-read point (default 5)\n"
         "  --only IDS      run only these points, comma-separated; a prefix selects a group\n"
         "                  (--only randread, --only seqread-1m,memcpy)\n"
         "  --list          print the points with their block size, queue depth and fio --rw\n"
         "  --keep-file     keep DIR/granary-doctor.dat and reuse it for reads on the next run\n"
         "  --engine KIND   auto (default: io_uring, else psync), uring or psync\n";
}

Result<DoctorArgs> ParseDoctorArgs(int argc, char** argv) {
  DoctorArgs args;
  bool have_dir = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_inline_value = false;
    if (arg.rfind("--", 0) == 0) {
      const size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        value = arg.substr(eq + 1);
        arg = arg.substr(0, eq);
        has_inline_value = true;
      }
    }
    auto take_value = [&]() -> Result<std::string> {
      if (has_inline_value) return value;
      if (i + 1 >= argc) return InvalidArgumentError(arg + " needs a value");
      return std::string(argv[++i]);
    };
    if (arg == "--help" || arg == "-h") {
      args.help = true;
    } else if (arg == "--json") {
      args.json = true;
    } else if (arg == "--quick") {
      args.quick = true;
    } else if (arg == "--list") {
      args.list = true;
    } else if (arg == "--keep-file") {
      args.keep_file = true;
    } else if (arg == "--size-mib") {
      GRANARY_ASSIGN_OR_RETURN(std::string v, take_value());
      GRANARY_ASSIGN_OR_RETURN(double n, ParseNumber(arg, v.c_str()));
      if (n != static_cast<double>(static_cast<uint64_t>(n)) || n > (1u << 30)) {
        return InvalidArgumentError("--size-mib needs a whole number of MiB, got '" + v + "'");
      }
      args.size_mib = static_cast<uint64_t>(n);
    } else if (arg == "--runtime-s") {
      GRANARY_ASSIGN_OR_RETURN(std::string v, take_value());
      GRANARY_ASSIGN_OR_RETURN(args.runtime_s, ParseNumber(arg, v.c_str()));
      if (args.runtime_s > 3600) return InvalidArgumentError("--runtime-s is at most 3600");
    } else if (arg == "--only") {
      GRANARY_ASSIGN_OR_RETURN(std::string v, take_value());
      size_t start = 0;
      while (start <= v.size()) {
        const size_t comma = std::min(v.find(',', start), v.size());
        std::string id = v.substr(start, comma - start);
        if (!id.empty()) {
          bool known = false;
          for (const Point& p : StandardPoints()) known = known || PointMatches(p.id, id);
          if (!known) {
            return InvalidArgumentError("--only: no point matches '" + id +
                                        "'; --list shows the points");
          }
          args.only.push_back(id);
        }
        start = comma + 1;
      }
      if (args.only.empty()) return InvalidArgumentError("--only needs at least one point");
    } else if (arg == "--engine") {
      GRANARY_ASSIGN_OR_RETURN(std::string v, take_value());
      if (v == "auto") {
        args.engine = IoEngineKind::kAuto;
      } else if (v == "uring" || v == "io_uring") {
        args.engine = IoEngineKind::kUring;
      } else if (v == "psync") {
        args.engine = IoEngineKind::kPsync;
      } else {
        return InvalidArgumentError("--engine must be auto, uring or psync, got '" + v + "'");
      }
    } else if (!arg.empty() && arg[0] == '-' && arg != "-") {
      return InvalidArgumentError("unknown option " + arg + "");
    } else {
      if (have_dir) return InvalidArgumentError("more than one directory given: " + arg);
      args.dir = arg;
      have_dir = true;
    }
  }
  if (args.dir.empty()) return InvalidArgumentError("the directory must not be empty");
  return args;
}

}  // namespace granary::doctor

int RunDoctor(int argc, char** argv) {
  using namespace granary;
  using namespace granary::doctor;
  Result<DoctorArgs> parsed = ParseDoctorArgs(argc, argv);
  if (!parsed.ok()) return UsageError(parsed.status());
  const DoctorArgs& args = *parsed;
  if (args.help) {
    std::fputs(DoctorUsage(), stdout);
    return 0;
  }

  std::vector<Point> points;
  for (const Point& p : StandardPoints()) {
    bool selected = args.only.empty();
    for (const std::string& id : args.only) selected = selected || PointMatches(p.id, id);
    if (selected) points.push_back(p);
  }
  if (args.list) {
    PrintList(points, args.json);
    return 0;
  }

  MeasureOptions options;
  options.file_bytes =
      (args.size_mib ? args.size_mib : args.quick ? kQuickSizeMib : kDefaultSizeMib) << 20;
  options.runtime_s = args.runtime_s > 0 ? args.runtime_s
                      : args.quick       ? kQuickRuntimeS
                                         : kDefaultRuntimeS;
  options.memcpy_repeats = args.quick ? 3 : 5;
  options.engine_kind = args.engine;
  options.keep_file = args.keep_file;
  options.cancel = &g_interrupted;

  bool needs_disk = false;
  for (const Point& p : points) needs_disk = needs_disk || p.block_bytes > 0;
  std::vector<std::string> created_dirs;
  if (needs_disk) {
    Status made = MakeDirs(args.dir, &created_dirs);
    if (!made.ok()) return Fail(args.dir, made, 1);
  }
  char resolved[PATH_MAX];
  options.dir = needs_disk && ::realpath(args.dir.c_str(), resolved) ? resolved : args.dir;

  int exit_code = 0;
  {
    Result<std::unique_ptr<Doctor>> created = Doctor::Create(options);
    if (!created.ok()) {
      RemoveCreatedDirs(created_dirs);
      return Fail(options.dir, created.status(), 1);
    }
    Doctor& doctor = **created;
    if (needs_disk && ::access(options.dir.c_str(), W_OK) != 0) {
      const Status denied = ErrnoToStatus(errno, "cannot write to " + options.dir);
      RemoveCreatedDirs(created_dirs);
      return Fail(options.dir, denied, 1);
    }
    if (needs_disk) {
      Status space = CheckFreeSpace(options.dir, doctor.file_bytes(), doctor.file_path());
      if (!space.ok()) {
        RemoveCreatedDirs(created_dirs);
        return Fail(options.dir, space, 1);
      }
    }
    InstallSignalHandlers();
    if (!args.json) {
      std::printf("granary doctor: %s, %llu MiB test file, O_DIRECT, random reads %g s each\n\n",
                  options.dir.c_str(),
                  static_cast<unsigned long long>(doctor.file_bytes() >> 20), options.runtime_s);
      std::printf("%-34s %11s  %-6s %-9s %3s\n", "what", "value", "unit", "engine", "QD");
    }
    for (const Point& point : points) {
      Result<std::vector<Measurement>> result = doctor.Run(point);
      if (!result.ok()) {
        const bool cancelled = result.status().code() == StatusCode::kCancelled;
        exit_code = Fail(options.dir, result.status(), cancelled ? 130 : 1);
        break;
      }
      for (const Measurement& m : *result) {
        if (args.json) {
          PrintJson(m, options, options.dir);
        } else {
          PrintRow(m, options);
        }
      }
    }
  }  // ~Doctor removes the test file unless --keep-file
  RemoveCreatedDirs(created_dirs);
  return exit_code;
}
