// LocalWriter: the ObjectWriter of a LocalStore. Internal to src/store/local.
//
// Bytes are copied into staging buffers of part_bytes (from a pool shared by the store's
// writers); each full buffer is written at its offset of a temp file by a background task
// (O_DIRECT when parts are large and aligned), with at most max_parts_in_flight parts staged.
// Commit waits for the parts, writes the tail, fsyncs and publishes by rename; Abort, an error
// or destruction removes the temp file. Not thread-safe (one thread at a time).
#ifndef GRANARY_STORE_LOCAL_LOCAL_WRITER_H_
#define GRANARY_STORE_LOCAL_LOCAL_WRITER_H_

#include <memory>
#include <string_view>

#include "granary/status.h"
#include "granary/store.h"
#include "store/local/local_root.h"

namespace granary {

// A writer for `key` (already validated) under `root`.
Result<std::unique_ptr<ObjectWriter>> NewLocalWriter(std::shared_ptr<LocalRoot> root,
                                                     std::string_view key,
                                                     const WriterOptions& options);

}  // namespace granary

#endif  // GRANARY_STORE_LOCAL_LOCAL_WRITER_H_
