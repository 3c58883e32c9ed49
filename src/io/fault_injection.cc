// FaultInjectingFileSystem (see fault_injection.h for the fault and crash model).
#include "io/fault_injection.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>

namespace granary {
namespace {

std::string Normalize(std::string_view path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(std::filesystem::path(path), ec);
  if (ec) p = std::filesystem::path(path);
  std::string s = p.lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}

std::string Parent(const std::string& normalized) {
  return std::filesystem::path(normalized).parent_path().string();
}

bool IsUnder(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         path[dir.size()] == '/';
}

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

// Moves a backup back to `to` (rename; copy when they sit on different file systems).
Status RestoreBackup(const std::string& backup, const std::string& to) {
  if (::rename(backup.c_str(), to.c_str()) == 0) return Status::OK();
  if (errno != EXDEV) return ErrnoToStatus(errno, "crash: restore " + to + " from " + backup);
  GRANARY_RETURN_IF_ERROR(CopyFileContents(backup, to));
  ::unlink(backup.c_str());
  return Status::OK();
}

void KeepFirst(Status* first, Status s) {
  if (first->ok() && !s.ok()) *first = std::move(s);
}

}  // namespace

FaultInjectingFileSystem::FaultInjectingFileSystem(FileSystem* base, std::string backup_dir)
    : base_(base), backup_dir_(std::move(backup_dir)) {}

FaultInjectingFileSystem::~FaultInjectingFileSystem() {
  for (const PendingOp& op : pending_) {
    if (!op.backup.empty()) ::unlink(op.backup.c_str());
  }
  if (owns_backup_dir_) ::rmdir(backup_dir_.c_str());
}

// --- Faults ------------------------------------------------------------------------------------

void FaultInjectingFileSystem::FailNthWrite(uint64_t n, int sys_errno) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_write_countdown_ = n;
  fail_write_errno_ = sys_errno;
}

void FaultInjectingFileSystem::FailNthSync(uint64_t n, int sys_errno) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_sync_countdown_ = n;
  fail_sync_errno_ = sys_errno;
}

void FaultInjectingFileSystem::SetDiskFullAfter(uint64_t free_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  disk_free_bytes_ = free_bytes;
}

void FaultInjectingFileSystem::ClearDiskFull() {
  std::lock_guard<std::mutex> lock(mu_);
  disk_free_bytes_.reset();
}

void FaultInjectingFileSystem::ShortWrites(bool enable, int sys_errno) {
  std::lock_guard<std::mutex> lock(mu_);
  short_writes_ = enable;
  short_write_errno_ = sys_errno;
}

void FaultInjectingFileSystem::ClearFaults() {
  std::lock_guard<std::mutex> lock(mu_);
  fail_write_countdown_ = 0;
  fail_sync_countdown_ = 0;
  disk_free_bytes_.reset();
  short_writes_ = false;
}

uint64_t FaultInjectingFileSystem::writes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return writes_;
}

uint64_t FaultInjectingFileSystem::syncs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return syncs_;
}

uint64_t FaultInjectingFileSystem::bytes_written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_written_;
}

// --- Data --------------------------------------------------------------------------------------

Result<File> FaultInjectingFileSystem::Open(std::string_view path,
                                            const File::OpenOptions& options) {
  const bool writable = options.mode != File::Mode::kRead;
  const bool creating = options.mode == File::Mode::kCreate ||
                        options.mode == File::Mode::kTruncate ||
                        options.mode == File::Mode::kCreateNew;
  std::lock_guard<std::mutex> lock(mu_);
  struct stat st;
  const bool existed = ::lstat(std::string(path).c_str(), &st) == 0;
  GRANARY_ASSIGN_OR_RETURN(File file, base_->Open(path, options));
  if (!writable) return file;
  if (::fstat(file.fd(), &st) != 0) return ErrnoToStatus(errno, "fstat " + file.path());
  const std::string p = Normalize(path);
  auto it = files_.find(p);
  if (creating && !existed) {
    files_[p] = FileState{st.st_dev, st.st_ino, /*synced=*/false, 0};
    AddPending(PendingOp{PendingOp::Kind::kCreate, "", p, "", std::nullopt, {Parent(p)}});
  } else if (it == files_.end() || it->second.ino != st.st_ino || it->second.dev != st.st_dev) {
    // First sight of a file that was already there: what it holds now counts as durable.
    files_[p] = FileState{st.st_dev, st.st_ino, /*synced=*/true, static_cast<uint64_t>(st.st_size)};
  }
  return file;
}

Result<size_t> FaultInjectingFileSystem::ReadAt(const File& file, uint64_t offset,
                                                std::span<std::byte> dest) {
  return base_->ReadAt(file, offset, dest);
}

Status FaultInjectingFileSystem::ReadMany(std::span<IoRequest> requests) {
  return base_->ReadMany(requests);
}

