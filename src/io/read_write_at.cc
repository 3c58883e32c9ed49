// IoEngine::ReadAt and IoEngine::WriteAt: chunked transfers of one range, with the head/tail
// handling O_DIRECT needs.
//
// On an O_DIRECT file a range is cut into pieces in file order. When the destination (source) is
// aligned relative to the file offset, the aligned middle goes straight between the caller's
// memory and the file, and at most two partial blocks go through an 8 KiB bounce buffer. When it
// is not (say dest = base + 1 while offset % 4096 == 0), everything goes through a bounce buffer
// in rounds of at most kMaxBounceBytes.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "granary/io.h"

namespace granary {
namespace {

constexpr uint64_t kAlign = kDirectIoAlignment;
constexpr size_t kDefaultChunkBytes = 4u << 20;
constexpr size_t kMaxBounceBytes = 16u << 20;

uint64_t AlignDown(uint64_t x) { return x & ~(kAlign - 1); }
uint64_t AlignUp(uint64_t x) { return AlignDown(x + kAlign - 1); }
bool IsAligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlign == 0; }

Result<bool> IsDirect(const File& file) {
  int flags = ::fcntl(file.fd(), F_GETFL);
  if (flags < 0) return ErrnoToStatus(errno, "fcntl " + file.path());
  return (flags & O_DIRECT) != 0;
}

Result<uint64_t> FileSize(const File& file) {
  struct stat st;
  if (::fstat(file.fd(), &st) != 0) return ErrnoToStatus(errno, "fstat " + file.path());
  return static_cast<uint64_t>(st.st_size);
}

Status TransferError(int64_t result, const char* verb, const File& file, uint64_t offset) {
  return ErrnoToStatus(static_cast<int>(-result),
                       std::string(verb) + " " + file.path() + " at offset " +
                           std::to_string(offset));
}

// Appends requests covering [offset, offset + length) of the file <-> buf, chunk_bytes each.
void AddChunks(std::vector<IoRequest>& requests, IoOpcode opcode, int fd, uint64_t offset,
               std::byte* buf, uint64_t length, size_t chunk_bytes) {
  for (uint64_t done = 0; done < length; done += chunk_bytes) {
    IoRequest r;
    r.opcode = opcode;
    r.fd = fd;
    r.offset = offset + done;
    r.buffer = buf + done;
    r.length = static_cast<size_t>(std::min<uint64_t>(chunk_bytes, length - done));
    requests.push_back(r);
  }
}

// Consumes completed read requests, which cover the caller's range contiguously in file order
// starting at or before *pos. Bytes of [*pos, end) are copied into dest (which starts at file
// offset `offset`) from requests whose `bounced` flag is set; direct ones already landed there.
// Advances *pos past the bytes read and sets *eof at the first short request.
Status Gather(const File& file, const std::vector<IoRequest>& requests,
              const std::vector<bool>& bounced, uint64_t offset, std::span<std::byte> dest,
              uint64_t* pos, bool* eof) {
  const uint64_t end = offset + dest.size();
  for (size_t i = 0; i < requests.size(); ++i) {
    const IoRequest& r = requests[i];
    uint64_t want_lo = std::max(r.offset, *pos);
    uint64_t want_hi = std::min<uint64_t>(r.offset + r.length, end);
    if (r.result < 0) return TransferError(r.result, "read", file, want_lo);
    uint64_t valid_hi = r.offset + static_cast<uint64_t>(r.result);
    uint64_t got_hi = std::min(valid_hi, want_hi);
    if (got_hi > want_lo) {
      if (bounced[i]) {
        std::memcpy(dest.data() + (want_lo - offset),
                    static_cast<const std::byte*>(r.buffer) + (want_lo - r.offset),
                    got_hi - want_lo);
      }
      *pos = got_hi;
    }
    if (valid_hi < want_hi) {
      *eof = true;
      return Status::OK();
    }
  }
  return Status::OK();
}

// Fills `block` (kAlign bytes, aligned) with what a padded O_DIRECT write of the tail block at
// `tail_lo` must preserve: the file's current bytes when any exist past `end`, else zeros.
Status PrepareTailBlock(IoEngine& engine, const File& file, uint64_t tail_lo, uint64_t end,
                        uint64_t old_size, std::byte* block) {
  std::memset(block, 0, kAlign);
  if (old_size <= end) return Status::OK();
  IoRequest r;
  r.opcode = IoOpcode::kRead;
  r.fd = file.fd();
  r.offset = tail_lo;
  r.buffer = block;
  r.length = kAlign;
  GRANARY_RETURN_IF_ERROR(engine.Run({&r, 1}));
  if (r.result < 0) {
    return TransferError(r.result, "read (for a partial block write)", file, tail_lo);
  }
  return Status::OK();
}

}  // namespace

