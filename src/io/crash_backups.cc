#include "io/crash_backups.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <utility>

namespace granary {
namespace {

// Copies the bytes of `from` into a new file `to` (for backups across file systems).
Status CopyFileContents(const std::string& from, const std::string& to) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return ErrnoToStatus(errno, "open " + from + " for a crash backup");
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    int err = errno;
    ::close(in);
    return ErrnoToStatus(err, "create crash backup " + to);
  }
  Status status;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(in, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) status = ErrnoToStatus(errno, "read " + from + " for a crash backup");
    if (n <= 0) break;
    for (ssize_t done = 0; done < n;) {
      ssize_t w = ::write(out, buf + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        status = ErrnoToStatus(errno, "write crash backup " + to);
        break;
      }
      done += w;
    }
    if (!status.ok()) break;
  }
  ::close(in);
  ::close(out);
  return status;
}

}  // namespace

CrashBackups::~CrashBackups() {
  if (owns_dir_) ::rmdir(dir_.c_str());
}

Status CrashBackups::EnsureDir() {
  if (!dir_.empty()) {
    if (::mkdir(dir_.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoToStatus(errno, "create crash backup directory " + dir_);
    }
    return Status::OK();
  }
  const char* root = std::getenv("GRANARY_TEST_TMPDIR");
  if (root == nullptr || *root == '\0') root = std::getenv("TMPDIR");
  if (root == nullptr || *root == '\0') root = "/tmp";
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  std::string templ = std::string(root) + "/granary-fault-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) {
    return ErrnoToStatus(errno, "create crash backup directory under " + std::string(root));
  }
  dir_ = std::move(templ);
  owns_dir_ = true;
  return Status::OK();
}

Result<std::string> CrashBackups::Save(const std::string& path) {
  GRANARY_RETURN_IF_ERROR(EnsureDir());
  std::string backup = dir_ + "/" + std::to_string(next_id_++);
  if (::link(path.c_str(), backup.c_str()) == 0) return backup;
  if (errno != EXDEV) return ErrnoToStatus(errno, "crash backup: link " + path + " to " + backup);
  GRANARY_RETURN_IF_ERROR(CopyFileContents(path, backup));
  return backup;
}

Status CrashBackups::Restore(const std::string& backup, const std::string& to) {
  if (::rename(backup.c_str(), to.c_str()) == 0) return Status::OK();
  if (errno != EXDEV) return ErrnoToStatus(errno, "crash: restore " + to + " from " + backup);
  GRANARY_RETURN_IF_ERROR(CopyFileContents(backup, to));
  Discard(backup);
  return Status::OK();
}

void CrashBackups::Discard(const std::string& backup) { ::unlink(backup.c_str()); }

}  // namespace granary