void FaultInjectingFileSystem::PlanWrite(size_t length, size_t* write_bytes, int* fail_errno) {
  ++writes_;
  *write_bytes = length;
  *fail_errno = 0;
  if (fail_write_countdown_ > 0 && --fail_write_countdown_ == 0) {
    *write_bytes = 0;
    *fail_errno = fail_write_errno_;
  } else if (short_writes_) {
    *write_bytes = length / 2;
    *fail_errno = short_write_errno_;
  }
  if (disk_free_bytes_.has_value()) {
    if (*write_bytes > *disk_free_bytes_) {
      *write_bytes = static_cast<size_t>(*disk_free_bytes_);
      if (*fail_errno == 0) *fail_errno = ENOSPC;
    }
    *disk_free_bytes_ -= *write_bytes;
  }
  bytes_written_ += *write_bytes;
}

Status FaultInjectingFileSystem::WriteAt(const File& file, uint64_t offset,
                                         std::span<const std::byte> src) {
  size_t write_bytes;
  int fail_errno;
  {
    std::lock_guard<std::mutex> lock(mu_);
    PlanWrite(src.size(), &write_bytes, &fail_errno);
  }
  if (write_bytes > 0) {
    GRANARY_RETURN_IF_ERROR(base_->WriteAt(file, offset, src.first(write_bytes)));
  }
  if (fail_errno != 0) {
    return ErrnoToStatus(fail_errno, "write " + file.path() + " at offset " +
                                         std::to_string(offset + write_bytes) + " (injected)");
  }
  return Status::OK();
}

Status FaultInjectingFileSystem::Sync(const File& file) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++syncs_;
    if (fail_sync_countdown_ > 0 && --fail_sync_countdown_ == 0) {
      return ErrnoToStatus(fail_sync_errno_, "fsync " + file.path() + " (injected)");
    }
  }
  // The length is taken before the fsync: anything written meanwhile may not be covered.
  struct stat st;
  if (::fstat(file.fd(), &st) != 0) return ErrnoToStatus(errno, "fstat " + file.path());
  GRANARY_RETURN_IF_ERROR(base_->Sync(file));
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [path, state] : files_) {
    if (state.dev == st.st_dev && state.ino == st.st_ino) {
      state.synced = true;
      state.durable_size = static_cast<uint64_t>(st.st_size);
    }
  }
  return Status::OK();
}

Status FaultInjectingFileSystem::Truncate(const File& file, uint64_t size_bytes) {
  return base_->Truncate(file, size_bytes);
}

// --- Names -------------------------------------------------------------------------------------

Status FaultInjectingFileSystem::SyncDir(std::string_view path) {
  uint64_t covered_seq;  // operations numbered below this happened before the fsync started
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++syncs_;
    if (fail_sync_countdown_ > 0 && --fail_sync_countdown_ == 0) {
      return ErrnoToStatus(fail_sync_errno_, "fsync directory " + std::string(path) +
                                                 " (injected)");
    }
    covered_seq = next_seq_;
  }
  GRANARY_RETURN_IF_ERROR(base_->SyncDir(path));
  const std::string dir = Normalize(path);
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<PendingOp> kept;
  for (PendingOp& op : pending_) {
    if (op.seq < covered_seq) op.unsynced_dirs.erase(dir);
    if (!op.unsynced_dirs.empty()) {
      kept.push_back(std::move(op));
    } else if (!op.backup.empty()) {
      ::unlink(op.backup.c_str());  // the replaced/unlinked file is gone for good
    }
  }
  pending_ = std::move(kept);
  return Status::OK();
}

void FaultInjectingFileSystem::AddPending(PendingOp op) {
  op.seq = next_seq_++;
  pending_.push_back(std::move(op));
}

