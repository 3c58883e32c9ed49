// MemoryStore: an ObjectStore held in process memory, for tests, examples and small caches.
//
// Objects live in a sorted map under a mutex; values are immutable shared buffers, so a Get
// copies from one version while a concurrent Put swaps in the next (never torn). A Writer
// buffers its bytes privately and publishes them at Commit. Nothing is ever written to disk:
// "durable" means "visible to every later call in this process".
//
// Thread-safe (every ObjectStore method); an ObjectWriter is used by one thread at a time and
// may outlive the store handle that made it.
#ifndef GRANARY_STORE_MEMORY_MEMORY_STORE_H_
#define GRANARY_STORE_MEMORY_MEMORY_STORE_H_

#include <memory>
#include <string_view>

#include "granary/status.h"
#include "granary/store.h"

namespace granary {

// The process-wide store named `name` (what OpenStore("mem://name") returns): created empty on
// first use and kept for the life of the process, so every handle with the same name sees the
// same objects. InvalidArgument if `name` is empty or contains '/', '?', '#' or NUL.
Result<std::unique_ptr<ObjectStore>> OpenMemoryStore(std::string_view name);

// A fresh, empty store that no name refers to; its objects are freed with the last handle.
// Its url() is "mem://#anonymous-<n>", which OpenStore rejects (it names no shared store).
std::unique_ptr<ObjectStore> NewMemoryStore();

}  // namespace granary

#endif  // GRANARY_STORE_MEMORY_MEMORY_STORE_H_
