#include "store/local/local_root.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <random>
#include <utility>

#include "core/logging.h"

namespace granary {
namespace {

// Writer threads per store: parts mostly wait on the device, so a few more than cores.
constexpr size_t kBackgroundThreads = 4;
// Staging buffers per part size, shared by all writers of a store (bounds staging memory).
constexpr size_t kStagingBuffersPerPool = 16;
constexpr size_t kMaxSharedPools = 4;
// Bounce buffers for O_DIRECT reads into misaligned memory: 32 x (4 MiB + 8 KiB), enough for two 64 MiB
// GetMany batches in flight.
constexpr size_t kBounceBufferBytes = (4u << 20) + (8u << 10);  // a 4 MiB range at any offset
constexpr size_t kBounceBuffers = 32;
// Renames that lose a race against Delete pruning an emptied directory are retried.
constexpr int kPublishAttempts = 8;

uint64_t ThisPidNamespace() {
  struct stat st;
  if (::stat("/proc/self/ns/pid", &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_ino);
}

std::string RandomHex() {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(::getpid());
  }());
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

std::string_view ParentOf(std::string_view path) {
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return {};
  return slash == 0 ? path.substr(0, 1) : path.substr(0, slash);
}

}  // namespace

bool ParseTempName(std::string_view name, TempName* out) {
  if (!name.ends_with(kTmpSuffix)) return false;
  name.remove_suffix(kTmpSuffix.size());
  size_t dash1 = name.find('-');
  size_t dash2 = dash1 == std::string_view::npos ? dash1 : name.find('-', dash1 + 1);
  if (dash2 == std::string_view::npos || dash2 + 1 >= name.size()) return false;
  const char* begin = name.data();
  auto [p1, e1] = std::from_chars(begin, begin + dash1, out->pid);
  auto [p2, e2] = std::from_chars(begin + dash1 + 1, begin + dash2, out->pid_namespace);
  return e1 == std::errc() && p1 == begin + dash1 && e2 == std::errc() &&
         p2 == begin + dash2 && out->pid > 0;
}

LocalRoot::LocalRoot(std::string root, const StoreOptions& options, FileSystem* fs,
                     File root_dir)
    : root_(std::move(root)),
      options_(options),
      fs_(fs),
      root_dir_(std::move(root_dir)),
      background_(kBackgroundThreads, "granary-put") {}

LocalRoot::~LocalRoot() = default;

Result<std::shared_ptr<LocalRoot>> LocalRoot::Open(std::string root, const StoreOptions& options,
                                                   FileSystem* fs) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  if (fs == nullptr) fs = &FileSystem::Default();
  if (root.empty() || root.front() != '/') {
    return InvalidArgumentError("local store root '" + root + "' is not an absolute path");
  }
  std::string context = "local store " + root;
  // stat, not lstat: a root reached through a symlink (/data -> /mnt/nvme/data) is fine.
  struct stat st;
  if (::stat(root.c_str(), &st) != 0) {
    if (errno != ENOENT) return ErrnoToStatus(errno, context + ": stat");
    if (!options.create_if_missing) {
      return NotFoundError(context + ": directory does not exist (create_if_missing is off)");
    }
    GRANARY_RETURN_IF_ERROR(fs->CreateDirs(root).WithContext(context));
    GRANARY_RETURN_IF_ERROR(fs->SyncDir(std::string(ParentOf(root))).WithContext(context));
  } else if (!S_ISDIR(st.st_mode)) {
    return FailedPreconditionError(context + ": not a directory");
  }
  Result<File> root_dir = fs->OpenRoot(root);
  if (!root_dir.ok()) return root_dir.status().WithContext(context);
  std::shared_ptr<LocalRoot> out(
      new LocalRoot(std::move(root), options, fs, std::move(root_dir).value()));
  GRANARY_RETURN_IF_ERROR(fs->CreateDirs(out->PathOf(kTmpDir)).WithContext(context));
  GRANARY_RETURN_IF_ERROR(out->CheckFormat().WithContext(context));
  out->RemoveDeadTemps();
  return out;
}

std::string LocalRoot::PathOf(std::string_view key) const {
  std::string path = root_;
  if (path.back() != '/') path += '/';
  path += key;
  return path;
}

std::string LocalRoot::Describe(std::string_view key) const {
  return "key '" + std::string(key) + "' (" + PathOf(key) + ")";
}

