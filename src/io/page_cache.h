// Asking the page cache what it holds, without making it fetch anything: the probe both read
// paths (dataset batches, model loading) use to choose between copying from the page cache and
// reading from the device with O_DIRECT.
//
// Why not simply try a RWF_NOWAIT read first: one that misses still starts readahead around the
// miss (filemap_get_pages), so cold data would come from the device twice, once as readahead and
// once with O_DIRECT (measured: 466 MB from the disk for 154 MB of O_DIRECT reads). cachestat(2)
// (Linux 6.5) answers without side effects.
//
// Thread-safe; plain system calls.
#ifndef GRANARY_IO_PAGE_CACHE_H_
#define GRANARY_IO_PAGE_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <optional>

namespace granary {

// Pages of the 4 KiB-aligned cover of [begin, end) of `fd` that are in the page cache; `*pages`
// receives the cover's page count. -1 when the kernel cannot tell (no cachestat).
int64_t CachedPages(int fd, uint64_t begin, uint64_t end, uint64_t* pages);

// Whether every page of that cover is in the page cache; nullopt when the kernel cannot tell.
std::optional<bool> AllCached(int fd, uint64_t begin, uint64_t end);

// Copies what the page cache holds of [offset, offset + length) of the buffered descriptor `fd`
// into `dest` with preadv2(RWF_NOWAIT), never waiting for the device: the length of the resident
// prefix copied (0 on a miss or any error; the caller then reads another way). A short copy is
// not retried: asking again for a missing page is what starts readahead.
size_t CopyResident(int fd, uint64_t offset, std::byte* dest, size_t length);

}  // namespace granary

#endif  // GRANARY_IO_PAGE_CACHE_H_
