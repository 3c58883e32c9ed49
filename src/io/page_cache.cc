#include "io/page_cache.h"

#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "granary/io.h"

namespace granary {
namespace {

struct CachestatRange {
  uint64_t off, len;
};
struct Cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
constexpr long kSysCachestat = 451;  // x86_64 and arm64 (generic table)

uint64_t AlignDown(uint64_t x) { return x & ~(kDirectIoAlignment - 1); }
uint64_t AlignUp(uint64_t x) { return AlignDown(x + kDirectIoAlignment - 1); }

}  // namespace

int64_t CachedPages(int fd, uint64_t begin, uint64_t end, uint64_t* pages) {
  CachestatRange range{AlignDown(begin), AlignUp(end) - AlignDown(begin)};
  *pages = range.len / kDirectIoAlignment;
  Cachestat cs{};
  if (::syscall(kSysCachestat, fd, &range, &cs, 0) != 0) return -1;
  return static_cast<int64_t>(cs.nr_cache);
}

std::optional<bool> AllCached(int fd, uint64_t begin, uint64_t end) {
  uint64_t pages = 0;
  const int64_t cached = CachedPages(fd, begin, end, &pages);
  if (cached < 0) return std::nullopt;
  return static_cast<uint64_t>(cached) >= pages;
}

size_t CopyResident(int fd, uint64_t offset, std::byte* dest, size_t length) {
  constexpr size_t kMaxCall = 1u << 30;  // below the kernel's per-call limit (2 GiB - 4 KiB)
  size_t done = 0;
  while (done < length) {
    const size_t want = std::min(length - done, kMaxCall);
    iovec iov{dest + done, want};
    const ssize_t r = ::preadv2(fd, &iov, 1, static_cast<off_t>(offset + done), RWF_NOWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    done += static_cast<size_t>(r);
    if (static_cast<size_t>(r) < want) break;
  }
  return done;
}

}  // namespace granary
