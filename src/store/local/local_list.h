// Sorted, paginated listing of a LocalStore's directory tree. Internal to src/store/local.
#ifndef GRANARY_STORE_LOCAL_LOCAL_LIST_H_
#define GRANARY_STORE_LOCAL_LOCAL_LIST_H_

#include <string>
#include <string_view>

#include "granary/status.h"
#include "granary/store.h"
#include "io/file_system.h"

namespace granary {

// Up to `max_objects` objects under `root` whose keys start with `prefix` and sort (bytewise)
// after `start_after`, in key order, plus the token for the next page. Walks the tree depth
// first in key order (a directory "d" sorts as "d/"), entering only directories that can hold
// matching keys and stopping as soon as the page is full, so a page costs O(page + depth)
// directory reads rather than a full walk. Entries whose names start with ".granary" are
// skipped everywhere. A directory removed during the walk is treated as empty.
// Thread-safe (reads only).
Result<ObjectPage> ListLocalTree(FileSystem* fs, const std::string& root,
                                 std::string_view prefix, std::string_view start_after,
                                 size_t max_objects);

}  // namespace granary

#endif  // GRANARY_STORE_LOCAL_LOCAL_LIST_H_
