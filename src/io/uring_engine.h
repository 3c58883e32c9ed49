// The io_uring IoEngine (private to src/io; use IoEngine::Create).
#ifndef GRANARY_IO_URING_ENGINE_H_
#define GRANARY_IO_URING_ENGINE_H_

#include <memory>

#include "granary/io.h"
#include "granary/status.h"

namespace granary {

// Creates an io_uring engine after checking that a ring can be set up and complete a NOP here.
// Unavailable (with the errno) when the kernel or a sandbox refuses io_uring.
Result<std::unique_ptr<IoEngine>> NewUringEngine(const IoEngineOptions& options);

}  // namespace granary

#endif  // GRANARY_IO_URING_ENGINE_H_
