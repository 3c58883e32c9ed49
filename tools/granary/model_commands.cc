// `granary model inspect SOURCE...`: what a safetensors model holds (files, tensors, their
// alignment, metadata), the `granary model` dispatcher and its usage text, and the argument
// parsing both subcommands share. `bench` is in model_bench_command.cc. A SOURCE is anything
// Model::Open takes (include/granary/model.h).
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

constexpr char kModelUsage[] =
    "usage: granary model <subcommand> SOURCE... [options]\n"
    "\n"
    "Inspects and benchmarks models stored as Hugging Face safetensors files. A SOURCE is a\n"
    ".safetensors file, a directory (its *.safetensors.index.json, else every *.safetensors\n"
    "file), an index JSON, or a file:// URL of any of these; several SOURCEs form one model.\n"
    "\n"
    "  inspect SOURCE... [--json]  files (size, data start, tensors, metadata), every tensor\n"
    "                              (dtype, shape, bytes, file, offset; MISALIGNED when the\n"
    "                              offset is not a multiple of the element size, so the loader\n"
    "                              stages it), totals by dtype and the index metadata\n"
    "  bench SOURCE... [options]   loads every tensor --rounds times: per round seconds, GB/s\n"
    "                              (1 GB = 1e9 B), time to the first tensor and where the bytes\n"
    "                              came from, next to a ceiling measured between the rounds\n"
    "      --rounds N              rounds (default 3)\n"
    "      --cold                  drop the files from the page cache before each round\n"
    "                              (fdatasync + posix_fadvise DONTNEED, no root needed); the\n"
    "                              ceiling is then O_DIRECT reads of the same bytes (8 MiB, 8 in\n"
    "                              flight), else buffered preads into one reused buffer\n"
    "      --request-mib N         the loader's largest read in MiB (default 8)\n"
    "      --threads N             the loader's reads in flight (default 8)\n"
    "      --json                  one JSON object instead of text\n"
    "\n"
    "A damaged file or index is reported on stderr, naming the file and tensor; exit 1.\n"
    "\n"
    "Example: granary model bench /models/llama --cold --rounds 5\n";

std::string Shape(const std::vector<uint64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// Alignment of one element in memory (1 for sub-byte dtypes).
size_t ElementAlignment(const ModelTensor& t) {
  Result<model::DType> dtype = model::ParseDType(t.dtype);
  return dtype.ok() ? model::DTypeAlignment(*dtype) : 1;
}

// As the loader decides (model_stream.cc): such a tensor is read through staging and copied.
bool Misaligned(const ModelTensor& t) {
  return t.bytes > 0 && t.offset % ElementAlignment(t) != 0;
}

}  // namespace

bool ParseModelArgs(std::string_view command, bool bench, int argc, char** argv, ModelArgs* out,
           int* exit_code) {
  struct Valued {
    std::string_view name;
    uint64_t* value;
    uint64_t min, max;
  };
  const Valued valued[] = {{"--rounds", &out->rounds, 1, 1000},
                           {"--request-mib", &out->request_mib, 1, 1024},
                           {"--threads", &out->threads, 1, 256}};
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (options_done || arg.size() < 2 || arg[0] != '-') {
      out->sources.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    if (name == "--json" && eq == std::string::npos) {
      out->json = true;
      continue;
    }
    if (bench && name == "--cold" && eq == std::string::npos) {
      out->cold = true;
      continue;
    }
    const Valued* v = nullptr;
    for (const Valued& candidate : valued) {
      if (bench && name == candidate.name) v = &candidate;
    }
    if (v == nullptr) {
      *exit_code = UsageError(command, "unknown option '" + arg + "'");
      return false;
    }
    std::string text;
    if (eq != std::string::npos) {
      text = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      text = argv[++i];
    } else {
      *exit_code = UsageError(command, "option '" + name + "' needs a value");
      return false;
    }
    uint64_t n = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || n < v->min ||
        n > v->max) {
      *exit_code = UsageError(command, name + " needs a number in [" + std::to_string(v->min) +
                                           ", " + std::to_string(v->max) + "], got '" + text +
                                           "'");
      return false;
    }
    *v->value = n;
  }
  if (out->sources.empty()) {
    *exit_code = UsageError(command, "missing SOURCE");
    return false;
  }
  return true;
}

std::string ModelContext(std::string_view command, const std::vector<std::string>& sources) {
  std::string out(command);
  for (const std::string& s : sources) out += " " + s;
  return out;
}

std::string BothBytes(uint64_t bytes) {
  if (bytes < 1024) return HumanBytes(bytes);
  return HumanBytes(bytes) + " (" + std::to_string(bytes) + " B)";
}