Status LocalRoot::CheckFormat() {
  const std::string path = PathOf(kFormatFile);
  for (int attempt = 0; attempt < 2; ++attempt) {
    Result<File> file = fs_->Open(path, File::OpenOptions{});
    if (file.ok()) {
      char buf[256];
      GRANARY_ASSIGN_OR_RETURN(
          size_t n, fs_->ReadAt(*file, 0, std::as_writable_bytes(std::span(buf, sizeof(buf)))));
      std::string_view found(buf, n);
      if (found == kFormatLine) return Status::OK();
      if (found.ends_with('\n')) found.remove_suffix(1);
      return FailedPreconditionError(path + " says '" + std::string(found.substr(0, 64)) +
                                     "'; this build reads only '" +
                                     std::string(kFormatLine.substr(0, kFormatLine.size() - 1)) +
                                     "'");
    }
    if (file.status().code() != StatusCode::kNotFound) return file.status();
    // First open of this directory: publish the format file create-only, so concurrent openers
    // agree and nobody ever reads a half-written one.
    Status s = WriteObject(kFormatFile, std::as_bytes(std::span(kFormatLine)), true);
    if (s.ok() || s.code() == StatusCode::kAlreadyExists) continue;
    return s;
  }
  return InternalError(path + ": vanished while being created");
}

void LocalRoot::RemoveDeadTemps() {
  const std::string dir = PathOf(kTmpDir);
  Result<std::vector<DirEntry>> entries = fs_->ListDir(dir);
  if (!entries.ok()) {
    GRANARY_LOG_WARN("%s: cannot list temp files: %s", dir.c_str(),
                     entries.status().ToString().c_str());
    return;
  }
  const uint64_t pid_namespace = ThisPidNamespace();
  const pid_t self = ::getpid();
  for (const DirEntry& entry : *entries) {
    TempName name;
    if (entry.is_directory || !ParseTempName(entry.name, &name)) {
      GRANARY_LOG_INFO("%s: leaving unknown entry '%s' alone", dir.c_str(), entry.name.c_str());
      continue;
    }
    // A pid only identifies a process within its pid namespace (containers sharing a volume).
    if (name.pid_namespace != pid_namespace || name.pid == self) continue;
    if (::kill(static_cast<pid_t>(name.pid), 0) == 0 || errno != ESRCH) continue;
    std::string path = dir + "/" + entry.name;
    Status s = fs_->Unlink(path);
    if (s.ok()) {
      GRANARY_LOG_INFO("removed temp file %s of dead writer pid %lld", path.c_str(),
                       static_cast<long long>(name.pid));
    } else if (s.code() != StatusCode::kNotFound) {  // another opener got it first
      GRANARY_LOG_WARN("cannot remove stale temp file: %s", s.ToString().c_str());
    }
  }
}

Status LocalRoot::OpenError(std::string_view key, const Status& status) const {
  switch (status.code()) {
    case StatusCode::kNotFound:
      return Status(StatusCode::kNotFound, Describe(key) + ": not found", status.sys_errno());
    case StatusCode::kFailedPrecondition:  // OpenBeneath: a directory, or not a regular file
      return NotFoundError(Describe(key) + ": not found (" +
                           (status.sys_errno() == EISDIR ? "a directory" : "not a regular file") +
                           ")");
    default:
      return status.WithContext(Describe(key));
  }
}

Result<OpenedObject> LocalRoot::OpenObject(std::string_view key, bool direct) const {
  File::OpenOptions options;
  options.direct = direct;
  Result<File> file = fs_->OpenBeneath(root_dir_, key, options);
  if (!file.ok() && direct && file.status().sys_errno() == EINVAL) {
    options.direct = false;  // a file system without O_DIRECT (tmpfs)
    file = fs_->OpenBeneath(root_dir_, key, options);
  }
  if (!file.ok()) return OpenError(key, file.status());
  OpenedObject out;
  out.file = std::move(file).value();
  struct stat st;
  if (::fstat(out.file.fd(), &st) != 0) return ErrnoToStatus(errno, Describe(key) + ": fstat");
  out.size_bytes = static_cast<uint64_t>(st.st_size);
  out.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  out.inode = static_cast<uint64_t>(st.st_ino);
  return out;
}

Result<File> LocalRoot::ReopenDirect(std::string_view key, const OpenedObject& object) const {
  File::OpenOptions options;
  options.direct = true;
  Result<File> file = fs_->OpenBeneath(root_dir_, key, options);
  if (!file.ok()) return OpenError(key, file.status());
  struct stat st;
  if (::fstat(file->fd(), &st) != 0) return ErrnoToStatus(errno, Describe(key) + ": fstat");
  if (static_cast<uint64_t>(st.st_ino) != object.inode) {
    return FailedPreconditionError(Describe(key) + ": replaced while being read");
  }
  return file;
}

