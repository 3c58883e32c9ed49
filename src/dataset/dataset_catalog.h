// What is published under a dataset prefix: its versions (manifest objects), loading one
// manifest, and removing the segments of crashed or interrupted writers. Internal to
// src/dataset; thread-safe (each call only reads the store or deletes unreferenced objects).
#ifndef GRANARY_DATASET_DATASET_CATALOG_H_
#define GRANARY_DATASET_DATASET_CATALOG_H_

#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "dataset/dataset_manifest.h"
#include "granary/store.h"

namespace granary::dataset {

// Versions with a manifest key under `prefix`, ascending; empty if none (no error).
Result<std::vector<uint64_t>> ListVersions(ObjectStore& store, std::string_view prefix);

// Reads and decodes the manifest of `version`. NotFound naming the key if absent; errors of
// DecodeManifest otherwise.
Result<DatasetManifest> LoadManifest(ObjectStore& store, std::string_view prefix,
                                     uint64_t version);

struct GarbageStats {
  uint64_t segments_removed = 0;
  uint64_t objects_removed = 0;
};

// Removes every segment under `prefix` that is not in `referenced` (segment names) and whose
// objects all have an mtime older than now_unix_ns - kGarbageGraceNs (an unknown mtime counts
// as new). Lists only keys starting with "<prefix>/seg-". Best effort per object: a failed
// delete is skipped (the next writer retries); a failed listing is returned.
Result<GarbageStats> CollectGarbageSegments(ObjectStore& store, std::string_view prefix,
                                            const std::set<std::string>& referenced,
                                            int64_t now_unix_ns);

// Wall-clock time, nanoseconds since the Unix epoch (comparable to ObjectInfo::mtime_ns).
int64_t WallClockNanos();

}  // namespace granary::dataset

#endif  // GRANARY_DATASET_DATASET_CATALOG_H_
