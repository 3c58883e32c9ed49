// CrashBackups: the private directory where FaultInjectingFileSystem keeps files that a not yet
// durable rename replaced or a not yet durable unlink removed, so that Crash() can bring them
// back. Internal to src/io.
//
// Not thread-safe: the owner serializes calls (FaultInjectingFileSystem holds its mutex).
#ifndef GRANARY_IO_CRASH_BACKUPS_H_
#define GRANARY_IO_CRASH_BACKUPS_H_

#include <cstdint>
#include <string>

#include "granary/status.h"

namespace granary {

class CrashBackups {
 public:
  // Backups live in `dir` (created on first use), which should be on the same file system as
  // the files backed up (hard links; otherwise files are copied). Empty: a fresh directory
  // under $GRANARY_TEST_TMPDIR, $TMPDIR or /tmp, created on first use and removed by the
  // destructor (once empty).
  explicit CrashBackups(std::string dir) : dir_(std::move(dir)) {}
  ~CrashBackups();
  CrashBackups(const CrashBackups&) = delete;
  CrashBackups& operator=(const CrashBackups&) = delete;

  // Hard-links (or copies) the file `path` into the directory; returns the backup's path.
  // Errors name both paths.
  Result<std::string> Save(const std::string& path);
  // Moves `backup` back to `to`, replacing it (rename; a copy across file systems).
  static Status Restore(const std::string& backup, const std::string& to);
  // Deletes a backup that is no longer needed; errors are ignored (a leftover is harmless).
  static void Discard(const std::string& backup);

 private:
  Status EnsureDir();

  std::string dir_;
  bool owns_dir_ = false;
  uint64_t next_id_ = 0;
};

}  // namespace granary

#endif  // GRANARY_IO_CRASH_BACKUPS_H_
