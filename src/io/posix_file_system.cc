// PosixFileSystem: FileSystem on POSIX calls, with transfers through an IoEngine.
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "io/file_system.h"
#include "io/open_beneath.h"

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif

namespace granary {
namespace {

DirEntry EntryFromStat(std::string name, const struct stat& st) {
  DirEntry entry;
  entry.name = std::move(name);
  entry.is_directory = S_ISDIR(st.st_mode);
  entry.size_bytes = static_cast<uint64_t>(st.st_size);
  entry.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return entry;
}

std::string BaseName(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

// Thread-safe: stateless apart from the (thread-safe) engine.
class PosixFileSystem final : public FileSystem {
 public:
  explicit PosixFileSystem(IoEngine* engine) : engine_(engine) {}

  Result<File> Open(std::string_view path, const File::OpenOptions& options) override {
    return File::Open(path, options);
  }

  Result<File> OpenRoot(std::string_view path) override { return OpenRootDirectory(path); }

  Result<File> OpenBeneath(const File& root, std::string_view relative,
                           const File::OpenOptions& options) override {
    return OpenFileBeneath(root, relative, options);
  }

  Result<size_t> ReadAt(const File& file, uint64_t offset, std::span<std::byte> dest) override {
    return engine().ReadAt(file, offset, dest);
  }

  Status ReadMany(std::span<IoRequest> requests) override { return engine().Run(requests); }

  Status WriteAt(const File& file, uint64_t offset, std::span<const std::byte> src) override {
    return engine().WriteAt(file, offset, src);
  }

  Status Sync(const File& file) override {
    if (::fsync(file.fd()) != 0) return ErrnoToStatus(errno, "fsync " + file.path());
    return Status::OK();
  }

  Status SyncDir(std::string_view path) override { return SyncDirectory(path); }

  Status Truncate(const File& file, uint64_t size_bytes) override {
    if (::ftruncate(file.fd(), static_cast<off_t>(size_bytes)) != 0) {
      return ErrnoToStatus(errno, "truncate " + file.path() + " to " + std::to_string(size_bytes));
    }
    return Status::OK();
  }

  Status Rename(std::string_view from, std::string_view to) override {
    std::string f(from), t(to);
    if (::rename(f.c_str(), t.c_str()) != 0) {
      return ErrnoToStatus(errno, "rename " + f + " to " + t);
    }
    return Status::OK();
  }

  Status RenameNoReplace(std::string_view from, std::string_view to) override {
    std::string f(from), t(to);
    if (::syscall(SYS_renameat2, AT_FDCWD, f.c_str(), AT_FDCWD, t.c_str(), RENAME_NOREPLACE) ==
        0) {
      return Status::OK();
    }
    int err = errno;
    if (err != EINVAL && err != ENOSYS) {
      return ErrnoToStatus(err, "rename (no replace) " + f + " to " + t);
    }
    // The file system does not support RENAME_NOREPLACE: link() fails with EEXIST when the
    // target exists, which gives the same create-only guarantee for files.
    if (::link(f.c_str(), t.c_str()) != 0) {
      return ErrnoToStatus(errno, "link " + f + " to " + t + " (rename without replace)");
    }
    if (::unlink(f.c_str()) != 0) {
      return ErrnoToStatus(errno, "unlink " + f + " after linking it to " + t);
    }
    return Status::OK();
  }

  Status Unlink(std::string_view path) override {
    std::string p(path);
    if (::unlink(p.c_str()) != 0) return ErrnoToStatus(errno, "unlink " + p);
    return Status::OK();
  }

  Status CreateDirs(std::string_view path) override {
    std::string p(path);
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    if (p.empty()) return InvalidArgumentError("CreateDirs: empty path");
    // Create each prefix in turn; existing ones are fine as long as they are directories.
    for (size_t i = 1; i <= p.size(); ++i) {
      if (i != p.size() && p[i] != '/') continue;
      std::string prefix = p.substr(0, i);
      if (::mkdir(prefix.c_str(), 0755) == 0) continue;
      int err = errno;
      if (err == EEXIST) {
        struct stat st;
        if (::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
        return FailedPreconditionError("create directory " + prefix +
                                       ": exists and is not a directory");
      }
      return ErrnoToStatus(err, "create directory " + prefix);
    }
    return Status::OK();
  }

  Status RemoveDir(std::string_view path) override {
    std::string p(path);
    if (::rmdir(p.c_str()) != 0) return ErrnoToStatus(errno, "remove directory " + p);
    return Status::OK();
  }

  Result<DirEntry> Stat(std::string_view path) override {
    std::string p(path);
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat " + p);
    return EntryFromStat(BaseName(p), st);
  }

  Result<std::vector<DirEntry>> ListDir(std::string_view path) override {
    std::string p(path);
    int dir_fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) return ErrnoToStatus(errno, "list directory " + p);
    DIR* dir = ::fdopendir(dir_fd);
    if (dir == nullptr) {
      int err = errno;
      ::close(dir_fd);
      return ErrnoToStatus(err, "list directory " + p);
    }
    std::vector<DirEntry> entries;
    Status status;
    for (;;) {
      errno = 0;
      struct dirent* de = ::readdir(dir);
      if (de == nullptr) {
        if (errno != 0) status = ErrnoToStatus(errno, "list directory " + p);
        break;
      }
      std::string_view name(de->d_name);
      if (name == "." || name == "..") continue;
      struct stat st;
      if (::fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // removed since readdir saw it
        status = ErrnoToStatus(errno, "stat " + p + "/" + std::string(name));
        break;
      }
      entries.push_back(EntryFromStat(std::string(name), st));
    }
    ::closedir(dir);  // also closes dir_fd
    if (!status.ok()) return status;
    return entries;
  }

 private:
  // The engine, or null for the process's default engine (looked up per call, so a forked
  // child uses its own rather than the parent's ring and threads).
  IoEngine& engine() const { return engine_ != nullptr ? *engine_ : IoEngine::Default(); }
  IoEngine* const engine_;
};

}  // namespace

std::unique_ptr<FileSystem> NewPosixFileSystem(IoEngine* engine) {
  return std::make_unique<PosixFileSystem>(engine);
}

FileSystem& FileSystem::Default() {
  // Never destroyed, like the engine it uses.
  static FileSystem* const fs = NewPosixFileSystem(nullptr).release();
  return *fs;
}

}  // namespace granary
