// FileSystem: the file operations the local store (and later the SSD cache tier) perform, behind
// one interface so tests can inject faults (leveldb's Env, narrowed to what we use).
//
//   PosixFileSystem()        the real thing; large transfers go through an IoEngine.
//   FaultInjectingFileSystem (fault_injection.h) wraps another FileSystem and can fail the Nth
//                            read, write or fsync with a chosen errno, corrupt the Nth read, make
//                            writes short, and simulate a crash that drops everything not yet
//                            made durable.
//
// Thread-safe: every method may be called concurrently.
#ifndef GRANARY_IO_FILE_SYSTEM_H_
#define GRANARY_IO_FILE_SYSTEM_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "granary/io.h"
#include "granary/status.h"

namespace granary {

struct DirEntry {
  std::string name;
  bool is_directory = false;
  uint64_t size_bytes = 0;
  int64_t mtime_ns = 0;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // The process-wide POSIX file system (uses IoEngine::Default()).
  static FileSystem& Default();

  virtual Result<File> Open(std::string_view path, const File::OpenOptions& options) = 0;

  // Opens the directory `path` as a root for OpenBeneath: an O_PATH descriptor (no read
  // access is needed or checked), whose File::path() is `path`. Symlinks in `path` itself are
  // followed. NotFound if absent, FailedPrecondition if not a directory (sys_errno ENOTDIR).
  virtual Result<File> OpenRoot(std::string_view path) = 0;
  // Opens the regular file `relative` beneath `root` (a File from OpenRoot) so that resolving
  // it can never leave the root, even while other processes change the tree: a ".." climbing
  // above the root, an absolute symlink, a relative symlink leading outside, or a magic link
  // (/proc/<pid>/fd/...) anywhere on the way is PermissionDenied (sys_errno EXDEV or ELOOP; a
  // symlink loop is too). Symlinks that stay inside the root are followed. Where openat2(2) is
  // unavailable (Linux < 5.6) resolution walks one component at a time and is stricter: every
  // symlink and every ".." is refused. Opening never blocks on a FIFO. A directory is
  // FailedPrecondition with sys_errno EISDIR, any other non-regular file FailedPrecondition with
  // sys_errno 0. Other errors are as Open's (NotFound; O_DIRECT where the file system lacks it:
  // InvalidArgument with sys_errno EINVAL). An empty or absolute `relative` is InvalidArgument.
  // The File's path() is root.path() + "/" + relative, and messages name it. The root is not
  // resolved again (one openat2 per call), so callers keep it open for all their opens.
  virtual Result<File> OpenBeneath(const File& root, std::string_view relative,
                                   const File::OpenOptions& options) = 0;

  // Reads up to dest.size() bytes at `offset`; returns bytes read (short only at EOF). Any
  // offset/length/alignment works, also on O_DIRECT files.
  virtual Result<size_t> ReadAt(const File& file, uint64_t offset,
                                std::span<std::byte> dest) = 0;
  // Batched reads: many in flight. Each request's result is filled as IoEngine::Run does.
  virtual Status ReadMany(std::span<IoRequest> requests) = 0;
  // Writes all of `src` at `offset` (see IoEngine::WriteAt for O_DIRECT rules).
  virtual Status WriteAt(const File& file, uint64_t offset, std::span<const std::byte> src) = 0;

  virtual Status Sync(const File& file) = 0;          // fsync
  virtual Status SyncDir(std::string_view path) = 0;  // fsync of a directory
  virtual Status Truncate(const File& file, uint64_t size_bytes) = 0;

  // rename(2): atomically replaces `to`.
  virtual Status Rename(std::string_view from, std::string_view to) = 0;
  // Atomically moves `from` to `to` only if `to` does not exist; AlreadyExists otherwise
  // (renameat2 RENAME_NOREPLACE, or link+unlink where that is unsupported).
  virtual Status RenameNoReplace(std::string_view from, std::string_view to) = 0;
  virtual Status Unlink(std::string_view path) = 0;
  // mkdir -p; OK if it exists.
  virtual Status CreateDirs(std::string_view path) = 0;
  virtual Status RemoveDir(std::string_view path) = 0;
  // lstat; NotFound if absent.
  virtual Result<DirEntry> Stat(std::string_view path) = 0;
  // Entries of a directory except "." and "..", unsorted. Symlinks are reported as files with
  // is_directory=false and never followed.
  virtual Result<std::vector<DirEntry>> ListDir(std::string_view path) = 0;
};

// A PosixFileSystem whose large transfers use `engine` (not owned; must outlive it), or the
// process's IoEngine::Default() when null.
std::unique_ptr<FileSystem> NewPosixFileSystem(IoEngine* engine);

}  // namespace granary

#endif  // GRANARY_IO_FILE_SYSTEM_H_