Result<size_t> IoEngine::ReadAt(const File& file, uint64_t offset, std::span<std::byte> dest,
                                size_t chunk_bytes) {
  if (dest.empty()) return size_t{0};
  if (chunk_bytes == 0) chunk_bytes = kDefaultChunkBytes;
  GRANARY_ASSIGN_OR_RETURN(bool direct, IsDirect(file));
  const uint64_t end = offset + dest.size();
  std::vector<IoRequest> requests;
  std::vector<bool> bounced;
  uint64_t pos = offset;
  bool eof = false;

  if (!direct) {
    AddChunks(requests, IoOpcode::kRead, file.fd(), offset, dest.data(), dest.size(),
              chunk_bytes);
    bounced.assign(requests.size(), false);
    GRANARY_RETURN_IF_ERROR(Run(requests).WithContext("read " + file.path()));
    GRANARY_RETURN_IF_ERROR(Gather(file, requests, bounced, offset, dest, &pos, &eof));
    return static_cast<size_t>(pos - offset);
  }

  chunk_bytes = static_cast<size_t>(AlignUp(chunk_bytes));
  const uint64_t mid_lo = AlignUp(offset);
  const uint64_t mid_hi = AlignDown(end);
  // dest + (mid_lo - offset) is aligned exactly when dest and offset are equally misaligned.
  const bool dest_fits = (reinterpret_cast<uintptr_t>(dest.data()) - offset) % kAlign == 0;
  if (dest_fits && mid_lo < mid_hi) {
    AlignedBuffer bounce;
    if (mid_lo != offset || mid_hi != end) {
      GRANARY_ASSIGN_OR_RETURN(bounce, AlignedBuffer::Allocate(2 * kAlign));
    }
    if (mid_lo != offset) {  // head block
      AddChunks(requests, IoOpcode::kRead, file.fd(), AlignDown(offset), bounce.data(), kAlign,
                kAlign);
      bounced.push_back(true);
    }
    AddChunks(requests, IoOpcode::kRead, file.fd(), mid_lo, dest.data() + (mid_lo - offset),
              mid_hi - mid_lo, chunk_bytes);
    bounced.resize(requests.size(), false);
    if (mid_hi != end) {  // tail block
      AddChunks(requests, IoOpcode::kRead, file.fd(), mid_hi, bounce.data() + kAlign, kAlign,
                kAlign);
      bounced.push_back(true);
    }
    GRANARY_RETURN_IF_ERROR(Run(requests).WithContext("read " + file.path()));
    GRANARY_RETURN_IF_ERROR(Gather(file, requests, bounced, offset, dest, &pos, &eof));
    return static_cast<size_t>(pos - offset);
  }

  // Everything through a bounce buffer, in rounds.
  const uint64_t capacity =
      std::min<uint64_t>(AlignUp(end) - AlignDown(offset), kMaxBounceBytes);
  GRANARY_ASSIGN_OR_RETURN(AlignedBuffer bounce, AlignedBuffer::Allocate(capacity));
  while (pos < end && !eof) {
    const uint64_t lo = AlignDown(pos);
    const uint64_t hi = std::min(AlignUp(end), lo + capacity);
    requests.clear();
    AddChunks(requests, IoOpcode::kRead, file.fd(), lo, bounce.data(), hi - lo, chunk_bytes);
    bounced.assign(requests.size(), true);
    GRANARY_RETURN_IF_ERROR(Run(requests).WithContext("read " + file.path()));
    uint64_t before = pos;
    GRANARY_RETURN_IF_ERROR(Gather(file, requests, bounced, offset, dest, &pos, &eof));
    if (pos == before) break;  // nothing more (EOF exactly at a round boundary)
  }
  return static_cast<size_t>(pos - offset);
}

