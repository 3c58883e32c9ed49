// Retention and garbage collection of checkpoints in any ObjectStore (docs/formats/checkpoint.md,
// "Retention and garbage collection"). Decides which committed steps to keep, then deletes the
// rest and the leftovers of crashed saves, never deleting a data file that a kept step's
// manifests reference (incremental saves point at earlier steps' data files).
//
// Thread-safety: the functions are safe to call concurrently with readers and with a save of a
// step newer than the newest committed one (see orphan_grace_s / in_progress_step). Two
// collectors running at once over the same root are safe too (a missing object is not an
// error), but only one should be scheduled.
#ifndef GRANARY_CHECKPOINT_CHECKPOINT_GC_H_
#define GRANARY_CHECKPOINT_CHECKPOINT_GC_H_

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "granary/status.h"
#include "granary/store.h"

namespace granary::checkpoint {

// Which committed steps survive a collection. The newest committed step always survives.
struct RetentionPolicy {
  // Keep the newest `keep_last` committed steps; 0 keeps every committed step. Default: 3.
  uint32_t keep_last = 3;
  // Also keep every committed step divisible by this (long-term snapshots); 0 turns it off.
  // Default: 0.
  uint64_t keep_every = 0;
  // Uncommitted leftovers of steps NEWER than the newest committed step may belong to a save
  // still running in another process: they are removed only when every object of the step is
  // older than this many seconds (by ObjectInfo::mtime_ns; an object whose driver reports no
  // mtime counts as new unless this is 0). Leftovers OLDER than the newest committed step are
  // crashed saves and are removed regardless. Default: 3600.
  int64_t orphan_grace_s = 3600;
  // InvalidArgument for a negative orphan_grace_s.
  Status Validate() const;
};

// What a collection did (or, with dry_run, would do). Steps are ascending.
struct GcReport {
  std::vector<uint64_t> kept_steps;                 // committed steps that survive
  std::vector<uint64_t> removed_steps;              // committed steps removed
  std::vector<uint64_t> removed_uncommitted_steps;  // crashed or abandoned saves removed
  uint64_t objects_removed = 0;
  uint64_t bytes_removed = 0;
  // Data files of removed steps left in place because a kept step references them.
  uint64_t data_files_kept_for_references = 0;
};

// Applies `policy` to the checkpoint under `root` ("" for the store root): lists every object
// under "<root>/step-", keeps the steps the policy selects (plus the newest committed step and
// `in_progress_step`, committed or not), reads the COMMIT and every manifest of each kept step
// to learn which data files they reference, then removes, step by step in ascending order:
//   * committed steps not kept: COMMIT first (the step becomes invisible atomically), then its
//     manifests and other objects, then its data files that no kept step references;
//   * steps without a valid COMMIT older than the newest committed step (crashed saves), except
//     referenced data files;
//   * steps without a valid COMMIT newer than the newest committed step once every object of
//     the step is older than policy.orphan_grace_s (a save may still be running elsewhere).
// If the `latest` hint names a removed step it is rewritten to the newest committed step.
// With dry_run nothing is deleted or written; the report says what would be.
// Errors: InvalidArgument for a bad policy; DataLoss naming the key, with nothing deleted, when
// a kept step's manifest is missing or damaged (its references are unknown); FailedPrecondition,
// with nothing deleted, when a COMMIT was written by a format version this build cannot read;
// store errors otherwise (then some removals may have happened; a rerun completes them).
Result<GcReport> CollectGarbage(ObjectStore& store, std::string_view root,
                                const RetentionPolicy& policy,
                                std::optional<uint64_t> in_progress_step = std::nullopt,
                                bool dry_run = false);

// Removes one step (committed or not) the same way: COMMIT first, then manifests, then data
// files that no other committed step references. Fixes the `latest` hint if it named `step`
// (rewritten to the newest remaining committed step, or deleted when none remains).
// NotFound if no object of the step exists; FailedPrecondition if `step` is the newest
// committed step and !allow_newest; DataLoss naming the key, with nothing deleted, when another
// committed step's manifest is missing or damaged; store errors otherwise.
Status RemoveStep(ObjectStore& store, std::string_view root, uint64_t step,
                  bool allow_newest = false);

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_CHECKPOINT_GC_H_
