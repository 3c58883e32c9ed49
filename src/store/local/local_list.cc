#include "store/local/local_list.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace granary {
namespace {

class TreeWalker {
 public:
  TreeWalker(FileSystem* fs, const std::string& root, std::string_view prefix,
             std::string_view start_after, size_t max_objects)
      : fs_(fs), root_(root), prefix_(prefix), start_after_(start_after), limit_(max_objects) {}

  // Walks the directory holding keys that start with `dir_key` ("" or "a/b/").
  Status Walk(const std::string& dir_key) {
    std::string path = root_;
    if (path.back() != '/') path += '/';
    path += dir_key;
    Result<std::vector<DirEntry>> listed = fs_->ListDir(path);
    if (!listed.ok()) {
      if (listed.status().code() == StatusCode::kNotFound) return Status::OK();
      return listed.status().WithContext("listing " + path);
    }
    std::vector<DirEntry>& entries = *listed;
    // Sort as the keys they lead to sort: a directory "d" contributes keys "d/...".
    for (DirEntry& entry : entries) {
      if (entry.is_directory) entry.name += '/';
    }
    std::sort(entries.begin(), entries.end(),
              [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
    std::string full;
    for (const DirEntry& entry : entries) {
      if (entry.name.starts_with(".granary") || entry.name == "./" || entry.name == "../") {
        continue;
      }
      full = dir_key + entry.name;
      if (entry.is_directory) {
        // Every key below starts with `full`: skip unless that can match the prefix...
        if (!full.starts_with(prefix_) && !prefix_.starts_with(full)) continue;
        // ...and unless all of them sort at or before start_after.
        if (start_after_ > full && !start_after_.starts_with(full)) continue;
        GRANARY_RETURN_IF_ERROR(Walk(full));
      } else {
        if (!full.starts_with(prefix_) || full <= start_after_) continue;
        objects_.push_back(ObjectInfo{full, entry.size_bytes, entry.mtime_ns});
      }
      if (objects_.size() > limit_) return Status::OK();  // one extra: is there a next page?
    }
    return Status::OK();
  }

  ObjectPage TakePage() {
    ObjectPage page;
    if (objects_.size() > limit_) {
      objects_.resize(limit_);
      page.next_start_after = objects_.back().key;
    }
    page.objects = std::move(objects_);
    return page;
  }

 private:
  FileSystem* fs_;
  const std::string& root_;
  std::string_view prefix_;
  std::string_view start_after_;
  size_t limit_;
  std::vector<ObjectInfo> objects_;
};

}  // namespace

Result<ObjectPage> ListLocalTree(FileSystem* fs, const std::string& root,
                                 std::string_view prefix, std::string_view start_after,
                                 size_t max_objects) {
  if (max_objects == 0) {
    return InvalidArgumentError("listing file://" + root + ": max_objects must be at least 1");
  }
  TreeWalker walker(fs, root, prefix, start_after, max_objects);
  GRANARY_RETURN_IF_ERROR(walker.Walk(""));
  return walker.TakePage();
}

}  // namespace granary
