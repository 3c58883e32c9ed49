#include "io/open_beneath.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <vector>

namespace granary {
namespace {

// openat2 fails with EAGAIN when a concurrent rename raced its ".." checks; retrying is the
// documented answer. Bounded so a pathological tree cannot spin us forever.
constexpr int kOpenat2Attempts = 64;

// Set once openat2 turns out to be missing (ENOSYS); from then on every open walks.
std::atomic<bool> openat2_missing{false};

int FlagsFor(const File::OpenOptions& options) {
  // O_NONBLOCK so a FIFO planted beneath the root cannot hang the open; cleared once the file
  // is known to be regular.
  int flags = O_CLOEXEC | O_NONBLOCK;
  switch (options.mode) {
    case File::Mode::kRead: flags |= O_RDONLY; break;
    case File::Mode::kReadWrite: flags |= O_RDWR; break;
    case File::Mode::kCreate: flags |= O_RDWR | O_CREAT; break;
    case File::Mode::kTruncate: flags |= O_RDWR | O_CREAT | O_TRUNC; break;
    case File::Mode::kCreateNew: flags |= O_RDWR | O_CREAT | O_EXCL; break;
  }
  if (options.direct) flags |= O_DIRECT;
  return flags;
}

// openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS). The descriptor, or -1 and errno (ENOSYS:
// the kernel has no openat2).
int Openat2Beneath(int root_fd, const std::string& relative, int flags, mode_t mode) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags);
  if ((flags & O_CREAT) != 0) how.mode = mode;  // openat2 rejects a mode without O_CREAT
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  for (int attempt = 0; attempt < kOpenat2Attempts; ++attempt) {
    long fd = ::syscall(SYS_openat2, root_fd, relative.c_str(), &how, sizeof(how));
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != EAGAIN && errno != EINTR) break;
  }
  return -1;
}

// The walk for kernels without openat2: one openat per component, each with O_NOFOLLOW, so no
// symlink is ever followed (ELOOP) and ".." is refused outright (EXDEV). Empty and "."
// components are skipped. The descriptor, or -1 and errno.
int WalkBeneath(int root_fd, std::string_view relative, int flags, mode_t mode) {
  std::vector<std::string> parts;
  for (size_t begin = 0; begin <= relative.size();) {
    size_t slash = relative.find('/', begin);
    if (slash == std::string_view::npos) slash = relative.size();
    std::string_view part = relative.substr(begin, slash - begin);
    if (part == "..") {
      errno = EXDEV;
      return -1;
    }
    if (!part.empty() && part != ".") parts.emplace_back(part);
    begin = slash + 1;
  }
  if (parts.empty()) parts.emplace_back(".");  // the root itself
  // "a/" must name a directory, as it does for openat2.
  if (relative.back() == '/') flags |= O_DIRECTORY;

  int dir = root_fd;
  auto close_dir = [&] {
    if (dir != root_fd) ::close(dir);
  };
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    int next = ::openat(dir, parts[i].c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      int err = errno;
      // O_NOFOLLOW | O_DIRECTORY on a symlink says ENOTDIR; report it as the refused symlink.
      struct stat st;
      if (err == ENOTDIR && ::fstatat(dir, parts[i].c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          S_ISLNK(st.st_mode)) {
        err = ELOOP;
      }
      close_dir();
      errno = err;
      return -1;
    }
    close_dir();
    dir = next;
  }
  int fd = ::openat(dir, parts.back().c_str(), flags | O_NOFOLLOW, mode);
  int err = errno;
  close_dir();
  errno = err;
  return fd;
}

}  // namespace

Result<File> OpenRootDirectory(std::string_view path) {
  std::string p(path);
  int fd = ::open(p.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOTDIR) {
      return Status(StatusCode::kFailedPrecondition,
                    "open root directory " + p + ": not a directory", err);
    }
    return ErrnoToStatus(err, "open root directory " + p);
  }
  return File(fd, std::move(p));
}

Result<File> OpenFileBeneath(const File& root, std::string_view relative,
                             const File::OpenOptions& options, BeneathResolution resolution) {
  std::string path = root.path();
  if (path.empty() || path.back() != '/') path += '/';
  path += relative;
  const std::string context = "open " + path + (options.direct ? " (O_DIRECT)" : "");
  if (relative.empty()) return InvalidArgumentError(context + ": empty relative path");
  if (relative.front() == '/') {
    return InvalidArgumentError(context + ": '" + std::string(relative) +
                                "' is absolute; expected a path relative to " + root.path());
  }
  if (!root.is_open()) return InvalidArgumentError(context + ": the root is not open");

  const int flags = FlagsFor(options);
  const mode_t mode = static_cast<mode_t>(options.permissions);
  bool walk = resolution == BeneathResolution::kWalk ||
              openat2_missing.load(std::memory_order_relaxed);
  int fd = -1;
  if (!walk) {
    fd = Openat2Beneath(root.fd(), std::string(relative), flags, mode);
    if (fd < 0 && errno == ENOSYS) {
      openat2_missing.store(true, std::memory_order_relaxed);
      walk = true;
    }
  }
  if (walk) fd = WalkBeneath(root.fd(), relative, flags, mode);
  if (fd < 0) {
    const int err = errno;
    if (err == EXDEV || err == ELOOP) {
      const std::string why =
          walk ? "no symlink or '..' is followed beneath " + root.path() + " (no openat2)"
               : "resolving it would leave " + root.path() + ", pass a magic link, or loop";
      return Status(StatusCode::kPermissionDenied, context + ": refused: " + why, err);
    }
    if (err == EISDIR) {
      return Status(StatusCode::kFailedPrecondition, context + ": is a directory", err);
    }
    return ErrnoToStatus(err, context);
  }
  File file(fd, std::move(path));
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, "fstat " + file.path());
  if (S_ISDIR(st.st_mode)) {
    return Status(StatusCode::kFailedPrecondition, context + ": is a directory", EISDIR);
  }
  if (!S_ISREG(st.st_mode)) {
    return FailedPreconditionError(context + ": not a regular file");
  }
  const int status_flags = ::fcntl(fd, F_GETFL);
  if (status_flags < 0 || ::fcntl(fd, F_SETFL, status_flags & ~O_NONBLOCK) != 0) {
    return ErrnoToStatus(errno, "fcntl " + file.path());
  }
  return file;
}

}  // namespace granary
