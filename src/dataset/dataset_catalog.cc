#include "dataset/dataset_catalog.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "dataset/dataset_format.h"
#include "granary/dataset.h"

namespace granary {
namespace dataset {

Result<std::vector<uint64_t>> ListVersions(ObjectStore& store, std::string_view prefix) {
  const std::string list_prefix = JoinKey(prefix, kManifestPrefix);
  GRANARY_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.List(list_prefix));
  std::vector<uint64_t> versions;
  const size_t strip = list_prefix.size() - kManifestPrefix.size();
  for (const ObjectInfo& o : objects) {
    // Only direct children: "manifest-000000000001", not "manifest-000000000001/x".
    if (std::optional<uint64_t> v = ParseManifestKey(std::string_view(o.key).substr(strip))) {
      versions.push_back(*v);
    }
  }
  std::sort(versions.begin(), versions.end());
  return versions;
}

Result<DatasetManifest> LoadManifest(ObjectStore& store, std::string_view prefix,
                                     uint64_t version) {
  const std::string key = JoinKey(prefix, ManifestKey(version));
  Result<std::string> bytes = store.GetAll(key);
  if (!bytes.ok()) return bytes.status().WithContext("manifest " + key);
  return DecodeManifest(*bytes, key);
}

Result<GarbageStats> CollectGarbageSegments(ObjectStore& store, std::string_view prefix,
                                            const std::set<std::string>& referenced,
                                            int64_t now_unix_ns) {
  const std::string list_prefix = JoinKey(prefix, kSegmentPrefix);
  const size_t strip = list_prefix.size() - kSegmentPrefix.size();
  GRANARY_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.List(list_prefix));
  struct Group {
    std::vector<std::string> keys;
    bool young = false;
  };
  std::map<std::string, Group> groups;
  for (const ObjectInfo& o : objects) {
    std::string_view rel = std::string_view(o.key).substr(strip);
    const size_t slash = rel.find('/');
    if (slash == std::string_view::npos) continue;  // not inside a segment directory
    std::string name(rel.substr(0, slash));
    uint64_t version = 0, writer = 0;
    if (!ParseSegmentName(name, &version, &writer) || referenced.contains(name)) continue;
    Group& g = groups[name];
    g.keys.push_back(o.key);
    // A writer still running keeps committing shards; any recent object protects the segment.
    if (o.mtime_ns == 0 || o.mtime_ns > now_unix_ns - kGarbageGraceNs) g.young = true;
  }
  GarbageStats stats;
  for (const auto& [name, g] : groups) {
    if (g.young) continue;
    for (const std::string& key : g.keys) {
      Status s = store.Delete(key);
      if (s.ok()) ++stats.objects_removed;
      // A failed delete leaves garbage that the next writer retries; never fails the writer.
      s.IgnoreError();
    }
    ++stats.segments_removed;
  }
  return stats;
}

int64_t WallClockNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace dataset

Result<std::vector<uint64_t>> ListDatasetVersions(ObjectStore& store, std::string_view prefix) {
  GRANARY_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, dataset::ListVersions(store, prefix));
  if (versions.empty()) {
    return NotFoundError("no dataset under \"" + std::string(prefix) + "\" in " + store.url() +
                         " (no manifest-* object)");
  }
  return versions;
}

}  // namespace granary