Status FaultInjectingFileSystem::EnsureBackupDir() {
  if (!backup_dir_.empty()) {
    if (::mkdir(backup_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
      return ErrnoToStatus(errno, "create crash backup directory " + backup_dir_);
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
  backup_dir_ = templ;
  owns_backup_dir_ = true;
  return Status::OK();
}

Result<std::string> FaultInjectingFileSystem::BackUp(const std::string& path) {
  GRANARY_RETURN_IF_ERROR(EnsureBackupDir());
  std::string backup = backup_dir_ + "/" + std::to_string(next_backup_id_++);
  if (::link(path.c_str(), backup.c_str()) == 0) return backup;
  if (errno != EXDEV) return ErrnoToStatus(errno, "crash backup: link " + path + " to " + backup);
  GRANARY_RETURN_IF_ERROR(CopyFileContents(path, backup));
  return backup;
}

Status FaultInjectingFileSystem::DoRename(std::string_view from, std::string_view to,
                                          bool replace) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string f = Normalize(from);
  const std::string t = Normalize(to);
  std::string backup;
  struct stat st;
  if (replace && ::lstat(t.c_str(), &st) == 0 && !S_ISDIR(st.st_mode) && f != t) {
    GRANARY_ASSIGN_OR_RETURN(backup, BackUp(t));
  }
  Status s = replace ? base_->Rename(from, to) : base_->RenameNoReplace(from, to);
  if (!s.ok()) {
    if (!backup.empty()) ::unlink(backup.c_str());
    return s;
  }
  if (f == t) return Status::OK();
  PendingOp op{PendingOp::Kind::kRename, f, t, backup, std::nullopt, {Parent(f), Parent(t)}};
  if (auto node = files_.extract(t)) op.backup_state = node.mapped();
  // Move the state of the renamed file, and of files below it when it is a directory.
  std::vector<std::pair<std::string, FileState>> moved;
  for (auto it = files_.begin(); it != files_.end();) {
    if (it->first == f || IsUnder(it->first, f)) {
      moved.emplace_back(t + it->first.substr(f.size()), it->second);
      it = files_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [path, state] : moved) files_[path] = state;
  AddPending(std::move(op));
  return Status::OK();
}

Status FaultInjectingFileSystem::Rename(std::string_view from, std::string_view to) {
  return DoRename(from, to, /*replace=*/true);
}

Status FaultInjectingFileSystem::RenameNoReplace(std::string_view from, std::string_view to) {
  return DoRename(from, to, /*replace=*/false);
}

Status FaultInjectingFileSystem::Unlink(std::string_view path) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string p = Normalize(path);
  struct stat st;
  std::string backup;
  if (::lstat(p.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    GRANARY_ASSIGN_OR_RETURN(backup, BackUp(p));
  }
  Status s = base_->Unlink(path);
  if (!s.ok()) {
    if (!backup.empty()) ::unlink(backup.c_str());
    return s;
  }
  PendingOp op{PendingOp::Kind::kUnlink, "", p, backup, std::nullopt, {Parent(p)}};
  if (auto node = files_.extract(p)) op.backup_state = node.mapped();
  AddPending(std::move(op));
  return Status::OK();
}

Status FaultInjectingFileSystem::CreateDirs(std::string_view path) {
  return base_->CreateDirs(path);
}

Status FaultInjectingFileSystem::RemoveDir(std::string_view path) {
  return base_->RemoveDir(path);
}

Result<DirEntry> FaultInjectingFileSystem::Stat(std::string_view path) {
  return base_->Stat(path);
}

Result<std::vector<DirEntry>> FaultInjectingFileSystem::ListDir(std::string_view path) {
  return base_->ListDir(path);
}

// --- Crash -------------------------------------------------------------------------------------

Status FaultInjectingFileSystem::Crash() {
  std::lock_guard<std::mutex> lock(mu_);
  Status first;
  // 1. Undo namespace operations no SyncDir made durable, newest first.
  for (auto op = pending_.rbegin(); op != pending_.rend(); ++op) {
    switch (op->kind) {
      case PendingOp::Kind::kCreate:
        if (::unlink(op->to.c_str()) != 0 && errno != ENOENT) {
          KeepFirst(&first, ErrnoToStatus(errno, "crash: remove created " + op->to));
        }
        files_.erase(op->to);
        break;
      case PendingOp::Kind::kRename: {
        if (::rename(op->to.c_str(), op->from.c_str()) != 0) {
          KeepFirst(&first, ErrnoToStatus(errno, "crash: move " + op->to + " back to " + op->from));
        }
        std::vector<std::pair<std::string, FileState>> moved;
        for (auto it = files_.begin(); it != files_.end();) {
          if (it->first == op->to || IsUnder(it->first, op->to)) {
            moved.emplace_back(op->from + it->first.substr(op->to.size()), it->second);
            it = files_.erase(it);
          } else {
            ++it;
          }
        }
        for (auto& [path, state] : moved) files_[path] = state;
        break;
      }
      case PendingOp::Kind::kUnlink:
        break;  // the backup comes back below
    }
    if (!op->backup.empty()) {
      Status restored = RestoreBackup(op->backup, op->to);
      KeepFirst(&first, restored);
      if (restored.ok() && op->backup_state.has_value()) {
        FileState state = *op->backup_state;
        struct stat st;
        if (::lstat(op->to.c_str(), &st) == 0) {  // a copied backup is a new inode
          state.dev = st.st_dev;
          state.ino = st.st_ino;
        }
        files_[op->to] = state;
      }
    }
  }
  pending_.clear();
  // 2. Drop data that was never synced.
  for (const auto& [path, state] : files_) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || st.st_ino != state.ino || st.st_dev != state.dev) {
      continue;  // replaced or removed by someone else; not ours to judge
    }
    if (!state.synced) {
      if (::unlink(path.c_str()) != 0) {
        KeepFirst(&first, ErrnoToStatus(errno, "crash: remove never-synced " + path));
      }
    } else if (static_cast<uint64_t>(st.st_size) > state.durable_size) {
      if (::truncate(path.c_str(), static_cast<off_t>(state.durable_size)) != 0) {
        KeepFirst(&first, ErrnoToStatus(errno, "crash: truncate " + path));
      }
    }
  }
  files_.clear();
  return first;
}

}  // namespace granary