std::string DumpJson(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

int RunModelInspect(int argc, char** argv) {
  ModelArgs args;
  int code = kExitOk;
  if (!ParseModelArgs("model inspect", false, argc, argv, &args, &code)) return code;
  auto opened = Model::Open(args.sources);
  if (!opened.ok()) return Fail(ModelContext("model inspect", args.sources), opened.status());
  const Model& m = **opened;
  std::vector<uint64_t> per_file(m.files().size());
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // tensors, bytes
  size_t misaligned = 0, name_width = 4;
  for (const ModelTensor& t : m.tensors()) {
    ++per_file[t.file];
    by_dtype[t.dtype].first++;
    by_dtype[t.dtype].second += t.bytes;
    misaligned += Misaligned(t);
    name_width = std::min<size_t>(std::max(name_width, t.name.size()), 64);
  }
  if (args.json) {
    Json files = Json::array(), tensors = Json::array(), dtypes = Json::object();
    for (size_t i = 0; i < m.files().size(); ++i) {
      const ModelFile& f = m.files()[i];
      Json meta = Json::object();
      for (const auto& [k, v] : f.metadata) meta[k] = v;
      files.push_back({{"url", f.url}, {"size_bytes", f.size_bytes}, {"data_start", f.data_start},
                       {"tensors", per_file[i]}, {"metadata", meta}});
    }
    for (const ModelTensor& t : m.tensors()) {
      tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape},
                         {"bytes", t.bytes}, {"file", t.file}, {"offset", t.offset},
                         {"alignment", ElementAlignment(t)}, {"misaligned", Misaligned(t)}});
    }
    for (const auto& [dtype, n] : by_dtype) {
      dtypes[dtype] = {{"tensors", n.first}, {"bytes", n.second}};
    }
    Json index = nullptr;
    if (!m.index_metadata().empty()) {
      index = Json::parse(m.index_metadata(), nullptr, /*allow_exceptions=*/false);
    }
    Json out{{"files", files}, {"tensors", tensors}, {"total_tensors", m.tensors().size()},
             {"total_bytes", m.total_bytes()}, {"by_dtype", dtypes},
             {"misaligned_tensors", misaligned}, {"index_metadata", index}};
    std::printf("%s\n", DumpJson(out).c_str());
    return kExitOk;
  }
  std::printf("model: %zu files, %zu tensors, %s\n", m.files().size(), m.tensors().size(),
              BothBytes(m.total_bytes()).c_str());
  for (size_t i = 0; i < m.files().size(); ++i) {
    const ModelFile& f = m.files()[i];
    std::printf("file %zu: %s\n  size %s, data start %" PRIu64 ", %" PRIu64 " tensors\n", i,
                f.url.c_str(), BothBytes(f.size_bytes).c_str(), f.data_start, per_file[i]);
    for (const auto& [k, v] : f.metadata) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
  }
  if (!m.index_metadata().empty()) {
    std::printf("index metadata: %s\n", m.index_metadata().c_str());
  }
  const int w = static_cast<int>(name_width);
  std::printf("\n%-*s %-9s %-20s %10s %14s %4s %14s\n", w, "NAME", "DTYPE", "SHAPE", "SIZE",
              "BYTES", "FILE", "OFFSET");
  for (const ModelTensor& t : m.tensors()) {
    std::printf("%-*s %-9s %-20s %10s %14" PRIu64 " %4u %14" PRIu64 "%s\n", w, t.name.c_str(),
                t.dtype.c_str(), Shape(t.shape).c_str(), HumanBytes(t.bytes).c_str(), t.bytes,
                t.file, t.offset, Misaligned(t) ? "  MISALIGNED" : "");
  }
  std::printf("\ntotal: %zu tensors, %s\n", m.tensors().size(), BothBytes(m.total_bytes()).c_str());
  for (const auto& [dtype, n] : by_dtype) {
    std::printf("  %-9s %6" PRIu64 " tensors  %s\n", dtype.c_str(), n.first,
                BothBytes(n.second).c_str());
  }
  if (misaligned > 0) {
    std::printf("misaligned: %zu tensors (offset not a multiple of the element size; the loader "
                "reads them through staging and copies them)\n", misaligned);
  }
  return kExitOk;
}

namespace {

struct Subcommand {
  const char* name;
  int (*run)(int argc, char** argv);
};
constexpr Subcommand kSubcommands[] = {{"inspect", RunModelInspect}, {"bench", RunModelBench}};

}  // namespace

int RunModel(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kModelUsage, stderr);
    return kExitUsage;
  }
  if (WantsHelp(argc, argv)) {
    std::fputs(kModelUsage, stdout);
    return kExitOk;
  }
  const std::string_view name = argv[1];
  for (const Subcommand& sub : kSubcommands) {
    if (name == sub.name) return sub.run(argc - 1, argv + 1);
  }
  return UsageError("model", "unknown subcommand '" + std::string(name) + "'");
}

}  // namespace granary::cli
