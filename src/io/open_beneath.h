// Opening files beneath a root directory without escaping it: the POSIX implementation behind
// FileSystem::OpenRoot and FileSystem::OpenBeneath (see file_system.h for the contract).
// Internal to src/io; everything else goes through a FileSystem so faults can be injected.
//
// Thread-safe: stateless apart from a process-wide "openat2 is missing" flag.
#ifndef GRANARY_IO_OPEN_BENEATH_H_
#define GRANARY_IO_OPEN_BENEATH_H_

#include <string_view>

#include "granary/io.h"
#include "granary/status.h"

namespace granary {

// How OpenFileBeneath resolves the path.
enum class BeneathResolution {
  kAuto,  // openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS); the walk where it is missing
  kWalk,  // always the component walk that refuses every symlink and ".." (tests use this)
};

// FileSystem::OpenRoot on POSIX.
Result<File> OpenRootDirectory(std::string_view path);

// FileSystem::OpenBeneath on POSIX.
Result<File> OpenFileBeneath(const File& root, std::string_view relative,
                             const File::OpenOptions& options,
                             BeneathResolution resolution = BeneathResolution::kAuto);

}  // namespace granary

#endif  // GRANARY_IO_OPEN_BENEATH_H_
