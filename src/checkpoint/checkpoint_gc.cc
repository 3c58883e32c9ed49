#include "checkpoint/checkpoint_gc.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <string>

#include "checkpoint/checkpoint_format.h"
#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_writer.h"

namespace granary::checkpoint {
namespace {

// Deletion order within a step: COMMIT first so the step disappears atomically for readers,
// then manifests, then anything else, then data files (which other steps may reference).
enum class ObjectKind { kCommit = 0, kManifest = 1, kOther = 2, kData = 3 };

struct StepObject {
  ObjectInfo info;        // info.key is the full store key
  std::string relative;   // key relative to the root
  ObjectKind kind;
};

// Everything found under "<root>/step-NNNNNNNNNNNN/" for one step.
struct StepState {
  std::vector<StepObject> objects;
  bool has_commit_object = false;
  bool committed = false;  // the COMMIT decodes
  CommitRecord commit;
};

// The step of a relative key "step-NNNNNNNNNNNN/<rest>" with a non-empty rest, or nullopt.
std::optional<uint64_t> ParseStepOfKey(std::string_view relative) {
  const size_t dir_len = kStepPrefix.size() + kStepDigits;
  if (relative.size() <= dir_len + 1 || !relative.starts_with(kStepPrefix) ||
      relative[dir_len] != '/') {
    return std::nullopt;
  }
  uint64_t step = 0;
  for (size_t i = kStepPrefix.size(); i < dir_len; ++i) {
    if (relative[i] < '0' || relative[i] > '9') return std::nullopt;
    step = step * 10 + static_cast<uint64_t>(relative[i] - '0');
  }
  return step;
}

ObjectKind KindOf(std::string_view relative) {
  if (ParseCommitKey(relative)) return ObjectKind::kCommit;
  if (ParseDataKeyStep(relative)) return ObjectKind::kData;
  if (relative.ends_with(kManifestSuffix)) return ObjectKind::kManifest;
  return ObjectKind::kOther;
}

// Lists every step under root and decodes each COMMIT. A damaged COMMIT makes the step
// uncommitted (garbage); a COMMIT of an unknown format version stops everything, since the
// references of such a step cannot be known.
Result<std::map<uint64_t, StepState>> ScanSteps(ObjectStore& store, std::string_view root) {
  const std::string prefix = JoinKey(root, kStepPrefix);
  const size_t root_len = prefix.size() - kStepPrefix.size();
  GRANARY_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.List(prefix));
  std::map<uint64_t, StepState> steps;
  for (ObjectInfo& info : objects) {
    std::string relative = info.key.substr(root_len);
    std::optional<uint64_t> step = ParseStepOfKey(relative);
    if (!step) continue;  // not ours ("step-foo"); leave it alone
    StepState& state = steps[*step];
    const ObjectKind kind = KindOf(relative);
    if (kind == ObjectKind::kCommit) state.has_commit_object = true;
    state.objects.push_back({std::move(info), std::move(relative), kind});
  }
  for (auto& [step, state] : steps) {
    std::stable_sort(state.objects.begin(), state.objects.end(),
                     [](const StepObject& a, const StepObject& b) { return a.kind < b.kind; });
    if (!state.has_commit_object) continue;
    Result<CommitRecord> commit = ReadCommit(store, root, step);
    if (commit.ok()) {
      state.committed = true;
      state.commit = std::move(commit).value();
    } else if (commit.status().code() == StatusCode::kInvalidArgument) {
      return FailedPreconditionError("step " + std::to_string(step) +
                                     " cannot be read by this build, refusing to collect "
                                     "garbage: " + commit.status().message());
    } else if (commit.status().code() != StatusCode::kDataLoss &&
               commit.status().code() != StatusCode::kNotFound) {
      return commit.status();
    }
  }
  return steps;
}

// Adds the data keys every manifest of committed `state` references to *refs. A missing or
// damaged manifest is DataLoss naming its key: without it the references are unknown.
Status AddReferences(ObjectStore& store, std::string_view root, uint64_t step,
                     const StepState& state, std::set<std::string>* refs) {
  const std::string why = "step " + std::to_string(step) + " is kept";
  for (uint32_t rank = 0; rank < state.commit.world_size; ++rank) {
    Result<RankManifest> manifest = ReadManifest(store, root, state.commit, rank);
    if (!manifest.ok()) {
      const Status& s = manifest.status();
      const std::string key = JoinKey(root, state.commit.manifests[rank].key);
      if (s.code() == StatusCode::kNotFound) {
        return DataLossError("manifest " + key + " is missing; " + why +
                             " and its references are unknown");
      }
      if (s.code() == StatusCode::kInvalidArgument) {
        return FailedPreconditionError(why + ": " + s.message());
      }
      return s.WithContext(why);
    }
    for (const TensorEntry& e : manifest->tensors) refs->insert(e.key);
  }
  return Status::OK();
}

// Best effort for a save that has not committed yet: its manifests, if already written, may
// reference earlier steps' data files. Unreadable ones are ignored (the save is unfinished).
void AddUncommittedReferences(ObjectStore& store, const StepState& state,
                              std::set<std::string>* refs) {
  for (const StepObject& o : state.objects) {
    if (o.kind != ObjectKind::kManifest) continue;
    Result<std::string> bytes = store.GetAll(o.info.key);
    if (!bytes.ok()) continue;
    Result<RankManifest> manifest = DecodeManifest(*bytes, o.info.key);
    if (!manifest.ok()) continue;
    for (const TensorEntry& e : manifest->tensors) refs->insert(e.key);
  }
}

// Deletes the objects of one step in kind order, keeping data files in `refs`. A missing
// object is fine (another collector got there first).
Status DeleteStep(ObjectStore& store, const StepState& state, const std::set<std::string>& refs,
                  bool dry_run, GcReport* report) {
  for (const StepObject& o : state.objects) {
    if (o.kind == ObjectKind::kData && refs.count(o.relative) != 0) {
      ++report->data_files_kept_for_references;
      continue;
    }
    if (!dry_run) {
      Status s = store.Delete(o.info.key);
      if (s.code() == StatusCode::kNotFound) continue;
      GRANARY_RETURN_IF_ERROR(s);
    }
    ++report->objects_removed;
    report->bytes_removed += o.info.size_bytes;
  }
  return Status::OK();
}

// True if every object of the step is older than grace_s seconds.
bool OlderThanGrace(const StepState& state, int64_t grace_s, int64_t now_ns) {
  if (grace_s == 0) return true;
  const int64_t limit_ns = now_ns - grace_s * 1'000'000'000;
  return std::all_of(state.objects.begin(), state.objects.end(), [&](const StepObject& o) {
    return o.info.mtime_ns > 0 && o.info.mtime_ns < limit_ns;
  });
}

// If the `latest` hint names a step in `removed`, points it at `newest` (or deletes it when
// there is no committed step left). An unreadable hint is left alone: readers ignore it.
Status FixLatest(ObjectStore& store, std::string_view root, const std::set<uint64_t>& removed,
                 std::optional<uint64_t> newest) {
  const std::string key = JoinKey(root, kLatestName);
  Result<std::string> bytes = store.GetAll(key);
  if (!bytes.ok()) {
    return bytes.status().code() == StatusCode::kNotFound ? Status::OK() : bytes.status();
  }
  Result<uint64_t> named = DecodeLatest(*bytes, key);
  if (!named.ok() || removed.count(*named) == 0) return Status::OK();
  if (newest) return WriteLatest(store, root, *newest);
  Status s = store.Delete(key);
  return s.code() == StatusCode::kNotFound ? Status::OK() : s;
}

}  // namespace

