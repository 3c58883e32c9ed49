// `granary ckpt ls|show|verify|rm|gc URL ...`: inspect, verify and prune the checkpoints under a
// checkpoint directory URL (the checkpoint root is the store root). See kCkptUsage.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint_gc.h"
#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_verify.h"
#include "cli.h"
#include "granary/status.h"
#include "granary/store.h"

namespace granary::cli {
namespace {

using checkpoint::RankManifest;
using checkpoint::TensorEntry;
using Json = nlohmann::json;

constexpr char kCkptUsage[] =
    "usage: granary ckpt <subcommand> URL [args...]\n"
    "\n"
    "Inspects and maintains the checkpoints under URL (file:///abs/dir, a directory path, or\n"
    "mem://name); only steps with a valid COMMIT are checkpoints.\n"
    "\n"
    "  ls URL [--json]             one line per committed step: step, ranks, tensors, bytes,\n"
    "                              bytes written by the step itself, age; '*' marks the newest\n"
    "  show URL [STEP] [--json]    a step's metadata and tensors (default: the newest)\n"
    "  verify URL [STEP|--all]     re-read every tensor and check every checksum; exit 1 if any\n"
    "                              tensor is damaged (default: the newest step)\n"
    "  rm URL STEP [--force]       remove one step; the newest needs --force\n"
    "  gc URL [--keep-last N] [--keep-every K] [--grace-s S] [--dry-run]\n"
    "                              apply retention (default --keep-last 3) and remove leftovers\n"
    "                              of crashed saves; data that kept steps reference stays\n"
    "\n"
    "Example: granary ckpt gc file:///data/runs/exp1 --keep-last 2 --keep-every 1000\n";

// Parsed arguments of one subcommand: positionals, boolean switches and "--name VALUE" (or
// "--name=VALUE") options.
struct Args {
  std::vector<std::string> positional;
  std::vector<std::string> switches;
  std::vector<std::pair<std::string, std::string>> values;
  bool Has(std::string_view name) const {
    return std::find(switches.begin(), switches.end(), name) != switches.end();
  }
  const std::string* Value(std::string_view name) const {
    for (const auto& [k, v] : values) {
      if (k == name) return &v;
    }
    return nullptr;
  }
};

struct Spec {
  std::string_view name;  // "ckpt ls"
  size_t min_args, max_args;
  std::vector<std::string_view> switches = {};
  std::vector<std::string_view> valued = {};
};

// False with *exit_code set on a usage error.
bool Parse(const Spec& spec, int argc, char** argv, Args* out, int* exit_code) {
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (!options_done && arg == "--") {
      options_done = true;
    } else if (!options_done && arg.size() > 1 && arg[0] == '-') {
      std::string name = arg, value;
      const size_t eq = arg.find('=');
      if (eq != std::string::npos) {
        name = arg.substr(0, eq);
        value = arg.substr(eq + 1);
      }
      const auto is = [&](const std::vector<std::string_view>& v) {
        return std::find(v.begin(), v.end(), name) != v.end();
      };
      if (is(spec.switches) && eq == std::string::npos) {
        out->switches.push_back(name);
      } else if (is(spec.valued)) {
        if (eq == std::string::npos) {
          if (i + 1 >= argc) {
            *exit_code = UsageError(spec.name, "option '" + name + "' needs a value");
            return false;
          }
          value = argv[++i];
        }
        out->values.emplace_back(name, value);
      } else {
        *exit_code = UsageError(spec.name, "unknown option '" + arg + "'");
        return false;
      }
    } else {
      out->positional.push_back(arg);
    }
  }
  if (out->positional.size() < spec.min_args) {
    *exit_code = UsageError(spec.name, out->positional.empty() ? "missing URL" : "missing STEP");
    return false;
  }
  if (out->positional.size() > spec.max_args) {
    *exit_code =
        UsageError(spec.name, "unexpected argument '" + out->positional[spec.max_args] + "'");
    return false;
  }
  return true;
}

// A non-negative decimal integer, or nullopt.
std::optional<uint64_t> ParseU64(std::string_view text) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return v;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "42s", "3m", "2h", "5d"; "-" when the store does not know the time.
std::string HumanAge(int64_t mtime_ns) {
  if (mtime_ns <= 0) return "-";
  const int64_t s = std::max<int64_t>(0, (NowNs() - mtime_ns) / 1'000'000'000);
  if (s < 60) return std::to_string(s) + "s";
  if (s < 3600) return std::to_string(s / 60) + "m";
  if (s < 86400) return std::to_string(s / 3600) + "h";
  return std::to_string(s / 86400) + "d";
}

std::string Shape(const std::vector<uint64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

Result<std::unique_ptr<ObjectStore>> OpenExisting(const std::string& url) {
  StoreOptions options;
  options.create_if_missing = false;
  return OpenStore(url, options);
}

// One committed step, summarized.
struct StepSummary {
  uint64_t step = 0;
  uint32_t ranks = 0;
  uint64_t tensors = 0, bytes = 0, written_bytes = 0;
  int64_t commit_mtime_ns = 0;
  std::vector<RankManifest> manifests;
};

Result<StepSummary> Summarize(ObjectStore& store, uint64_t step) {
  StepSummary out;
  out.step = step;
  GRANARY_ASSIGN_OR_RETURN(checkpoint::CommitRecord commit,
                           checkpoint::ReadCommit(store, "", step));
  out.ranks = commit.world_size;
  GRANARY_ASSIGN_OR_RETURN(ObjectInfo info, store.Stat(checkpoint::CommitKey(step)));
  out.commit_mtime_ns = info.mtime_ns;
  for (uint32_t rank = 0; rank < commit.world_size; ++rank) {
    GRANARY_ASSIGN_OR_RETURN(RankManifest m, checkpoint::ReadManifest(store, "", commit, rank));
    for (const TensorEntry& e : m.tensors) {
      ++out.tensors;
      out.bytes += e.length;
      if (checkpoint::ParseDataKeyStep(e.key) == step) out.written_bytes += e.length;
    }
    out.manifests.push_back(std::move(m));
  }
  return out;
}

// The step named by positional[1], or the newest committed one.
Result<uint64_t> PickStep(ObjectStore& store, const Args& args) {
  if (args.positional.size() > 1) {
    std::optional<uint64_t> step = ParseU64(args.positional[1]);
    if (!step) {
      return InvalidArgumentError("STEP must be a number, got '" + args.positional[1] + "'");
    }
    return *step;
  }
  Result<uint64_t> newest = checkpoint::ReadLatestStep(store, "");
  if (newest.status().code() == StatusCode::kNotFound) {
    return NotFoundError("no committed checkpoint in " + store.url());
  }
  return newest;
}

int RunCkptLs(int argc, char** argv) {
  Args args;
  int code = kExitOk;
  if (!Parse({"ckpt ls", 1, 1, {"--json"}}, argc, argv, &args, &code)) return code;
  const std::string& url = args.positional[0];
  const std::string context = "ckpt ls " + url;
  auto store = OpenExisting(url);
  if (!store.ok()) return Fail(context, store.status());
  auto steps = checkpoint::ListCommittedSteps(**store, "");
  if (!steps.ok()) return Fail(context, steps.status());
  const bool json = args.Has("--json");
  if (!json && !steps->empty()) {
    std::printf("%-14s %6s %8s %11s %11s %6s\n", "STEP", "RANKS", "TENSORS", "SIZE", "WRITTEN",
                "AGE");
  }
  for (uint64_t step : *steps) {
    const bool newest = step == steps->back();
    Result<StepSummary> s = Summarize(**store, step);
    if (!s.ok()) {  // list the rest; `verify` is the tool for the details
      if (json) {
        Json line{{"step", step}, {"newest", newest}, {"error", s.status().ToString()}};
        std::printf("%s\n", line.dump().c_str());
      } else {
        std::printf("%-14" PRIu64 " unreadable: %s%s\n", step, s.status().ToString().c_str(),
                    newest ? "  *" : "");
      }
      continue;
    }
    if (json) {
      Json line{{"step", step}, {"ranks", s->ranks}, {"tensors", s->tensors}, {"bytes", s->bytes},
                {"written_bytes", s->written_bytes}, {"commit_mtime_ns", s->commit_mtime_ns},
                {"newest", newest}};
      std::printf("%s\n", line.dump().c_str());
    } else {
      std::printf("%-14" PRIu64 " %6u %8" PRIu64 " %11s %11s %6s%s\n", step, s->ranks, s->tensors,
                  HumanBytes(s->bytes).c_str(), HumanBytes(s->written_bytes).c_str(),
                  HumanAge(s->commit_mtime_ns).c_str(), newest ? "  *" : "");
    }
  }
  return kExitOk;
}

int RunCkptShow(int argc, char** argv) {
  Args args;
  int code = kExitOk;
  if (!Parse({"ckpt show", 1, 2, {"--json"}}, argc, argv, &args, &code)) return code;
  const std::string& url = args.positional[0];
  std::string context = "ckpt show " + url;
  auto store = OpenExisting(url);
  if (!store.ok()) return Fail(context, store.status());
  Result<uint64_t> step = PickStep(**store, args);
  if (!step.ok()) return Fail(context, step.status());
  context += " " + std::to_string(*step);
  Result<StepSummary> s = Summarize(**store, *step);
  if (!s.ok()) return Fail(context, s.status());
  if (args.Has("--json")) {
    Json tensors = Json::array();
    for (const RankManifest& m : s->manifests) {
      for (const TensorEntry& e : m.tensors) {
        tensors.push_back({{"rank", m.rank}, {"name", e.name}, {"dtype", e.dtype},
                           {"shape", e.shape}, {"bytes", e.length}, {"key", e.key},
                           {"offset", e.offset},
                           {"reused", checkpoint::ParseDataKeyStep(e.key) != *step}});
      }
    }
    Json metadata = Json::array();
    for (const RankManifest& m : s->manifests) {
      metadata.push_back(Json::parse(m.user_metadata_json, nullptr, /*allow_exceptions=*/false));
    }
    Json out{{"step", *step}, {"world_size", s->ranks}, {"tensors", tensors}, {"bytes", s->bytes},
             {"written_bytes", s->written_bytes}, {"user_metadata", metadata}};
    std::printf("%s\n", out.dump().c_str());
    return kExitOk;
  }
  std::printf("step:          %" PRIu64 "\nworld_size:    %u\ncommitted:     %s ago\n", *step,
              s->ranks, HumanAge(s->commit_mtime_ns).c_str());
  std::printf("tensors:       %" PRIu64 " (%s; %s written by this step)\n", s->tensors,
              HumanBytes(s->bytes).c_str(), HumanBytes(s->written_bytes).c_str());
  // One line when every rank carries the same metadata, else one per rank.
  const bool same =
      std::all_of(s->manifests.begin(), s->manifests.end(), [&](const RankManifest& m) {
        return m.user_metadata_json == s->manifests[0].user_metadata_json;
      });
  for (const RankManifest& m : s->manifests) {
    if (same) {
      std::printf("user_metadata: %s\n", m.user_metadata_json.c_str());
      break;
    }
    std::printf("user_metadata (rank %u): %s\n", m.rank, m.user_metadata_json.c_str());
  }
  std::printf("\n%-5s %-32s %-9s %-18s %12s %-40s %12s %s\n", "RANK", "NAME", "DTYPE", "SHAPE",
              "BYTES", "KEY", "OFFSET", "REUSED");
  for (const RankManifest& m : s->manifests) {
    for (const TensorEntry& e : m.tensors) {
      const std::optional<uint64_t> from = checkpoint::ParseDataKeyStep(e.key);
      const std::string reused =
          from == *step ? "no" : "yes (step " + std::to_string(from.value_or(0)) + ")";
      std::printf("%-5u %-32s %-9s %-18s %12" PRIu64 " %-40s %12" PRIu64 " %s\n", m.rank,
                  e.name.c_str(), e.dtype.c_str(), Shape(e.shape).c_str(), e.length,
                  e.key.c_str(), e.offset, reused.c_str());
    }
  }
  return kExitOk;
}

int RunCkptVerify(int argc, char** argv) {
  Args args;
  int code = kExitOk;
  if (!Parse({"ckpt verify", 1, 2, {"--all"}}, argc, argv, &args, &code)) return code;
  if (args.Has("--all") && args.positional.size() > 1) {
    return UsageError("ckpt verify", "give a STEP or --all, not both");
  }
  const std::string& url = args.positional[0];
  const std::string context = "ckpt verify " + url;
  auto store = OpenExisting(url);
  if (!store.ok()) return Fail(context, store.status());
  std::vector<uint64_t> steps;
  if (args.Has("--all")) {
    auto all = checkpoint::ListCommittedSteps(**store, "");
    if (!all.ok()) return Fail(context, all.status());
    if (all->empty()) return Fail(context, NotFoundError("no committed checkpoint"));
    steps = *all;
  } else {
    Result<uint64_t> step = PickStep(**store, args);
    if (!step.ok()) return Fail(context, step.status());
    steps.push_back(*step);
  }
  size_t bad_steps = 0;
  Status first_error;
  for (uint64_t step : steps) {
    Result<checkpoint::VerifyReport> r = checkpoint::VerifyStep(**store, "", step);
    Status s = r.ok() ? r->ToStatus() : r.status();
    if (r.ok() && s.ok()) {
      std::printf("step %" PRIu64 ": OK (%u ranks, %" PRIu64 " tensors, %s)\n", step, r->world_size,
                  r->tensors, HumanBytes(r->bytes).c_str());
    } else if (r.ok()) {
      for (const checkpoint::VerifyProblem& p : r->problems) {
        std::printf("step %" PRIu64 ": DAMAGED rank %u tensor \"%s\" in %s: %s\n", step, p.rank,
                    p.tensor.c_str(), p.data_key.c_str(), p.message.c_str());
      }
    } else {
      std::printf("step %" PRIu64 ": ERROR %s\n", step, s.ToString().c_str());
      if (s.code() != StatusCode::kDataLoss) return Fail(context, s);  // cannot verify at all
    }
    if (!s.ok() && bad_steps++ == 0) first_error = s;
  }
  if (bad_steps == 0) return kExitOk;
  if (steps.size() > 1) {
    first_error = first_error.WithContext(std::to_string(bad_steps) + " of " +
                                          std::to_string(steps.size()) + " steps damaged");
  }
  return Fail(context, first_error);
}

int RunCkptRm(int argc, char** argv) {
  Args args;
  int code = kExitOk;
  if (!Parse({"ckpt rm", 2, 2, {"--force"}}, argc, argv, &args, &code)) return code;
  const std::string& url = args.positional[0];
  const std::optional<uint64_t> step = ParseU64(args.positional[1]);
  if (!step) {
    return UsageError("ckpt rm", "STEP must be a number, got '" + args.positional[1] + "'");
  }
  const std::string context = "ckpt rm " + url + " " + args.positional[1];
  auto store = OpenExisting(url);
  if (!store.ok()) return Fail(context, store.status());
  Status s = checkpoint::RemoveStep(**store, "", *step, args.Has("--force"));
  if (s.code() == StatusCode::kFailedPrecondition && !args.Has("--force")) {
    s = Status(s.code(), s.message() + " (pass --force to remove it anyway)");
  }
  if (!s.ok()) return Fail(context, s);
  std::printf("removed step %" PRIu64 "\n", *step);
  return kExitOk;
}

int RunCkptGc(int argc, char** argv) {
  Args args;
  int code = kExitOk;
  if (!Parse({"ckpt gc", 1, 1, {"--dry-run"}, {"--keep-last", "--keep-every", "--grace-s"}}, argc,
             argv, &args, &code)) {
    return code;
  }
  checkpoint::RetentionPolicy policy;
  for (const auto& [name, value] : args.values) {
    std::optional<uint64_t> v = ParseU64(value);
    const bool too_big = v && ((name == "--keep-last" && *v > UINT32_MAX) ||
                                (name == "--grace-s" && *v > INT32_MAX));
    if (!v || too_big) {
      return UsageError("ckpt gc", name + " needs a non-negative number, got '" + value + "'");
    }
    if (name == "--keep-last") policy.keep_last = static_cast<uint32_t>(*v);
    if (name == "--keep-every") policy.keep_every = *v;
    if (name == "--grace-s") policy.orphan_grace_s = static_cast<int64_t>(*v);
  }
  const bool dry_run = args.Has("--dry-run");
  const std::string& url = args.positional[0];
  const std::string context = "ckpt gc " + url;
  auto store = OpenExisting(url);
  if (!store.ok()) return Fail(context, store.status());
  auto report = checkpoint::CollectGarbage(**store, "", policy, std::nullopt, dry_run);
  if (!report.ok()) return Fail(context, report.status());
  const char* verb = dry_run ? "would remove" : "removed";
  for (uint64_t s : report->removed_steps) std::printf("%s step %" PRIu64 "\n", verb, s);
  for (uint64_t s : report->removed_uncommitted_steps) {
    std::printf("%s uncommitted step %" PRIu64 " (leftovers of an unfinished save)\n", verb, s);
  }
  std::string kept;
  for (uint64_t s : report->kept_steps) kept += " " + std::to_string(s);
  std::printf("kept steps:%s\n", kept.empty() ? " none" : kept.c_str());
  std::printf("%s %" PRIu64 " objects, %s", verb, report->objects_removed,
              HumanBytes(report->bytes_removed).c_str());
  if (report->data_files_kept_for_references > 0) {
    std::printf("; %" PRIu64 " data files of removed steps kept (referenced by kept steps)",
                report->data_files_kept_for_references);
  }
  std::printf("\n");
  return kExitOk;
}

struct Subcommand {
  const char* name;
  int (*run)(int argc, char** argv);
};
constexpr Subcommand kSubcommands[] = {
    {"ls", RunCkptLs}, {"show", RunCkptShow}, {"verify", RunCkptVerify},
    {"rm", RunCkptRm}, {"gc", RunCkptGc},
};

}  // namespace

int RunCkpt(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kCkptUsage, stderr);
    return kExitUsage;
  }
  if (WantsHelp(argc, argv)) {
    std::fputs(kCkptUsage, stdout);
    return kExitOk;
  }
  const std::string_view name = argv[1];
  for (const Subcommand& sub : kSubcommands) {
    if (name == sub.name) return sub.run(argc - 1, argv + 1);
  }
  return UsageError("ckpt", "unknown subcommand '" + std::string(name) + "'");
}

}  // namespace granary::cli