Result<TempFile> LocalRoot::CreateTemp(bool direct) const {
  static const uint64_t pid_namespace = ThisPidNamespace();
  const std::string prefix = PathOf(kTmpDir) + "/" + std::to_string(::getpid()) + "-" +
                             std::to_string(pid_namespace) + "-";
  for (int attempt = 0;; ++attempt) {
    TempFile temp;
    temp.path = prefix + RandomHex() + std::string(kTmpSuffix);
    temp.direct = direct;
    File::OpenOptions options;
    options.mode = File::Mode::kCreateNew;
    options.direct = direct;
    Result<File> file = fs_->Open(temp.path, options);
    if (file.ok()) {
      temp.file = std::move(file).value();
      return temp;
    }
    if (direct && file.status().sys_errno() == EINVAL) {
      // No O_DIRECT on this file system; the failed open may still have created the file.
      fs_->Unlink(temp.path).IgnoreError();  // may not exist
      direct = false;
      continue;
    }
    if (file.status().code() == StatusCode::kAlreadyExists && attempt < 4) continue;
    if (file.status().code() == StatusCode::kNotFound) {
      // Someone removed .granary/tmp; recreate it once.
      if (attempt < 4 && fs_->CreateDirs(PathOf(kTmpDir)).ok()) continue;
    }
    return file.status();
  }
}

void LocalRoot::DiscardTemp(TempFile& temp) const {
  temp.file.Close().IgnoreError();  // the data is being thrown away
  fs_->Unlink(temp.path).IgnoreError();  // best effort; a later open cleans up after us
}

Status LocalRoot::WriteObject(std::string_view key, std::span<const std::byte> data,
                              bool no_replace) {
  const std::string context = (no_replace ? "put-if-absent of " : "put of ") + Describe(key);
  // O_DIRECT needs an aligned source; unaligned callers' bytes go through the page cache.
  bool direct = data.size() >= options_.direct_io_min_bytes &&
                reinterpret_cast<uintptr_t>(data.data()) % kDirectIoAlignment == 0;
  Result<TempFile> created = CreateTemp(direct);
  if (!created.ok()) return created.status().WithContext(context);
  TempFile temp = std::move(created).value();
  Status s;
  if (!data.empty()) s = fs_->WriteAt(temp.file, 0, data);
  if (s.ok()) s = fs_->Sync(temp.file);
  if (s.ok()) s = temp.file.Close();
  if (!s.ok()) {
    DiscardTemp(temp);
    return s.WithContext(context);
  }
  s = Publish(key, temp.path, no_replace);
  if (!s.ok()) DiscardTemp(temp);
  return s;
}

Status LocalRoot::Conflict(std::string_view key, std::string_view other,
                           std::string_view why) const {
  return FailedPreconditionError(Describe(key) + ": conflicts with '" + std::string(other) +
                                 "' (" + PathOf(other) + "), which " + std::string(why) +
                                 "; a local store cannot hold both a key and keys under it");
}

Status LocalRoot::PrepareParents(std::string_view key, std::vector<std::string>* dirty_dirs) {
  for (size_t slash = key.find('/'); slash != std::string_view::npos;
       slash = key.find('/', slash + 1)) {
    std::string_view dir = key.substr(0, slash);
    const std::string path = PathOf(dir);
    Result<DirEntry> entry = fs_->Stat(path);  // lstat: a symlinked directory is refused
    if (entry.ok()) {
      if (entry->is_directory) continue;
      return Conflict(key, dir, "is an object (or a symlink), not a directory");
    }
    if (entry.status().code() != StatusCode::kNotFound) {
      return entry.status().WithContext(Describe(key));
    }
    Status s = fs_->CreateDirs(path);
    if (!s.ok()) {
      // Lost a race: fine if someone else made the directory, a conflict if they made a file.
      Result<DirEntry> again = fs_->Stat(path);
      if (!again.ok()) return s.WithContext(Describe(key));
      if (!again->is_directory) return Conflict(key, dir, "is an object, not a directory");
      continue;
    }
    dirty_dirs->push_back(std::string(ParentOf(path)));
  }
  dirty_dirs->push_back(std::string(ParentOf(PathOf(key))));
  return Status::OK();
}

Status LocalRoot::ClearDirectoryAtTarget(std::string_view key) {
  const std::string path = PathOf(key);
  Result<DirEntry> entry = fs_->Stat(path);
  if (!entry.ok() || !entry->is_directory) return Status::OK();
  // An empty directory is a leftover of deleted keys "key/..."; remove it. rmdir fails on a
  // non-empty one, so this never destroys objects.
  if (fs_->RemoveDir(path).ok()) return Status::OK();
  return Conflict(key, std::string(key) + "/...", "is a directory holding other keys");
}

