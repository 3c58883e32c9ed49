// File and SyncDirectory.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <utility>

#include "granary/io.h"

namespace granary {

File::~File() {
  if (fd_ >= 0) ::close(fd_);  // errors ignored by contract; Close() reports them
}

File::File(File&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

Result<File> File::Open(std::string_view path, const OpenOptions& options) {
  int flags = O_CLOEXEC;
  switch (options.mode) {
    case Mode::kRead: flags |= O_RDONLY; break;
    case Mode::kReadWrite: flags |= O_RDWR; break;
    case Mode::kCreate: flags |= O_RDWR | O_CREAT; break;
    case Mode::kTruncate: flags |= O_RDWR | O_CREAT | O_TRUNC; break;
    case Mode::kCreateNew: flags |= O_RDWR | O_CREAT | O_EXCL; break;
  }
  if (options.direct) flags |= O_DIRECT;
  std::string path_str(path);
  int fd;
  do {
    fd = ::open(path_str.c_str(), flags, options.permissions);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    return ErrnoToStatus(errno, std::string("open ") + path_str +
                                    (options.direct ? " (O_DIRECT)" : ""));
  }
  return File(fd, std::move(path_str));
}

Result<uint64_t> File::Size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return ErrnoToStatus(errno, "fstat " + path_);
  return static_cast<uint64_t>(st.st_size);
}

Status File::Truncate(uint64_t size_bytes) {
  if (::ftruncate(fd_, static_cast<off_t>(size_bytes)) != 0) {
    return ErrnoToStatus(errno, "truncate " + path_ + " to " + std::to_string(size_bytes));
  }
  return Status::OK();
}

Status File::Sync() {
  if (::fsync(fd_) != 0) return ErrnoToStatus(errno, "fsync " + path_);
  return Status::OK();
}

Status File::DataSync() {
  if (::fdatasync(fd_) != 0) return ErrnoToStatus(errno, "fdatasync " + path_);
  return Status::OK();
}

Status File::Close() {
  if (fd_ < 0) return Status::OK();
  // Linux releases the descriptor even when close fails, so never retry it.
  int rc = ::close(std::exchange(fd_, -1));
  if (rc != 0 && errno != EINTR) return ErrnoToStatus(errno, "close " + path_);
  return Status::OK();
}

Status SyncDirectory(std::string_view path) {
  std::string path_str(path);
  int fd = ::open(path_str.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "open directory " + path_str);
  Status status;
  if (::fsync(fd) != 0) status = ErrnoToStatus(errno, "fsync directory " + path_str);
  ::close(fd);
  return status;
}

}  // namespace granary
