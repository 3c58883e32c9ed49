// `granary doctor`: measures what this machine's disk and memory can do, with granary's own I/O
// engine, so that other numbers (benchmarks, training throughput) can be judged against it.
// The measurements themselves live in doctor_measure.h.
#ifndef GRANARY_TOOLS_GRANARY_DOCTOR_H_
#define GRANARY_TOOLS_GRANARY_DOCTOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "granary/io.h"
#include "granary/status.h"

namespace granary::doctor {

// The command line of `granary doctor`, parsed.
struct DoctorArgs {
  std::string dir = ".";            // DIR: where the test file goes (created if missing)
  bool json = false;                // --json: one JSON object per line instead of a table
  bool quick = false;               // --quick: 256 MiB file, 1 s random reads, 3 memcpy repeats
  uint64_t size_mib = 0;            // --size-mib N; 0 = default (2048, or 256 with --quick)
  double runtime_s = 0;             // --runtime-s S; 0 = default (5, or 1 with --quick)
  std::vector<std::string> only;    // --only ID[,ID...]: run just these points (prefixes work)
  bool list = false;                // --list: print the points and their parameters, run nothing
  bool keep_file = false;           // --keep-file: keep DIR/granary-doctor.dat for the next run
  IoEngineKind engine = IoEngineKind::kAuto;  // --engine auto|uring|psync
  bool help = false;                // --help / -h
};

// Parses argv[1..argc) (argv[0] is "doctor"). InvalidArgument naming the bad flag or value.
Result<DoctorArgs> ParseDoctorArgs(int argc, char** argv);

// The --help text.
const char* DoctorUsage();

}  // namespace granary::doctor

// `granary doctor ...`: argv[0] is "doctor", the rest are its arguments. Prints a table (or JSON
// lines) to stdout and any error as one line on stderr. Returns the exit code: 0 on success,
// 1 if a measurement failed, 2 for a usage error, 130 if interrupted.
int RunDoctor(int argc, char** argv);

#endif  // GRANARY_TOOLS_GRANARY_DOCTOR_H_
