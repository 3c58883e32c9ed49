// LocalRoot: the directory a LocalStore owns, and the file operations every LocalStore piece
// shares (safe opens beneath the root, temp files, publication by rename, listing). Internal to
// src/store/local; see local_store.h for the promises and docs/formats/local_store.md for the
// layout.
//
// Thread-safe: all methods may be called concurrently; shared by the store and its writers
// through a shared_ptr.
#ifndef GRANARY_STORE_LOCAL_LOCAL_ROOT_H_
#define GRANARY_STORE_LOCAL_LOCAL_ROOT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/thread_pool.h"
#include "granary/io.h"
#include "granary/status.h"
#include "granary/store.h"
#include "io/file_system.h"

namespace granary {

// Reserved names under the root.
inline constexpr std::string_view kReservedDir = ".granary";
inline constexpr std::string_view kTmpDir = ".granary/tmp";
inline constexpr std::string_view kFormatFile = ".granary/format";
// Content of .granary/format: magic and layout version.
inline constexpr std::string_view kFormatLine = "granary-local-store 1\n";
inline constexpr std::string_view kTmpSuffix = ".tmp";

// An object opened for reading.
struct OpenedObject {
  File file;
  uint64_t size_bytes = 0;
  int64_t mtime_ns = 0;
  uint64_t inode = 0;
};

// A temp file under .granary/tmp, open for writing.
struct TempFile {
  File file;
  std::string path;
  bool direct = false;
};

// The parts of a temp file's name "<pid>-<pidns>-<random>.tmp".
struct TempName {
  int64_t pid = 0;
  uint64_t pid_namespace = 0;
};
// Parses a temp file name; false if `name` is not one.
bool ParseTempName(std::string_view name, TempName* out);

class LocalRoot {
 public:
  // See NewLocalStore. `root` must be absolute and normalized.
  static Result<std::shared_ptr<LocalRoot>> Open(std::string root, const StoreOptions& options,
                                                 FileSystem* fs);
  ~LocalRoot();
  LocalRoot(const LocalRoot&) = delete;
  LocalRoot& operator=(const LocalRoot&) = delete;

  const std::string& root() const { return root_; }
  const StoreOptions& options() const { return options_; }
  FileSystem* fs() const { return fs_; }
  std::string url() const { return "file://" + root_; }
  // <root>/<key>.
  std::string PathOf(std::string_view key) const;
  // "key 'k' (<root>/k)": the context every error about `key` carries.
  std::string Describe(std::string_view key) const;

  // Opens `key` (already validated) for reading through FileSystem::OpenBeneath, so resolving
  // it never leaves the root; O_DIRECT when `direct` and the file system allows it. NotFound if
  // absent, a directory or not a regular file; PermissionDenied if resolving it would leave the
  // root or pass a magic link. Errors name the key and its path.
  Result<OpenedObject> OpenObject(std::string_view key, bool direct) const;
  // A second descriptor with O_DIRECT for an object opened by OpenObject; fails (and the caller
  // falls back to buffered reads) if the key now names another file.
  Result<File> ReopenDirect(std::string_view key, const OpenedObject& object) const;

  // Creates a fresh temp file; O_DIRECT when `direct` and supported.
  Result<TempFile> CreateTemp(bool direct) const;
  // Removes a temp file, ignoring errors (used on failure paths).
  void DiscardTemp(TempFile& temp) const;

  // Writes `data` to a temp file, syncs it and publishes it under `key` (see Publish).
  Status WriteObject(std::string_view key, std::span<const std::byte> data, bool no_replace);
  // Renames the synced temp file `temp_path` to `key`, creating parent directories, then syncs
  // the directories involved. With `no_replace`, AlreadyExists if the key exists. The temp file
  // is consumed on success and left in place on failure.
  Status Publish(std::string_view key, const std::string& temp_path, bool no_replace);

  // Removes `key`; NotFound if absent. Prunes emptied parent directories.
  Status Remove(std::string_view key);

  // Runs writer parts in the background.
  ThreadPool& background() { return background_; }
  // A pool of staging buffers of `part_bytes` shared by writers with that part size.
  Result<std::shared_ptr<BufferPool>> StagingPool(size_t part_bytes);
  // Aligned ~4 MiB buffers for O_DIRECT reads whose destination memory is not aligned like the
  // file offset (GetMany reads into them, then copies). Bounded: 32 buffers, allocated lazily.
  Result<std::shared_ptr<BufferPool>> BouncePool();

 private:
  LocalRoot(std::string root, const StoreOptions& options, FileSystem* fs, File root_dir);

  Status CheckFormat();
  void RemoveDeadTemps();
  // Makes sure every parent component of `key` is a real directory, creating missing ones;
  // appends the directories whose entries changed (and so need an fsync) to `dirty_dirs`.
  Status PrepareParents(std::string_view key, std::vector<std::string>* dirty_dirs);
  // The error for a failed OpenBeneath of `key`, in the store's terms.
  Status OpenError(std::string_view key, const Status& status) const;
  // Makes the target path free for a rename: an empty leftover directory is removed; a
  // directory holding other keys is FailedPrecondition.
  Status ClearDirectoryAtTarget(std::string_view key);
  Status Conflict(std::string_view key, std::string_view other, std::string_view why) const;

  const std::string root_;
  const StoreOptions options_;
  FileSystem* const fs_;
  const File root_dir_;  // from FileSystem::OpenRoot; every read opens beneath it
  ThreadPool background_;

  std::mutex pools_mu_;
  std::map<size_t, std::shared_ptr<BufferPool>> pools_;  // GUARDED_BY(pools_mu_)
  std::shared_ptr<BufferPool> bounce_pool_;              // GUARDED_BY(pools_mu_)
};

}  // namespace granary

#endif  // GRANARY_STORE_LOCAL_LOCAL_ROOT_H_