Status LocalRoot::Publish(std::string_view key, const std::string& temp_path, bool no_replace) {
  const std::string target = PathOf(key);
  std::vector<std::string> dirty_dirs;
  for (int attempt = 1;; ++attempt) {
    dirty_dirs.clear();
    GRANARY_RETURN_IF_ERROR(PrepareParents(key, &dirty_dirs));
    GRANARY_RETURN_IF_ERROR(ClearDirectoryAtTarget(key));
    Status s = no_replace ? fs_->RenameNoReplace(temp_path, target)
                          : fs_->Rename(temp_path, target);
    if (s.ok()) break;
    const int err = s.sys_errno();
    if (s.code() == StatusCode::kAlreadyExists && no_replace && err != ENOTEMPTY) {
      Result<DirEntry> entry = fs_->Stat(target);
      if (!entry.ok() || !entry->is_directory) {
        return AlreadyExistsError(Describe(key) + ": already exists");
      }
    }
    if (err == EISDIR || err == ENOTEMPTY || err == EEXIST) {
      return Conflict(key, std::string(key) + "/...", "is a directory holding other keys");
    }
    // ENOENT: a concurrent Delete pruned a parent directory we had just made; make it again.
    if (s.code() == StatusCode::kNotFound && attempt < kPublishAttempts) continue;
    return s.WithContext("publishing " + Describe(key));
  }
  // The new name's directory, the parents of directories we created, and .granary/tmp, whose
  // entry the rename removed (a cross-directory rename is durable once both sides are synced).
  dirty_dirs.push_back(std::string(ParentOf(temp_path)));
  std::sort(dirty_dirs.begin(), dirty_dirs.end());
  dirty_dirs.erase(std::unique(dirty_dirs.begin(), dirty_dirs.end()), dirty_dirs.end());
  for (auto it = dirty_dirs.rbegin(); it != dirty_dirs.rend(); ++it) {
    GRANARY_RETURN_IF_ERROR(fs_->SyncDir(*it).WithContext("publishing " + Describe(key)));
  }
  return Status::OK();
}

Status LocalRoot::Remove(std::string_view key) {
  const std::string path = PathOf(key);
  for (size_t slash = key.find('/'); slash != std::string_view::npos;
       slash = key.find('/', slash + 1)) {
    Result<DirEntry> entry = fs_->Stat(PathOf(key.substr(0, slash)));
    if (entry.ok() && entry->is_directory) continue;
    if (entry.ok() || entry.status().code() == StatusCode::kNotFound) {
      return NotFoundError(Describe(key) + ": not found");
    }
    return entry.status().WithContext("delete of " + Describe(key));
  }
  Result<DirEntry> entry = fs_->Stat(path);
  if (!entry.ok()) {
    if (entry.status().code() == StatusCode::kNotFound) {
      return NotFoundError(Describe(key) + ": not found");
    }
    return entry.status().WithContext("delete of " + Describe(key));
  }
  if (entry->is_directory) return NotFoundError(Describe(key) + ": not found (a directory)");
  Status s = fs_->Unlink(path);
  if (!s.ok()) {
    if (s.code() == StatusCode::kNotFound) return NotFoundError(Describe(key) + ": not found");
    return s.WithContext("delete of " + Describe(key));
  }
  // Prune directories the delete emptied, so "a" can become a key again after "a/b" is gone.
  // rmdir refuses non-empty directories, so racing writers lose nothing (Publish retries).
  for (std::string_view dir = ParentOf(key); !dir.empty(); dir = ParentOf(dir)) {
    if (!fs_->RemoveDir(PathOf(dir)).ok()) break;
  }
  return Status::OK();
}

Result<std::shared_ptr<BufferPool>> LocalRoot::BouncePool() {
  std::lock_guard<std::mutex> lock(pools_mu_);
  if (!bounce_pool_) {
    BufferPool::Options options;
    options.buffer_bytes = kBounceBufferBytes;
    options.max_buffers = kBounceBuffers;
    GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<BufferPool> pool, BufferPool::Create(options));
    bounce_pool_ = std::move(pool);
  }
  return bounce_pool_;
}

Result<std::shared_ptr<BufferPool>> LocalRoot::StagingPool(size_t part_bytes) {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(part_bytes);
  if (it != pools_.end()) return it->second;
  BufferPool::Options options;
  options.buffer_bytes = part_bytes;
  options.max_buffers = kStagingBuffersPerPool;
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<BufferPool> pool, BufferPool::Create(options));
  std::shared_ptr<BufferPool> shared(std::move(pool));
  // Writers with unusual part sizes get a private pool instead of growing the cache forever.
  if (pools_.size() < kMaxSharedPools) pools_.emplace(part_bytes, shared);
  return shared;
}

}  // namespace granary
