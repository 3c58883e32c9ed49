// Internal to the CLI: what `granary model inspect` (model_commands.cc) and `granary model
// bench` (model_bench_command.cc) share: their arguments and output helpers.
#ifndef GRANARY_TOOLS_MODEL_CLI_H_
#define GRANARY_TOOLS_MODEL_CLI_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace granary::cli {

using Json = nlohmann::json;

struct ModelArgs {
  std::vector<std::string> sources;
  bool json = false;
  bool cold = false;
  uint64_t rounds = 3;
  uint64_t request_mib = 8;
  uint64_t threads = 8;
};

// Parses `granary model <command> ...` (argv[0] is the subcommand). False with *exit_code set on
// a usage error. Only `bench` takes the bench options.
bool ParseModelArgs(std::string_view command, bool bench, int argc, char** argv, ModelArgs* out,
                    int* exit_code);

// "model bench SOURCE..." for error messages.
std::string ModelContext(std::string_view command, const std::vector<std::string>& sources);

// "1.50 GiB (1610612736 B)"; just "512 B" below 1 KiB.
std::string BothBytes(uint64_t bytes);

// JSON text that never throws on odd bytes (a non-UTF-8 path becomes U+FFFD).
std::string DumpJson(const Json& j);

int RunModelInspect(int argc, char** argv);
int RunModelBench(int argc, char** argv);

}  // namespace granary::cli

#endif  // GRANARY_TOOLS_MODEL_CLI_H_