Status RetentionPolicy::Validate() const {
  if (orphan_grace_s < 0) {
    return InvalidArgumentError("RetentionPolicy: orphan_grace_s must be >= 0, got " +
                                std::to_string(orphan_grace_s));
  }
  if (orphan_grace_s > INT64_MAX / 1'000'000'000) {
    return InvalidArgumentError("RetentionPolicy: orphan_grace_s is too large");
  }
  return Status::OK();
}

Result<GcReport> CollectGarbage(ObjectStore& store, std::string_view root,
                                const RetentionPolicy& policy,
                                std::optional<uint64_t> in_progress_step, bool dry_run) {
  GRANARY_RETURN_IF_ERROR(policy.Validate());
  const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  GRANARY_ASSIGN_OR_RETURN(auto steps, ScanSteps(store, root));

  std::vector<uint64_t> committed;
  for (const auto& [step, state] : steps) {
    if (state.committed) committed.push_back(step);
  }
  std::optional<uint64_t> newest;
  if (!committed.empty()) newest = committed.back();

  // Decide. Removal happens only after every kept step's references are known.
  GcReport report;
  std::set<uint64_t> kept;
  for (size_t i = 0; i < committed.size(); ++i) {
    const uint64_t step = committed[i];
    const bool in_last = policy.keep_last == 0 || committed.size() - i <= policy.keep_last;
    const bool every = policy.keep_every != 0 && step % policy.keep_every == 0;
    if (in_last || every || step == *newest || step == in_progress_step) kept.insert(step);
  }
  std::vector<uint64_t> remove_committed, remove_uncommitted;
  std::set<std::string> refs;
  for (const auto& [step, state] : steps) {
    if (state.committed) {
      if (kept.count(step) != 0) {
        GRANARY_RETURN_IF_ERROR(AddReferences(store, root, step, state, &refs));
      } else {
        remove_committed.push_back(step);
      }
      continue;
    }
    const bool older = newest && step < *newest;
    if (step != in_progress_step &&
        (older || OlderThanGrace(state, policy.orphan_grace_s, now_ns))) {
      remove_uncommitted.push_back(step);
    } else {
      AddUncommittedReferences(store, state, &refs);
    }
  }
  report.kept_steps.assign(kept.begin(), kept.end());
  report.removed_steps = remove_committed;
  report.removed_uncommitted_steps = remove_uncommitted;

  // Act. First unpublish every committed step being removed (COMMIT objects only), so that a
  // crash midway never leaves a visible step whose data an earlier removal already deleted
  // (a removed step may reference data files of an older removed step). Then delete the rest,
  // in ascending step order.
  for (uint64_t step : remove_committed) {
    for (const StepObject& o : steps.at(step).objects) {
      if (o.kind != ObjectKind::kCommit || dry_run) continue;
      Status s = store.Delete(o.info.key);
      if (s.code() == StatusCode::kNotFound) continue;
      if (!s.ok()) return s.WithContext("removing step " + std::to_string(step));
      ++report.objects_removed;  // DeleteStep below then finds it gone and skips it
      report.bytes_removed += o.info.size_bytes;
    }
  }
  std::set<uint64_t> removed;
  for (const auto& [step, state] : steps) {
    const auto listed = [step](const std::vector<uint64_t>& v) {
      return std::binary_search(v.begin(), v.end(), step);
    };
    const bool remove = listed(remove_committed) || listed(remove_uncommitted);
    if (!remove) continue;
    GRANARY_RETURN_IF_ERROR(DeleteStep(store, state, refs, dry_run, &report)
                                .WithContext("removing step " + std::to_string(step)));
    removed.insert(step);
  }
  if (!dry_run) GRANARY_RETURN_IF_ERROR(FixLatest(store, root, removed, newest));
  return report;
}

