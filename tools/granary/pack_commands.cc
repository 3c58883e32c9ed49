// `granary pack SRC DST`: packs a directory tree of sample files, WebDataset tar shards or a
// JSONL file into a granary dataset (DatasetWriter). Sources are read ahead by worker threads in
// a fixed order (pack_source.h), so the dataset does not depend on --workers; the version is
// published only by the final Finish, so an interrupted or failed pack publishes nothing.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cli.h"
#include "granary/dataset.h"
#include "granary/status.h"
#include "pack_source.h"

namespace granary::cli {
namespace {

using pack::PackItem;
using pack::PackSample;
using pack::ReadAhead;
using pack::SourceError;
using Clock = std::chrono::steady_clock;

constexpr char kPackUsage[] =
    "usage: granary pack SRC DST [--shard-size SIZE] [--workers N]\n"
    "                    [--format auto|dir|tar|jsonl] [--label-from-parent]\n"
    "                    [--on-error skip|stop] [--append] [--progress] [--quiet]\n"
    "\n"
    "Packs samples from SRC into a new dataset version at DST (file:///abs/dir, a directory\n"
    "path, or mem://name). The version is published only when every sample is written, so an\n"
    "interrupted or failed pack leaves no version behind.\n"
    "\n"
    "SRC is one of (--format auto picks by name):\n"
    "  dir    a directory tree: files with the same stem in one directory form a sample;\n"
    "         the key is the relative directory '/' the stem, and each field is named by the\n"
    "         file name after its first '.' (train/n01/0001.jpg + 0001.cls -> key \"n01/0001\",\n"
    "         fields \"jpg\", \"cls\"). Samples are sorted by key, hidden files are ignored.\n"
    "  tar    WebDataset shards: a .tar (or .tar.gz, .tgz, .tar.zst, ...) file, a directory\n"
    "         holding only tar files, or a brace pattern 'shards-{000000..000009}.tar'.\n"
    "         Consecutive members with the same name up to the first '.' of the base name\n"
    "         form a sample, as WebDataset groups them.\n"
    "  jsonl  a .jsonl file (may be compressed) or '-' for stdin: one JSON object per line.\n"
    "         The key is the string member \"__key__\", else \"key\", else the 0-based line\n"
    "         number as 12 digits; every other member is a field (strings as their UTF-8\n"
    "         bytes, other values as compact JSON). Blank lines are skipped.\n"
    "\n"
    "options:\n"
    "  --shard-size SIZE     close a shard once it holds SIZE bytes (512M, 1G, 64MiB; K/M/G/T\n"
    "                        are powers of 1024, KB/MB/GB of 1000). Default: 512M\n"
    "  --workers N           threads reading the source ahead. Default: number of CPUs\n"
    "  --label-from-parent   dir only: add field \"cls\", the index (decimal text) of the\n"
    "                        sample's parent folder name among the sorted distinct parent\n"
    "                        folder names (train/n01440764/x.JPEG -> \"0\")\n"
    "  --on-error skip|stop  an unreadable source record (file, tar member, JSON line) is\n"
    "                        reported and skipped, or stops the pack with nothing published.\n"
    "                        Default: skip\n"
    "  --append              add a version holding DST's newest samples plus the new ones\n"
    "                        (without it, a dataset already at DST is an error)\n"
    "  --progress            show the progress line even when stderr is not a terminal\n"
    "  --quiet               no progress line and no summary (errors are still reported)\n"
    "\n"
    "Prints one summary line on stdout. Exit status: 0 when a version was published (skipped\n"
    "records are counted in the summary), 1 on an error, 2 on a usage error, 130/143 when\n"
    "interrupted by SIGINT/SIGTERM (nothing is published).\n"
    "\n"
    "Example: granary pack /data/imagenet/train file:///data/ds/imagenet --label-from-parent\n";

// Read-ahead memory: samples read but not yet handed to the writer.
constexpr uint64_t kReadAheadBytes = 256ull << 20;
// Progress refresh interval (about five times a second).
constexpr auto kProgressInterval = std::chrono::milliseconds(200);

// The signal that interrupted the pack, or 0.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void OnStopSignal(int signo) {
  g_signal.store(signo);
  signal(signo, SIG_DFL);  // a second signal ends the process at once
}

// Installs OnStopSignal for SIGINT and SIGTERM for its lifetime.
class StopSignals {
 public:
  StopSignals() {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = OnStopSignal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_, old_term_;
};

struct PackArgs {
  std::string src, dst;
  DatasetWriterOptions writer;
  unsigned workers = 1;
  pack::SourceOptions source;
  bool stop_on_error = false;
  bool quiet = false;
  bool progress = false;
};

// False with *exit_code set on a usage error.
bool ParsePackArgs(int argc, char** argv, PackArgs* out, int* exit_code) {
  const auto usage = [&](const std::string& message) {
    *exit_code = UsageError("pack", message);
    return false;
  };
  out->workers = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::string> positional;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (options_done || arg == "-" || arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    std::string name = arg, value;
    const size_t eq = arg.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    if (!inline_value) {
      if (name == "--label-from-parent") {
        out->source.label_from_parent = true;
        continue;
      }
      if (name == "--append") {
        out->writer.append = true;
        continue;
      }
      if (name == "--quiet" || name == "-q") {
        out->quiet = true;
        continue;
      }
      if (name == "--progress") {
        out->progress = true;
        continue;
      }
    }
    if (name != "--shard-size" && name != "--workers" && name != "--format" &&
        name != "--on-error") {
      return usage("unknown option '" + arg + "'");
    }
    if (!inline_value) {
      if (i + 1 >= argc) return usage("option '" + name + "' needs a value");
      value = argv[++i];
    }
    if (name == "--shard-size") {
      Result<uint64_t> bytes = pack::ParseByteSize(value);
      if (!bytes.ok()) return usage("--shard-size: " + bytes.status().message());
      out->writer.shard_bytes = *bytes;
    } else if (name == "--workers") {
      unsigned n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc() || ptr != value.data() + value.size() || n == 0 || n > 1024) {
        return usage("--workers wants a number from 1 to 1024, got '" + value + "'");
      }
      out->workers = n;
    } else if (name == "--format") {
      if (value == "auto") {
        out->source.format = pack::PackFormat::kAuto;
      } else if (value == "dir") {
        out->source.format = pack::PackFormat::kDir;
      } else if (value == "tar") {
        out->source.format = pack::PackFormat::kTar;
      } else if (value == "jsonl") {
        out->source.format = pack::PackFormat::kJsonl;
      } else {
        return usage("--format wants auto, dir, tar or jsonl, got '" + value + "'");
      }
    } else {  // --on-error
      if (value != "skip" && value != "stop") {
        return usage("--on-error wants skip or stop, got '" + value + "'");
      }
      out->stop_on_error = value == "stop";
    }
  }
  if (positional.empty()) return usage("missing SRC");
  if (positional.size() < 2) return usage("missing DST");
  if (positional.size() > 2) return usage("unexpected argument '" + positional[2] + "'");
  out->src = positional[0];
  out->dst = positional[1];
  if (Status s = out->writer.Validate(); !s.ok()) return usage(s.message());
  return true;
}

// "7s", "3m05s", "1h02m".
std::string HumanDuration(double seconds) {
  const uint64_t s = static_cast<uint64_t>(std::max(0.0, seconds));
  char text[32];
  if (s < 60) {
    std::snprintf(text, sizeof(text), "%" PRIu64 "s", s);
  } else if (s < 3600) {
    std::snprintf(text, sizeof(text), "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
  } else {
    std::snprintf(text, sizeof(text), "%" PRIu64 "h%02" PRIu64 "m", s / 3600, s / 60 % 60);
  }
  return text;
}

// The '\r'-refreshed progress line on stderr. Not thread-safe (the packing thread owns it).
class Progress {
 public:
  Progress(bool enabled, std::optional<uint64_t> total_samples,
           std::optional<uint64_t> total_bytes)
      : enabled_(enabled), total_samples_(total_samples), total_bytes_(total_bytes) {}

  // Redraws the line if the last draw is older than kProgressInterval.
  void Update(uint64_t samples, uint64_t source_bytes) {
    if (!enabled_) return;
    const Clock::time_point now = Clock::now();
    if (now - last_draw_ < kProgressInterval) return;
    last_draw_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? samples / elapsed : 0;
    const double mb_s = elapsed > 0 ? source_bytes / elapsed / 1e6 : 0;
    char line[256];
    int n = std::snprintf(line, sizeof(line), "%" PRIu64, samples);
    if (total_samples_) n += std::snprintf(line + n, sizeof(line) - n, "/%" PRIu64, *total_samples_);
    n += std::snprintf(line + n, sizeof(line) - n, " samples  %.0f/s  %.1f MB/s  %s  %s", rate,
                       mb_s, HumanBytes(source_bytes).c_str(), HumanDuration(elapsed).c_str());
    // ETA from the byte fraction when the total is known (samples vary less in count than size
    // only for uniform data; bytes track the reading time).
    if (total_bytes_ && *total_bytes_ > 0 && source_bytes > 0 && elapsed > 1) {
      const double left = elapsed * (static_cast<double>(*total_bytes_) / source_bytes - 1);
      n += std::snprintf(line + n, sizeof(line) - n, "  ETA %s", HumanDuration(left).c_str());
    } else if (total_samples_ && samples > 0 && elapsed > 1) {
      const double left = elapsed * (static_cast<double>(*total_samples_) / samples - 1);
      n += std::snprintf(line + n, sizeof(line) - n, "  ETA %s", HumanDuration(left).c_str());
    }
    Draw(line);
  }

  // Replaces the line with `text` (a phase without counters, like publishing).
  void Show(const std::string& text) {
    if (enabled_) Draw(text);
  }

  // Erases the line, so a message can be printed on a clean line.
  void Clear() {
    if (!enabled_ || drawn_ == 0) return;
    std::fprintf(stderr, "\r%*s\r", static_cast<int>(drawn_), "");
    std::fflush(stderr);
    drawn_ = 0;
    last_draw_ = {};  // redraw at the next update
  }

 private:
  void Draw(const std::string& line) {
    const size_t pad = drawn_ > line.size() ? drawn_ - line.size() : 0;
    std::fprintf(stderr, "\r%s%*s", line.c_str(), static_cast<int>(pad), "");
    std::fflush(stderr);
    drawn_ = line.size();
  }

  const bool enabled_;
  const std::optional<uint64_t> total_samples_, total_bytes_;
  const Clock::time_point start_ = Clock::now();
  Clock::time_point last_draw_{};
  size_t drawn_ = 0;  // characters of the line on screen
};

// Prints "granary: pack: <message>" on stderr (a reported, skipped record or a warning).
void Warn(Progress& progress, const std::string& message) {
  progress.Clear();
  std::string line = "granary: pack: " + message;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fflush(stdout);
  std::fprintf(stderr, "%s\n", line.c_str());
}

// Abandons the write (background shard writes abort: nothing is published), reports the signal
// and ends the process with 128 + signal, without joining readers that may be blocked on a pipe.
[[noreturn]] void ExitInterrupted(Progress& progress, std::unique_ptr<DatasetWriter> writer) {
  progress.Clear();
  writer.reset();
  const int signo = g_signal.load();
  std::fflush(stdout);
  std::fprintf(stderr, "granary: pack: interrupted by %s: nothing published\n",
               signo == SIGINT ? "SIGINT" : "SIGTERM");
  std::fflush(stderr);
  std::_Exit(128 + signo);
}

}  // namespace

int RunPack(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    std::fputs(kPackUsage, stdout);
    return kExitOk;
  }
  PackArgs args;
  int code = kExitOk;
  if (!ParsePackArgs(argc, argv, &args, &code)) return code;
  const std::string context = "pack " + args.src + " " + args.dst;
  const Clock::time_point start = Clock::now();

