// Helpers shared by the `granary` CLI's commands (tools/granary/*.cc).
//
// Conventions every command follows:
//   * `-h`/`--help` anywhere prints the command's usage to stdout and exits 0.
//   * Success exits 0. A usage error prints one line to stderr and exits 2; a failed operation
//     prints exactly one line "granary: <command> <args>: <Code>: <message>" and exits 1.
//   * Data goes to stdout, diagnostics to stderr.
#ifndef GRANARY_TOOLS_GRANARY_CLI_H_
#define GRANARY_TOOLS_GRANARY_CLI_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "granary/status.h"

namespace granary::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// The version of this build ("0.1.0").
std::string_view Version();

// True if any argument is "-h" or "--help" (before a "--").
bool WantsHelp(int argc, char** argv);

// Prints "granary: <context>: <Code>: <message>" as one line to stderr; returns kExitFailure.
int Fail(std::string_view context, const Status& status);

// Prints "granary: <command>: <message> (see 'granary <command> --help')" to stderr; returns
// kExitUsage.
int UsageError(std::string_view command, std::string_view message);

// Splits argv[1..] (argv[0] is the command name) into positional arguments and flags. A flag is
// any argument starting with '-' (other than "-" alone) before a "--"; everything after "--" is
// positional.
// "0 B", "812 B", "4.9 KiB", "1.50 GiB".
std::string HumanBytes(uint64_t bytes);

struct ParsedArgs {
  std::vector<std::string> positional;
  std::vector<std::string> flags;
};
ParsedArgs ParseArgs(int argc, char** argv);

// Store commands (store_commands.cc). Each receives argv starting at the command name and
// returns the process exit code.
int RunLs(int argc, char** argv);
int RunStat(int argc, char** argv);
int RunCat(int argc, char** argv);
int RunPut(int argc, char** argv);
int RunRm(int argc, char** argv);

// `granary ckpt ls|show|verify|rm|gc URL ...` (ckpt_commands.cc): checkpoint inspection,
// verification and retention; argv starts at "ckpt".
int RunCkpt(int argc, char** argv);

// `granary pack SRC DST [options]` (pack_commands.cc): packs a directory tree, WebDataset tar
// shards or JSONL into a dataset version; argv starts at "pack".
int RunPack(int argc, char** argv);

// `granary model inspect|bench SOURCE...` (model_commands.cc): a safetensors model's files and
// tensors, and how fast it loads next to a ceiling measured in the same run; argv starts at
// "model".
int RunModel(int argc, char** argv);

// `granary warm URL [PREFIX]` and `granary cache stat|evict|verify [DIR]` (cache_commands.cc):
// fill and look after the node-local cache.
int RunWarm(int argc, char** argv);
int RunCache(int argc, char** argv);

}  // namespace granary::cli

#endif  // GRANARY_TOOLS_GRANARY_CLI_H_