Status RemoveStep(ObjectStore& store, std::string_view root, uint64_t step, bool allow_newest) {
  GRANARY_ASSIGN_OR_RETURN(auto steps, ScanSteps(store, root));
  auto it = steps.find(step);
  if (it == steps.end()) {
    return NotFoundError("no object of step " + std::to_string(step) + " under \"" +
                         std::string(root) + "\"");
  }
  std::optional<uint64_t> newest, newest_remaining;
  for (const auto& [s, state] : steps) {
    if (!state.committed) continue;
    newest = s;
    if (s != step) newest_remaining = s;
  }
  if (newest == step && !allow_newest) {
    return FailedPreconditionError("step " + std::to_string(step) +
                                   " is the newest committed checkpoint; not removing it");
  }
  std::set<std::string> refs;
  for (const auto& [s, state] : steps) {
    if (s == step) continue;
    if (state.committed) {
      GRANARY_RETURN_IF_ERROR(AddReferences(store, root, s, state, &refs));
    } else if (newest && s > *newest) {
      AddUncommittedReferences(store, state, &refs);  // maybe a save in progress
    }
  }
  GcReport report;
  GRANARY_RETURN_IF_ERROR(DeleteStep(store, it->second, refs, /*dry_run=*/false, &report)
                              .WithContext("removing step " + std::to_string(step)));
  return FixLatest(store, root, {step}, newest_remaining);
}

}  // namespace granary::checkpoint