  // A missing SRC is reported before DST is touched.
  struct stat st;
  if (args.src != "-" && args.src.find('{') == std::string::npos &&
      ::stat(args.src.c_str(), &st) != 0) {
    return Fail(context, ErrnoToStatus(errno, "SRC " + args.src));
  }
  // The writer first: a dataset already at DST fails before a long scan.
  Result<std::unique_ptr<DatasetWriter>> created = DatasetWriter::Create(args.dst, args.writer);
  if (!created.ok()) {
    if (created.status().code() == StatusCode::kAlreadyExists) {
      return Fail(context, AlreadyExistsError("DST " + args.dst +
                                              " already holds a dataset; pass --append to add a "
                                              "new version to it"));
    }
    return Fail(context, created.status().WithContext("DST " + args.dst));
  }
  std::unique_ptr<DatasetWriter> writer = std::move(created).value();
  // A local DST inside SRC is not packed into itself.
  if (args.dst.starts_with("file://")) {
    args.source.exclude_dir = args.dst.substr(7);
  } else if (args.dst.find("://") == std::string::npos) {
    args.source.exclude_dir = args.dst;
  }
  Result<std::unique_ptr<pack::PackSource>> source = pack::OpenPackSource(args.src, args.source);
  if (!source.ok()) return Fail(context, source.status());

