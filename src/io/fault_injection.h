// FaultInjectingFileSystem: a FileSystem wrapper for tests that fails reads, writes and syncs on
// demand, corrupts reads, and simulates power loss.
//
// Faults (each counted from the moment it is armed). A "read" is one ReadAt call or one request
// of a ReadMany batch (however the engine splits it):
//   FailNthOpen(n, err)     the n-th Open or OpenBeneath from now fails with `err` without
//                           opening (or creating) anything. One-shot.
//   FailNthRead(n, err)     the n-th read from now (n = 1: the next; n = 0 disarms) fails with
//                           `err` without reading anything: ReadAt returns the error, a ReadMany
//                           request gets result -err while the rest of its batch proceeds.
//                           One-shot.
//   CorruptNthRead(n, i)    the n-th read from now succeeds but byte `i` of the data it returned
//                           (the last byte if it returned fewer) has every bit flipped, as from a
//                           device returning bad data. A read that returns no bytes (or fails)
//                           uses the fault up without flipping anything. One-shot.
//   FailNthWrite(n, err)    the n-th WriteAt from now (n = 1: the next; n = 0 disarms) fails
//                           with `err` without writing anything. One-shot.
//   FailNthSync(n, err)     the n-th Sync or SyncDir from now fails with `err` without syncing
//                           (and therefore without making anything durable). One-shot.
//   SetDiskFullAfter(b)     a disk with `b` free bytes: writes consume the budget; the WriteAt
//                           that crosses it writes the prefix that fits, then fails with ENOSPC;
//                           every later WriteAt fails with ENOSPC and writes nothing. Persistent
//                           until ClearDiskFull().
//   ShortWrites(true, err)  every WriteAt writes only the first half of its data (rounded down)
//                           and then fails with `err`: callers see a partially written file and an
//                           error, as when a real device fails part-way. Persistent.
// Failed calls return ErrnoToStatus(err, ...) whose message names the path and says "injected".
// OpenRoot and OpenBeneath are passed through; OpenBeneath for writing is tracked like Open.
//
// Crash model (Crash() simulates power loss; nothing else is undone by it):
//   Data. A file's durable length is its length at its last successful Sync through this
//   wrapper. A file that existed when this wrapper first opened it for writing counts as synced
//   at its length right after that open (O_TRUNC included). A file created through this wrapper
//   and never synced has no durable data and is deleted by Crash(). Only lengths are modeled:
//   Crash() truncates a file longer than its durable length back to it; bytes overwritten
//   inside the durable length are not restored, and a file truncated below its durable length
//   stays short.
//   Names. Each file creation (Open or OpenBeneath that created the file), Rename,
//   RenameNoReplace and Unlink done through this wrapper is pending until SyncDir succeeds on
//   the parent directory of every name it touched (both parents for a cross-directory rename).
//   Crash() undoes pending operations newest first: a created file is removed, a renamed file
//   moves back, a target a Rename replaced comes back (its inode is kept alive by a hard link in
//   a private backup directory until the rename is durable), and an unlinked file comes back.
//   Not modeled: directory creation and removal (CreateDirs/RemoveDir are immediately durable),
//   metadata such as mtimes, and operations done on the wrapped file system directly.
//   After Crash(), File handles opened before it must not be used; reopen the files. Faults and
//   counters are left as they were.
//
// The wrapped file system must operate on real POSIX paths: Crash() and the backups use POSIX
// calls directly. Paths are compared after making them absolute and lexically normal, so the
// same file must not be reached through different symlinked paths.
//
// Thread-safe: every method may be called concurrently; fault decisions and the crash
// bookkeeping are serialized by one mutex, data transfers run outside it.
#ifndef GRANARY_IO_FAULT_INJECTION_H_
#define GRANARY_IO_FAULT_INJECTION_H_

#include <sys/types.h>

#include <cerrno>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "io/crash_backups.h"
#include "io/file_system.h"

namespace granary {

class FaultInjectingFileSystem final : public FileSystem {
 public:
  // Wraps `base` (not owned; must outlive this). Backups of replaced or unlinked files live in
  // `backup_dir`, which should be on the same file system as the files under test (hard links;
  // otherwise files are copied). Empty: a fresh directory under $GRANARY_TEST_TMPDIR, $TMPDIR or
  // /tmp, removed by the destructor.
  explicit FaultInjectingFileSystem(FileSystem* base, std::string backup_dir = {});
  ~FaultInjectingFileSystem() override;
  FaultInjectingFileSystem(const FaultInjectingFileSystem&) = delete;
  FaultInjectingFileSystem& operator=(const FaultInjectingFileSystem&) = delete;

  // --- Faults -------------------------------------------------------------------------------
  void FailNthOpen(uint64_t n, int sys_errno);
  void FailNthRead(uint64_t n, int sys_errno);
  void CorruptNthRead(uint64_t n, uint64_t byte_index = 0);
  void FailNthWrite(uint64_t n, int sys_errno);
  void FailNthSync(uint64_t n, int sys_errno);
  void SetDiskFullAfter(uint64_t free_bytes);
  void ClearDiskFull();
  void ShortWrites(bool enable, int sys_errno = EIO);
  // Disarms every fault (armed Nth failures and corruption, disk-full, short writes).
  void ClearFaults();

  // Power loss, as described above. Returns the first error met while rolling back (the
  // rollback continues past it).
  Status Crash();

