// The pread/pwrite IoEngine (private to src/io; use IoEngine::Create).
#ifndef GRANARY_IO_PSYNC_ENGINE_H_
#define GRANARY_IO_PSYNC_ENGINE_H_

#include <memory>

#include "granary/io.h"

namespace granary {

// Creates an engine that runs pread/pwrite on its own small thread pool; the calling thread of
// Run works too, so queue depth 1 costs no thread hand-off. Always succeeds.
std::unique_ptr<IoEngine> NewPsyncEngine(const IoEngineOptions& options);

}  // namespace granary

#endif  // GRANARY_IO_PSYNC_ENGINE_H_