  StopSignals stop_signals;
  const bool show_progress = !args.quiet && (args.progress || ::isatty(STDERR_FILENO) == 1);
  Progress progress(show_progress, (*source)->total_samples(), (*source)->total_bytes());
  uint64_t samples = 0, source_bytes = 0, skipped = 0;
  {
    ReadAhead reader(**source, args.workers, kReadAheadBytes);
    PackItem item;
    std::vector<FieldData> fields;
    for (;;) {
      if (g_signal.load() != 0) ExitInterrupted(progress, std::move(writer));
      const ReadAhead::Pop pop = reader.Next(&item, kProgressInterval);
      progress.Update(samples, source_bytes);
      if (pop == ReadAhead::Pop::kTimeout) continue;
      if (pop == ReadAhead::Pop::kEnd) break;
      Status bad;
      if (auto* error = std::get_if<SourceError>(&item)) {
        bad = error->status;
      } else {
        bad = pack::ValidateSample(std::get<PackSample>(item));
      }
      if (!bad.ok()) {
        ++skipped;
        if (args.stop_on_error) {
          progress.Clear();
          return Fail(context, Status(bad.code(), bad.message() +
                                                   " (--on-error stop: nothing published)"));
        }
        Warn(progress, "skipped: " + bad.ToString());
        continue;
      }
      const PackSample& sample = std::get<PackSample>(item);
      fields.clear();
      for (const pack::PackField& f : sample.fields) fields.emplace_back(f.name, f.data);
      if (Status added = writer->Add(sample.key, fields); !added.ok()) {
        progress.Clear();
        return Fail(context, Status(added.code(), added.message() + " (nothing published)"));
      }
      ++samples;
      source_bytes += sample.bytes();
    }
    // A signal after the last item still stops the pack before it publishes.
    if (g_signal.load() != 0) ExitInterrupted(progress, std::move(writer));
  }  // the read-ahead is cancelled and joined here
  progress.Clear();
  if (samples == 0) {
    std::string why = "no samples in SRC " + args.src;
    if (skipped > 0) why += " (" + std::to_string(skipped) + " unreadable records skipped)";
    return Fail(context, FailedPreconditionError(why + "; nothing published"));
  }
  progress.Show("publishing " + std::to_string(samples) + " samples (syncing shards)...");
  Result<DatasetWriteStats> stats = writer->Finish();
  progress.Clear();
  if (!stats.ok()) return Fail(context, stats.status().WithContext("publishing failed"));
  if (stats->duplicate_keys > 0) {
    Warn(progress, "warning: " + std::to_string(stats->duplicate_keys) +
                       " keys were added more than once (all samples are kept)");
  }
  if (!args.quiet) {
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("packed %" PRIu64 " samples (%s) into %" PRIu64
                " shard(s) in %.2f s: %.0f samples/s, %.1f MB/s; %" PRIu64
                " unreadable record(s) skipped; published version %" PRIu64
                " of %s (%" PRIu64 " samples in total)\n",
                stats->samples_added, HumanBytes(stats->bytes_added).c_str(), stats->shards_added,
                seconds, seconds > 0 ? stats->samples_added / seconds : 0.0,
                seconds > 0 ? stats->bytes_added / seconds / 1e6 : 0.0, skipped, stats->version,
                args.dst.c_str(), stats->total_samples);
  }
  return kExitOk;
}

}  // namespace granary::cli