  // --- Counters (every call, failed or not, since construction) -------------------------------
  uint64_t opens() const;          // Open + OpenBeneath calls
  uint64_t reads() const;          // ReadAt calls + ReadMany requests
  uint64_t writes() const;         // WriteAt calls
  uint64_t syncs() const;          // Sync + SyncDir calls
  uint64_t bytes_written() const;  // bytes actually passed to the wrapped WriteAt

  // --- FileSystem ---------------------------------------------------------------------------
  Result<File> Open(std::string_view path, const File::OpenOptions& options) override;
  Result<File> OpenRoot(std::string_view path) override;
  Result<File> OpenBeneath(const File& root, std::string_view relative,
                           const File::OpenOptions& options) override;
  Result<size_t> ReadAt(const File& file, uint64_t offset, std::span<std::byte> dest) override;
  Status ReadMany(std::span<IoRequest> requests) override;
  Status WriteAt(const File& file, uint64_t offset, std::span<const std::byte> src) override;
  Status Sync(const File& file) override;
  Status SyncDir(std::string_view path) override;
  Status Truncate(const File& file, uint64_t size_bytes) override;
  Status Rename(std::string_view from, std::string_view to) override;
  Status RenameNoReplace(std::string_view from, std::string_view to) override;
  Status Unlink(std::string_view path) override;
  Status CreateDirs(std::string_view path) override;
  Status RemoveDir(std::string_view path) override;
  Result<DirEntry> Stat(std::string_view path) override;
  Result<std::vector<DirEntry>> ListDir(std::string_view path) override;

 private:
  // What Crash() knows about a file written through this wrapper.
  struct FileState {
    dev_t dev = 0;
    ino_t ino = 0;
    bool synced = false;        // false: created here and never synced
    uint64_t durable_size = 0;  // meaningful when synced
  };
  // A namespace operation not yet made durable by SyncDir.
  struct PendingOp {
    enum class Kind { kCreate, kRename, kUnlink } kind;
    std::string from;    // kRename: old name
    std::string to;      // kCreate/kUnlink: the name; kRename: new name
    std::string backup;  // kRename over a target / kUnlink: backup of the old file, or empty
    std::optional<FileState> backup_state;  // tracked state of the backed-up file
    std::set<std::string> unsynced_dirs;    // parents still to be synced
    uint64_t seq = 0;                       // order of the operation
  };

  // A one-shot fault for the n-th call from now.
  struct NthFault {
    uint64_t countdown = 0;   // calls until it fires (1: the next); 0: disarmed
    int sys_errno = 0;        // what the call fails with
    uint64_t byte_index = 0;  // CorruptNthRead: the byte to flip
    bool armed() const { return countdown > 0; }
    // Counts one call; true for the call the fault is meant for (which disarms it).
    bool Fire() { return countdown > 0 && --countdown == 0; }
  };
  void Arm(NthFault* fault, NthFault value);  // takes mu_

  // The fate of one read.
  struct ReadPlan {
    int fail_errno = 0;       // fail with this without reading (0: do not fail)
    bool corrupt = false;     // flip a byte of what the read returns
    uint64_t corrupt_index = 0;
  };
  ReadPlan PlanRead();  // REQUIRES(mu_)
  // Counts an Open or OpenBeneath of `path`; the injected error if it is to fail. REQUIRES(mu_)
  Status PlanOpen(std::string_view path);
  // Counts a Sync or SyncDir ("fsync <path>" in `what`); the injected error if it is to fail.
  // REQUIRES(mu_)
  Status PlanSync(std::string_view what);
  // Records a file just opened for writing at `path` (which existed before iff `existed`) for
  // the crash model. REQUIRES(mu_)
  Status TrackOpened(std::string_view path, bool existed, const File& file,
                     const File::OpenOptions& options);
  // Decides the fate of one WriteAt of `length` bytes: how many to write and which errno to
  // fail with afterwards (0: none).
  void PlanWrite(size_t length, size_t* write_bytes, int* fail_errno);
  void AddPending(PendingOp op);  // REQUIRES(mu_)
  // Moves the tracked state of `from`, and of files below it when it is a directory, to the
  // same names under `to`. REQUIRES(mu_)
  void MoveTracked(const std::string& from, const std::string& to);
  // Shared by Rename and RenameNoReplace.
  Status DoRename(std::string_view from, std::string_view to, bool replace);

  FileSystem* const base_;

  mutable std::mutex mu_;
  // Faults. GUARDED_BY(mu_)
  NthFault fail_open_;
  NthFault fail_read_;
  NthFault corrupt_read_;
  NthFault fail_write_;
  NthFault fail_sync_;
  std::optional<uint64_t> disk_free_bytes_;
  bool short_writes_ = false;
  int short_write_errno_ = 0;
  // Counters. GUARDED_BY(mu_)
  uint64_t opens_ = 0;
  uint64_t reads_ = 0;
  uint64_t writes_ = 0;
  uint64_t syncs_ = 0;
  uint64_t bytes_written_ = 0;
  // Crash bookkeeping. GUARDED_BY(mu_)
  std::map<std::string, FileState> files_;  // by current (normalized) path
  std::vector<PendingOp> pending_;          // oldest first
  CrashBackups backups_;
  uint64_t next_seq_ = 0;
};

}  // namespace granary

#endif  // GRANARY_IO_FAULT_INJECTION_H_
