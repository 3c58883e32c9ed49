// `granary`: the command-line tool. Dispatches to one function per command; shared helpers
// (help, error lines, argument splitting) live here too and are declared in cli.h.
#include <cinttypes>
#include <cstdio>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "cli.h"
#include "doctor.h"

// The build passes the project version; the fallback keeps a standalone compile working.
#ifndef GRANARY_VERSION
#define GRANARY_VERSION "0.1.0"
#endif

namespace granary::cli {
namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

int RunVersion(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    std::printf("usage: granary version\n\nPrints the version of granary.\n");
    return kExitOk;
  }
  std::printf("granary %s\n", GRANARY_VERSION);
  return kExitOk;
}

int RunDoctorCommand(int argc, char** argv) { return ::RunDoctor(argc, argv); }

constexpr Command kCommands[] = {
    {"ls", "list the objects of a store (under a prefix)", RunLs},
    {"stat", "show an object's size and modification time", RunStat},
    {"cat", "write an object to stdout", RunCat},
    {"put", "store a file or stdin as an object", RunPut},
    {"rm", "delete objects", RunRm},
    {"ckpt", "list, show, verify and garbage-collect checkpoints", RunCkpt},
    {"pack", "pack files, WebDataset tars or JSONL into a dataset", RunPack},
    {"model", "inspect safetensors models and benchmark loading them", RunModel},
    {"warm", "fill the node-local cache with the objects under a prefix", RunWarm},
    {"cache", "stat, evict or verify a node-local cache directory", RunCache},
    {"doctor", "measure what this machine's disk and memory can do", RunDoctorCommand},
    {"version", "print the version", RunVersion},
};

void PrintToolHelp() {
  std::printf(
      "usage: granary <command> [args...]\n"
      "\n"
      "granary: a storage engine for large-model training and inference.\n"
      "\n"
      "commands:\n");
  for (const Command& c : kCommands) std::printf("  %-9s %s\n", c.name, c.summary);
  std::printf(
      "\n"
      "Store commands take the STORE first and the object's KEY second:\n"
      "  granary put  file:///data/store runs/a.bin ./a.bin\n"
      "  granary cat  /data/store runs/a.bin > a.bin\n"
      "  granary ls   /data/store runs/ --long\n"
      "STORE is a URL: file:///abs/dir, a plain directory path, s3://bucket/prefix (docs/s3.md),\n"
      "or mem://name (this process only). KEYs are '/'-separated, like a relative path (\"runs/exp1/rank0.bin\").\n"
      "\n"
      "'granary <command> --help' describes a command. Errors print one line on stderr and\n"
      "exit 1 (2 for usage errors).\n");
}

}  // namespace

std::string_view Version() { return GRANARY_VERSION; }

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) return false;
    if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) return true;
  }
  return false;
}

int Fail(std::string_view context, const Status& status) {
  std::string line = "granary: ";
  line += context;
  line += ": ";
  line += status.ToString();
  // One line, whatever the message holds.
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  line += '\n';
  std::fflush(stdout);
  std::fwrite(line.data(), 1, line.size(), stderr);
  return kExitFailure;
}

int UsageError(std::string_view command, std::string_view message) {
  std::fflush(stdout);
  std::fprintf(stderr, "granary: %.*s: %.*s (see 'granary %.*s --help')\n",
               static_cast<int>(command.size()), command.data(),
               static_cast<int>(message.size()), message.data(),
               static_cast<int>(command.size()), command.data());
  return kExitUsage;
}

// "0 B", "4.9 KiB", "1.50 GiB".
std::string HumanBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024 && unit < 5) {
    v /= 1024;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof(text), "%" PRIu64 " B", bytes);
  } else {
    std::snprintf(text, sizeof(text), v < 10 ? "%.2f %s" : "%.1f %s", v, kUnits[unit]);
  }
  return text;
}

ParsedArgs ParseArgs(int argc, char** argv) {
  ParsedArgs out;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (!options_done && arg == "--") {
      options_done = true;
    } else if (!options_done && arg.size() > 1 && arg[0] == '-') {
      out.flags.emplace_back(arg);
    } else {
      out.positional.emplace_back(arg);
    }
  }
  return out;
}

}  // namespace granary::cli

int main(int argc, char** argv) {
  using granary::cli::kCommands;
  if (argc < 2) {
    granary::cli::PrintToolHelp();
    return granary::cli::kExitUsage;
  }
  std::string_view name = argv[1];
  if (name == "-h" || name == "--help" || name == "help") {
    granary::cli::PrintToolHelp();
    return granary::cli::kExitOk;
  }
  if (name == "--version" || name == "-V") name = "version";
  for (const auto& command : kCommands) {
    if (name == command.name) return command.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "granary: unknown command '%s' (see 'granary --help')\n", argv[1]);
  return granary::cli::kExitUsage;
}
