// FileSystem: the file operations the local store (and later the SSD cache tier) perform, behind
// one interface so tests can inject faults (leveldb's Env, narrowed to what we use).
//
//   PosixFileSystem()        the real thing; large transfers go through an IoEngine.
//   FaultInjectingFileSystem (fault_injection.h) wraps another FileSystem and can fail the Nth
//                            write or fsync with a chosen errno, make writes short, and simulate
//                            a crash that drops everything not yet made durable.
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

// A PosixFileSystem whose large transfers use `engine` (not owned; must outlive it).
std::unique_ptr<FileSystem> NewPosixFileSystem(IoEngine* engine);

}  // namespace granary

#endif  // GRANARY_IO_FILE_SYSTEM_H_