Status IoEngine::WriteAt(const File& file, uint64_t offset, std::span<const std::byte> src,
                         size_t chunk_bytes) {
  if (src.empty()) return Status::OK();
  if (chunk_bytes == 0) chunk_bytes = kDefaultChunkBytes;
  GRANARY_ASSIGN_OR_RETURN(bool direct, IsDirect(file));
  // Writes never modify the source; IoRequest just has one buffer type for both directions.
  std::byte* source = const_cast<std::byte*>(src.data());
  const uint64_t end = offset + src.size();
  std::vector<IoRequest> requests;

  auto run_and_check = [&]() -> Status {
    GRANARY_RETURN_IF_ERROR(Run(requests).WithContext("write " + file.path()));
    for (const IoRequest& r : requests) {
      if (r.result < 0) return TransferError(r.result, "write", file, r.offset);
      if (static_cast<size_t>(r.result) != r.length) {  // the engine finishes short writes
        return InternalError("write " + file.path() + " at offset " + std::to_string(r.offset) +
                             ": short write");
      }
    }
    return Status::OK();
  };

  if (!direct) {
    AddChunks(requests, IoOpcode::kWrite, file.fd(), offset, source, src.size(), chunk_bytes);
    return run_and_check();
  }

  if (offset % kAlign != 0) {
    return InvalidArgumentError("write " + file.path() + " at offset " + std::to_string(offset) +
                                ": O_DIRECT writes must start at a multiple of " +
                                std::to_string(kAlign));
  }
  chunk_bytes = static_cast<size_t>(AlignUp(chunk_bytes));
  const uint64_t tail_lo = AlignDown(end);
  const bool has_tail = tail_lo != end;
  uint64_t old_size = 0;
  if (has_tail) {
    GRANARY_ASSIGN_OR_RETURN(old_size, FileSize(file));
  }

  if (IsAligned(source)) {
    AlignedBuffer block;
    AddChunks(requests, IoOpcode::kWrite, file.fd(), offset, source, tail_lo - offset,
              chunk_bytes);
    if (has_tail) {
      GRANARY_ASSIGN_OR_RETURN(block, AlignedBuffer::Allocate(kAlign));
      GRANARY_RETURN_IF_ERROR(
          PrepareTailBlock(*this, file, tail_lo, end, old_size, block.data()));
      std::memcpy(block.data(), src.data() + (tail_lo - offset), end - tail_lo);
      AddChunks(requests, IoOpcode::kWrite, file.fd(), tail_lo, block.data(), kAlign, kAlign);
    }
    GRANARY_RETURN_IF_ERROR(run_and_check());
  } else {
    // Unaligned source: copy through a bounce buffer in rounds.
    const uint64_t capacity = std::min<uint64_t>(AlignUp(end) - offset, kMaxBounceBytes);
    GRANARY_ASSIGN_OR_RETURN(AlignedBuffer bounce, AlignedBuffer::Allocate(capacity));
    for (uint64_t lo = offset; lo < end; lo += capacity) {
      const uint64_t hi = std::min(AlignUp(end), lo + capacity);
      if (has_tail && hi > tail_lo) {
        GRANARY_RETURN_IF_ERROR(PrepareTailBlock(*this, file, tail_lo, end, old_size,
                                                 bounce.data() + (tail_lo - lo)));
      }
      std::memcpy(bounce.data(), src.data() + (lo - offset), std::min(hi, end) - lo);
      requests.clear();
      AddChunks(requests, IoOpcode::kWrite, file.fd(), lo, bounce.data(), hi - lo, chunk_bytes);
      GRANARY_RETURN_IF_ERROR(run_and_check());
    }
  }

  if (has_tail) {
    // The padded block may have grown the file past its true end; cut the padding off unless
    // someone has since written beyond it.
    const uint64_t want = std::max(old_size, end);
    GRANARY_ASSIGN_OR_RETURN(uint64_t now_size, FileSize(file));
    if (now_size > want && now_size <= tail_lo + kAlign) {
      if (::ftruncate(file.fd(), static_cast<off_t>(want)) != 0) {
        return ErrnoToStatus(errno, "truncate " + file.path() + " to " + std::to_string(want) +
                                        " after an O_DIRECT write");
      }
    }
  }
  return Status::OK();
}

}  // namespace granary
