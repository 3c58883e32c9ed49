// LocalStore: an ObjectStore kept as plain files in a directory on a local file system.
//
// Layout (docs/formats/local_store.md): the object `a/b/c` is the file <root>/a/b/c, parent
// directories created as needed. <root>/.granary/ is reserved: `format` names the layout
// version, `tmp/` holds in-progress writes named "<pid>-<pidns>-<random>.tmp".
//
// How the store.h promises are kept:
//   * Put/PutIfAbsent/Commit write a temp file in .granary/tmp, fsync it, rename it over the
//     target (renameat2 RENAME_NOREPLACE for PutIfAbsent), then fsync the target's directory
//     (and the parents of directories it created). Readers open a file once and read that
//     version, so they never see a mix.
//   * Temp files of writers whose pid is dead (in this pid namespace) are removed when a store
//     opens the directory; other files under .granary/ are left alone.
//   * Reads open files relative to the root with FileSystem::OpenBeneath (openat2
//     RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS on POSIX), so a symlink inside the root can never
//     lead a read outside it (PermissionDenied). Writes and deletes refuse to pass through a
//     parent component that is not a real directory.
//   * Reads and writes of at least StoreOptions::direct_io_min_bytes use O_DIRECT (when the file
//     system supports it); GetMany opens each distinct object once per batch and submits all
//     ranges as one batch so the device queue stays full.
//   * Delete is not fsynced: after a power loss a deleted object may reappear. Deleting the
//     last object of a directory removes the emptied directories (up to the root).
//
// Local-disk limit: a key and a key that uses it as a directory prefix ("a" and "a/b") cannot
// both exist, because "a" would have to be a file and a directory at once. Writing the second
// fails with FailedPrecondition naming both the key and the conflicting path.
//
// Errors name the key and the file path. A full disk (ENOSPC/EDQUOT) is ResourceExhausted; the
// previous object under the key stays intact and the temp file is removed.
//
// Thread-safe: every ObjectStore method. Writers are used by one thread at a time; they may
// outlive the store handle (they keep the shared state alive). Several processes may share one
// root directory; every write is atomic across processes too.
#ifndef GRANARY_STORE_LOCAL_LOCAL_STORE_H_
#define GRANARY_STORE_LOCAL_LOCAL_STORE_H_

#include <memory>
#include <string>

#include "granary/status.h"
#include "granary/store.h"

namespace granary {

class FileSystem;

// Opens (and with options.create_if_missing creates) the store rooted at `root`, an absolute
// path. `fs` performs every open, read, write, sync and rename (not owned; must outlive the
// store and its writers); nullptr means FileSystem::Default(). Tests pass a
// FaultInjectingFileSystem.
// Errors: InvalidArgument for a relative root or bad options, NotFound if the root is missing
// and create_if_missing is false, FailedPrecondition if the root is not a directory or its
// .granary/format names an unknown layout version.
Result<std::unique_ptr<ObjectStore>> NewLocalStore(std::string root, const StoreOptions& options,
                                                   FileSystem* fs = nullptr);

}  // namespace granary

#endif  // GRANARY_STORE_LOCAL_LOCAL_STORE_H_
