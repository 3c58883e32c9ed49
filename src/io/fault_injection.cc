// FaultInjectingFileSystem (see fault_injection.h for the fault and crash model).
#include "io/fault_injection.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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

void KeepFirst(Status* first, Status s) {
  if (first->ok() && !s.ok()) *first = std::move(s);
}

// Flips every bit of byte `index` (or of the last byte) of the `returned` bytes at `data`.
void FlipByte(void* data, size_t returned, uint64_t index) {
  if (returned == 0) return;
  static_cast<std::byte*>(data)[std::min<uint64_t>(index, returned - 1)] ^= std::byte{0xff};
}

}  // namespace

FaultInjectingFileSystem::FaultInjectingFileSystem(FileSystem* base, std::string backup_dir)
    : base_(base), backups_(std::move(backup_dir)) {}

FaultInjectingFileSystem::~FaultInjectingFileSystem() {
  for (const PendingOp& op : pending_) {
    if (!op.backup.empty()) CrashBackups::Discard(op.backup);
  }
}

// --- Faults ------------------------------------------------------------------------------------

void FaultInjectingFileSystem::Arm(NthFault* fault, NthFault value) {
  std::lock_guard<std::mutex> lock(mu_);
  *fault = value;
}

void FaultInjectingFileSystem::FailNthOpen(uint64_t n, int sys_errno) {
  Arm(&fail_open_, {.countdown = n, .sys_errno = sys_errno});
}

void FaultInjectingFileSystem::FailNthRead(uint64_t n, int sys_errno) {
  Arm(&fail_read_, {.countdown = n, .sys_errno = sys_errno});
}

void FaultInjectingFileSystem::CorruptNthRead(uint64_t n, uint64_t byte_index) {
  Arm(&corrupt_read_, {.countdown = n, .byte_index = byte_index});
}

void FaultInjectingFileSystem::FailNthWrite(uint64_t n, int sys_errno) {
  Arm(&fail_write_, {.countdown = n, .sys_errno = sys_errno});
}

void FaultInjectingFileSystem::FailNthSync(uint64_t n, int sys_errno) {
  Arm(&fail_sync_, {.countdown = n, .sys_errno = sys_errno});
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
  fail_open_ = fail_read_ = corrupt_read_ = fail_write_ = fail_sync_ = NthFault{};
  disk_free_bytes_.reset();
  short_writes_ = false;
}

uint64_t FaultInjectingFileSystem::opens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return opens_;
}

uint64_t FaultInjectingFileSystem::reads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reads_;
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    GRANARY_RETURN_IF_ERROR(PlanOpen(path));
  }
  if (options.mode == File::Mode::kRead) return base_->Open(path, options);  // nothing to track
  std::lock_guard<std::mutex> lock(mu_);
  struct stat st;
  const bool existed = ::lstat(std::string(path).c_str(), &st) == 0;
  GRANARY_ASSIGN_OR_RETURN(File file, base_->Open(path, options));
  GRANARY_RETURN_IF_ERROR(TrackOpened(path, existed, file, options));
  return file;
}

Result<File> FaultInjectingFileSystem::OpenRoot(std::string_view path) {
  return base_->OpenRoot(path);
}

Result<File> FaultInjectingFileSystem::OpenBeneath(const File& root, std::string_view relative,
                                                   const File::OpenOptions& options) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::string path = root.path();
    GRANARY_RETURN_IF_ERROR(PlanOpen(path.append("/").append(relative)));
  }
  if (options.mode == File::Mode::kRead) return base_->OpenBeneath(root, relative, options);
  std::lock_guard<std::mutex> lock(mu_);
  struct stat st;
  const bool existed = ::fstatat(root.fd(), std::string(relative).c_str(), &st,
                                 AT_SYMLINK_NOFOLLOW) == 0;
  GRANARY_ASSIGN_OR_RETURN(File file, base_->OpenBeneath(root, relative, options));
  GRANARY_RETURN_IF_ERROR(TrackOpened(file.path(), existed, file, options));
  return file;
}

Status FaultInjectingFileSystem::TrackOpened(std::string_view path, bool existed,
                                             const File& file,
                                             const File::OpenOptions& options) {
  const bool creating = options.mode == File::Mode::kCreate ||
                        options.mode == File::Mode::kTruncate ||
                        options.mode == File::Mode::kCreateNew;
  struct stat st;
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
  return Status::OK();
}

Status FaultInjectingFileSystem::PlanOpen(std::string_view path) {
  ++opens_;
  if (fail_open_.Fire()) {
    return ErrnoToStatus(fail_open_.sys_errno, "open " + std::string(path) + " (injected)");
  }
  return Status::OK();
}

Status FaultInjectingFileSystem::PlanSync(std::string_view what) {
  ++syncs_;
  if (fail_sync_.Fire()) {
    return ErrnoToStatus(fail_sync_.sys_errno, std::string(what) + " (injected)");
  }
  return Status::OK();
}

FaultInjectingFileSystem::ReadPlan FaultInjectingFileSystem::PlanRead() {
  ++reads_;
  ReadPlan plan;
  if (fail_read_.Fire()) plan.fail_errno = fail_read_.sys_errno;
  if (corrupt_read_.Fire()) {
    plan.corrupt = true;
    plan.corrupt_index = corrupt_read_.byte_index;
  }
  return plan;
}

Result<size_t> FaultInjectingFileSystem::ReadAt(const File& file, uint64_t offset,
                                                std::span<std::byte> dest) {
  ReadPlan plan;
  {
    std::lock_guard<std::mutex> lock(mu_);
    plan = PlanRead();
  }
  if (plan.fail_errno != 0) {
    return ErrnoToStatus(plan.fail_errno, "read " + file.path() + " at offset " +
                                              std::to_string(offset) + " (injected)");
  }
  GRANARY_ASSIGN_OR_RETURN(size_t n, base_->ReadAt(file, offset, dest));
  if (plan.corrupt) FlipByte(dest.data(), n, plan.corrupt_index);
  return n;
}

Status FaultInjectingFileSystem::ReadMany(std::span<IoRequest> requests) {
  std::vector<ReadPlan> plans;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!fail_read_.armed() && !corrupt_read_.armed()) {
      reads_ += requests.size();  // nothing armed: the common case costs no copies
    } else {
      plans.reserve(requests.size());
      for (size_t i = 0; i < requests.size(); ++i) plans.push_back(PlanRead());
    }
  }
  if (plans.empty()) return base_->ReadMany(requests);
  // Pass only the requests that are not to fail, then copy their outcomes back.
  std::vector<IoRequest> passed;
  std::vector<size_t> index;
  passed.reserve(requests.size());
  index.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    if (plans[i].fail_errno != 0) {
      requests[i].result = -plans[i].fail_errno;
      requests[i].latency_ns = 0;
    } else {
      passed.push_back(requests[i]);
      index.push_back(i);
    }
  }
  if (!passed.empty()) GRANARY_RETURN_IF_ERROR(base_->ReadMany(passed));
  for (size_t j = 0; j < passed.size(); ++j) {
    IoRequest& request = requests[index[j]];
    request.result = passed[j].result;
    request.latency_ns = passed[j].latency_ns;
    if (plans[index[j]].corrupt && request.result > 0) {
      FlipByte(request.buffer, static_cast<size_t>(request.result), plans[index[j]].corrupt_index);
    }
  }
  return Status::OK();
}

void FaultInjectingFileSystem::PlanWrite(size_t length, size_t* write_bytes, int* fail_errno) {
  ++writes_;
  *write_bytes = length;
  *fail_errno = 0;
  if (fail_write_.Fire()) {
    *write_bytes = 0;
    *fail_errno = fail_write_.sys_errno;
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
    GRANARY_RETURN_IF_ERROR(PlanSync("fsync " + file.path()));
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
    GRANARY_RETURN_IF_ERROR(PlanSync("fsync directory " + std::string(path)));
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
      CrashBackups::Discard(op.backup);  // the replaced/unlinked file is gone for good
    }
  }
  pending_ = std::move(kept);
  return Status::OK();
}

void FaultInjectingFileSystem::AddPending(PendingOp op) {
  op.seq = next_seq_++;
  pending_.push_back(std::move(op));
}

void FaultInjectingFileSystem::MoveTracked(const std::string& from, const std::string& to) {
  std::vector<std::pair<std::string, FileState>> moved;
  for (auto it = files_.begin(); it != files_.end();) {
    if (it->first == from || IsUnder(it->first, from)) {
      moved.emplace_back(to + it->first.substr(from.size()), it->second);
      it = files_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [path, state] : moved) files_[path] = state;
}

Status FaultInjectingFileSystem::DoRename(std::string_view from, std::string_view to,
                                          bool replace) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string f = Normalize(from);
  const std::string t = Normalize(to);
  std::string backup;
  struct stat st;
  if (replace && ::lstat(t.c_str(), &st) == 0 && !S_ISDIR(st.st_mode) && f != t) {
    GRANARY_ASSIGN_OR_RETURN(backup, backups_.Save(t));
  }
  Status s = replace ? base_->Rename(from, to) : base_->RenameNoReplace(from, to);
  if (!s.ok()) {
    if (!backup.empty()) CrashBackups::Discard(backup);
    return s;
  }
  if (f == t) return Status::OK();
  PendingOp op{PendingOp::Kind::kRename, f, t, backup, std::nullopt, {Parent(f), Parent(t)}};
  if (auto node = files_.extract(t)) op.backup_state = node.mapped();
  MoveTracked(f, t);
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
    GRANARY_ASSIGN_OR_RETURN(backup, backups_.Save(p));
  }
  Status s = base_->Unlink(path);
  if (!s.ok()) {
    if (!backup.empty()) CrashBackups::Discard(backup);
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
        MoveTracked(op->to, op->from);
        break;
      }
      case PendingOp::Kind::kUnlink:
        break;  // the backup comes back below
    }
    if (!op->backup.empty()) {
      Status restored = CrashBackups::Restore(op->backup, op->to);
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
