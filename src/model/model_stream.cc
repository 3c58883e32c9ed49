// The read planner behind Model::Read and the TensorStream it returns.
//
// Plan (at Read): the sequence is cut into segments, runs of tensors that are neighbours in one
// file (each begins where the previous ends) up to ReadOptions::segment_bytes. A segment's memory
// (an Arena, one anonymous mapping, huge pages when large) starts with a mirror of the segment's
// 4 KiB-aligned file range, so a tensor sits at an address congruent to its file offset modulo
// 4 KiB and an O_DIRECT read of an aligned range lands straight in the tensors it covers. A tensor
// whose offset is not a multiple of its element alignment (safetensors does not pad, so everything
// after an odd-length tensor is misaligned) is "staged": it gets an aligned home after the mirror,
// its mirror range is never touched, and its cold bytes come through a pooled staging block and
// one copy. Segments are cut into pieces, one read each of at most request_bytes, at aligned file
// offsets.
//
// Run: io_threads workers claim pieces in plan order. A piece asks cachestat(2) whether its range
// is resident: yes -> a buffered read of its exact bytes straight into place (a copy from the page
// cache); no -> one O_DIRECT read of its aligned cover. An aligned cover also writes the edge
// bytes of the neighbouring tensors (the same file bytes), so a tensor is complete only when every
// piece whose cover overlaps it has finished: only then may the consumer write into it.
//
// Window: a segment's arena is allocated when its first piece is claimed, and only if the arenas
// read but not yet handed out fit in window_bytes (or none are held). Next() hands tensors out in
// sequence order; the stream drops its reference to an arena once every tensor of the segment is
// handed out, so the memory lives exactly as long as the consumer keeps tensors of it.
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <semaphore>
#include <thread>

#include <unistd.h>

#include "io/page_cache.h"
#include "model/model_impl.h"

namespace granary::model {
namespace {

constexpr uint64_t kAlign = kDirectIoAlignment;
constexpr uint64_t kHugePage = 2u << 20;
// Alignment of staged tensors' homes (what torch gives its own allocations).
constexpr uint64_t kHomeAlign = 64;

uint64_t AlignDown(uint64_t x, uint64_t a = kAlign) { return x / a * a; }
uint64_t AlignUp(uint64_t x, uint64_t a = kAlign) { return AlignDown(x + a - 1, a); }

// The memory of one segment: an anonymous private mapping, 2 MiB-aligned with transparent huge
// pages when it is at least that large (faulting in 2 MiB at a time is several times faster on
// this kind of VM). Untouched pages cost nothing, so the mirror ranges of staged tensors are free.
class Arena {
 public:
  static Result<std::shared_ptr<Arena>> Create(uint64_t bytes) {
    const bool huge = bytes >= kHugePage;
    const uint64_t map_bytes = AlignUp(bytes) + (huge ? kHugePage : 0);
    void* p = ::mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (p == MAP_FAILED) {
      return ResourceExhaustedError("cannot map " + std::to_string(bytes) +
                                    " bytes for model tensors: " + std::strerror(errno));
    }
    auto arena = std::shared_ptr<Arena>(new Arena(p, map_bytes));
    arena->data_ = static_cast<std::byte*>(p);
    if (huge) {
      arena->data_ = reinterpret_cast<std::byte*>(
          AlignUp(reinterpret_cast<uintptr_t>(p), kHugePage));
      ::madvise(arena->data_, AlignUp(bytes), MADV_HUGEPAGE);
    }
    return arena;
  }
  // The file's bytes [offset, offset + bytes) (offset aligned) as private, copy-on-write memory,
  // populated up front (no page faults later while the pages stay cached). nullptr if the kernel
  // refuses; the caller then copies instead.
  static std::shared_ptr<Arena> MapFile(int fd, uint64_t offset, uint64_t bytes) {
    // Populated read-only, then made writable: populating a writable private mapping would
    // copy every page (a write fault each), which is the very copy this avoids. Writes later
    // copy just the page written.
    void* p = ::mmap(nullptr, AlignUp(bytes), PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd,
                     static_cast<off_t>(offset));
    if (p == MAP_FAILED) return nullptr;
    if (::mprotect(p, AlignUp(bytes), PROT_READ | PROT_WRITE) != 0) {
      ::munmap(p, AlignUp(bytes));
      return nullptr;
    }
    auto arena = std::shared_ptr<Arena>(new Arena(p, AlignUp(bytes)));
    arena->data_ = static_cast<std::byte*>(p);
    return arena;
  }
  ~Arena() { ::munmap(map_, map_bytes_); }
  std::byte* data() const { return data_; }

 private:
  Arena(void* map, uint64_t map_bytes) : map_(map), map_bytes_(map_bytes) {}
  void* map_;
  uint64_t map_bytes_;
  std::byte* data_ = nullptr;
};

// A buffered read of [offset, offset + length) straight into `dest`, on the calling thread:
// bytes read (fewer only at end of file) or -errno. Not through the IoEngine: io_uring tries a
// buffered read without blocking first, and one whose destination is fresh memory (which must
// be faulted in) is handed to an io-wq worker thread; measured on 2 GiB resident, that path
// reached 2-3 GB/s where plain pread into the same fresh huge pages reaches 6.7 GB/s.
int64_t CopyFromPageCache(int fd, uint64_t offset, std::byte* dest, size_t length) {
  size_t done = 0;
  while (done < length) {
    const ssize_t r = ::pread(fd, dest + done, std::min<size_t>(length - done, 1u << 30),
                              static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<int64_t>(done);
}

struct PlannedTensor {
  size_t index = 0;     // into the model's tensors
  uint32_t segment = 0;
  uint64_t home = 0;    // offset of the bytes in the segment's arena
  bool staged = false;
  uint32_t pending = 0;  // pieces that still write its memory; guarded by the stream's mutex
};

struct Segment {
  uint32_t file = 0;
  uint64_t cover_begin = 0;  // file offset at arena offset 0 (aligned)
  uint64_t arena_bytes = 0;
  size_t first = 0, end = 0;  // planned tensors [first, end)
  size_t handed = 0;
  bool allocated = false;
  bool mapped = false;        // the arena maps the file (ReadOptions::map_resident)
  bool has_staged = false;
  std::shared_ptr<Arena> arena;
};

struct Piece {
  uint32_t segment = 0;
  uint64_t begin = 0, end = 0;  // exact file bytes
  int64_t staged = -1;          // the planned tensor a staged piece belongs to
  std::vector<uint32_t> touches;  // planned tensors whose `pending` counts this piece
};

class Stream final : public TensorStream {
 public:
  Stream(const ModelImpl& model, const ReadOptions& options)
      : model_(model), options_(options),
        engine_(options.engine != nullptr ? *options.engine : IoEngine::Default()) {}

  ~Stream() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    out_cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  Status Plan(const std::vector<size_t>& sequence);
  void Start();
  Result<std::optional<LoadedTensor>> Next() override;
  ReadStats stats() const override;

 private:
  const ModelTensor& tensor(size_t planned) const {
    return model_.tensors()[planned_[planned].index];
  }
  void PlanSegment(uint32_t seg);
  void AddPieces(uint32_t seg, uint64_t begin, uint64_t end, int64_t staged);
  bool Claimable(size_t piece) const;
  std::shared_ptr<Arena> MapIfResident(const Segment& seg) const;
  void Worker();
  Status RunPiece(const Piece& piece, std::byte* arena);
  Status PieceError(const Piece& piece, const std::string& what) const;
  int64_t CopyFromPageCacheLimited(int fd, uint64_t offset, std::byte* dest, size_t length) {
    copy_slots_.acquire();
    const int64_t got = CopyFromPageCache(fd, offset, dest, length);
    copy_slots_.release();
    return got;
  }

  const ModelImpl& model_;
  const ReadOptions options_;
  IoEngine& engine_;
  std::unique_ptr<BufferPool> staging_;

  std::vector<PlannedTensor> planned_;
  std::vector<Segment> segments_;
  std::vector<Piece> pieces_;
  std::vector<std::thread> threads_;

  // Copies from the page cache are CPU work: at most one per core runs at a time, so the oldest
  // pieces (the consumer's next tensor) finish first instead of sharing the cores with all the
  // others (warm, 8 copies on 2 cores doubled the time to the first tensor).
  std::counting_semaphore<256> copy_slots_{
      static_cast<ptrdiff_t>(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, 256))};

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // workers: a piece became claimable, or stop
  std::condition_variable out_cv_;   // consumer: a tensor completed, or an error
  size_t next_piece_ = 0;
  size_t next_out_ = 0;
  uint64_t window_used_ = 0;
  bool stop_ = false;
  Status error_;
  ReadStats stats_;  // guarded by mu_
};

Status Stream::Plan(const std::vector<size_t>& sequence) {
  const auto& tensors = model_.tensors();
  planned_.reserve(sequence.size());
  // Under a window, segments are at most a quarter of it, so several can be in flight.
  const uint64_t segment_limit =
      options_.window_bytes == 0
          ? options_.segment_bytes
          : std::min(options_.segment_bytes, std::max<uint64_t>(options_.window_bytes / 4, 1));
  uint64_t prev_end = 0, seg_bytes = 0;
  for (size_t index : sequence) {
    const ModelTensor& t = tensors[index];
    const bool joins = !segments_.empty() && segments_.back().file == t.file &&
                       t.offset == prev_end &&
                       (seg_bytes + t.bytes <= segment_limit || t.bytes == 0);
    if (!joins) {
      Segment seg;
      seg.file = t.file;
      seg.first = planned_.size();
      segments_.push_back(seg);
      seg_bytes = 0;
    }
    PlannedTensor p;
    p.index = index;
    p.segment = static_cast<uint32_t>(segments_.size() - 1);
    p.staged = t.bytes > 0 && t.offset % DTypeAlignment(model_.dtype(index)) != 0;
    planned_.push_back(p);
    segments_.back().end = planned_.size();
    seg_bytes += t.bytes;
    prev_end = t.offset + t.bytes;
  }
  for (uint32_t s = 0; s < segments_.size(); ++s) PlanSegment(s);
  if (std::any_of(planned_.begin(), planned_.end(),
                  [](const PlannedTensor& p) { return p.staged; })) {
    BufferPool::Options pool;
    pool.buffer_bytes = options_.request_bytes;
    pool.max_buffers = options_.io_threads;
    GRANARY_ASSIGN_OR_RETURN(staging_, BufferPool::Create(pool));
  }
  return Status::OK();
}

// Lays out one segment's arena (mirror, then staged homes) and cuts it into pieces.
void Stream::PlanSegment(uint32_t s) {
  Segment& seg = segments_[s];
  uint64_t lo = UINT64_MAX, hi = 0;
  for (size_t i = seg.first; i < seg.end; ++i) {
    const ModelTensor& t = tensor(i);
    if (planned_[i].staged || t.bytes == 0) continue;
    lo = std::min(lo, t.offset);
    hi = std::max(hi, t.offset + t.bytes);
  }
  seg.cover_begin = lo == UINT64_MAX ? 0 : AlignDown(lo);
  uint64_t next_home = lo == UINT64_MAX ? 0 : AlignUp(hi) - seg.cover_begin;
  for (size_t i = seg.first; i < seg.end; ++i) {
    const ModelTensor& t = tensor(i);
    PlannedTensor& p = planned_[i];
    if (t.bytes == 0) continue;
    if (p.staged) {
      seg.has_staged = true;
      p.home = AlignUp(next_home, kHomeAlign);
      next_home = p.home + t.bytes;
    } else {
      p.home = t.offset - seg.cover_begin;
    }
  }
  seg.arena_bytes = next_home;
  // Pieces: runs of mirrored neighbours, and each staged tensor on its own.
  uint64_t run_begin = 0, run_end = 0;
  bool in_run = false;
  for (size_t i = seg.first; i < seg.end; ++i) {
    const ModelTensor& t = tensor(i);
    if (t.bytes == 0) continue;
    if (planned_[i].staged) {
      if (in_run) AddPieces(s, run_begin, run_end, -1);
      in_run = false;
      AddPieces(s, t.offset, t.offset + t.bytes, static_cast<int64_t>(i));
      continue;
    }
    if (!in_run) run_begin = t.offset;
    in_run = true;
    run_end = t.offset + t.bytes;
  }
  if (in_run) AddPieces(s, run_begin, run_end, -1);
}

// Cuts [begin, end) at aligned offsets into pieces of at most request_bytes of aligned cover,
// and counts each piece against the tensors whose memory its cover writes.
void Stream::AddPieces(uint32_t s, uint64_t begin, uint64_t end, int64_t staged) {
  const Segment& seg = segments_[s];
  const uint64_t step = options_.request_bytes;
  size_t scan = seg.first;  // tensors before it end before this piece's cover
  for (uint64_t cut = AlignDown(begin); cut < end; cut += step) {
    Piece piece;
    piece.segment = s;
    piece.begin = std::max(begin, cut);
    piece.end = std::min(end, cut + step);
    piece.staged = staged;
    if (staged >= 0) {
      piece.touches.push_back(static_cast<uint32_t>(staged));
    } else {
      const uint64_t lo = AlignDown(piece.begin), hi = AlignUp(piece.end);
      while (scan < seg.end && tensor(scan).offset + tensor(scan).bytes <= lo) ++scan;
      for (size_t i = scan; i < seg.end && tensor(i).offset < hi; ++i) {
        if (planned_[i].staged || tensor(i).bytes == 0) continue;
        piece.touches.push_back(static_cast<uint32_t>(i));
      }
    }
    for (uint32_t t : piece.touches) ++planned_[t].pending;
    pieces_.push_back(std::move(piece));
  }
}

void Stream::Start() {
  const size_t n = std::min(options_.io_threads, pieces_.size());
  threads_.reserve(n);
  for (size_t i = 0; i < n; ++i) threads_.emplace_back([this] { Worker(); });
}

bool Stream::Claimable(size_t piece) const {
  const Segment& seg = segments_[pieces_[piece].segment];
  return seg.allocated || options_.window_bytes == 0 || window_used_ == 0 ||
         window_used_ + seg.arena_bytes <= options_.window_bytes;
}

// A mapping of the segment's file range if the file is local and the whole range is in the
// page cache; nullptr otherwise (the segment is then read into anonymous memory).
std::shared_ptr<Arena> Stream::MapIfResident(const Segment& seg) const {
  const FileSource& src = model_.source(seg.file);
  if (!src.buffered.is_open() || seg.arena_bytes == 0) return nullptr;
  if (!AllCached(src.buffered.fd(), seg.cover_begin, seg.cover_begin + seg.arena_bytes)
           .value_or(false)) {
    return nullptr;
  }
  return Arena::MapFile(src.buffered.fd(), seg.cover_begin, seg.arena_bytes);
}

void Stream::Worker() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] {
      return stop_ || !error_.ok() || next_piece_ >= pieces_.size() || Claimable(next_piece_);
    });
    if (stop_ || !error_.ok() || next_piece_ >= pieces_.size()) return;
    const Piece& piece = pieces_[next_piece_++];
    Segment& seg = segments_[piece.segment];
    if (!seg.allocated && options_.map_resident && !seg.has_staged) {
      seg.arena = MapIfResident(seg);
      seg.mapped = seg.arena != nullptr;
    }
    if (!seg.allocated && !seg.mapped) {
      Result<std::shared_ptr<Arena>> arena = Arena::Create(seg.arena_bytes);
      if (!arena.ok()) {
        error_ = arena.status().WithContext(model_.source(seg.file).name + ": tensor " +
                                            tensor(seg.first).name);
        out_cv_.notify_all();
        work_cv_.notify_all();
        return;
      }
      seg.arena = std::move(*arena);
    }
    if (!seg.allocated) {
      seg.allocated = true;
      window_used_ += seg.arena_bytes;
      stats_.segments++;
      stats_.peak_window_bytes = std::max(stats_.peak_window_bytes, window_used_);
    }
    std::shared_ptr<Arena> arena = seg.arena;
    lock.unlock();
    Status status = RunPiece(piece, arena->data());
    lock.lock();
    if (!status.ok()) {
      if (error_.ok()) error_ = std::move(status);
      out_cv_.notify_all();
      work_cv_.notify_all();
      return;
    }
    stats_.requests++;
    bool completed = false;
    for (uint32_t t : piece.touches) completed |= --planned_[t].pending == 0;
    if (completed) out_cv_.notify_all();
  }
}

Status Stream::PieceError(const Piece& piece, const std::string& what) const {
  const ModelTensor& t = piece.staged >= 0 ? tensor(static_cast<size_t>(piece.staged))
                                           : tensor(piece.touches.front());
  return DataLossError(model_.source(segments_[piece.segment].file).name + ": tensor " + t.name +
                       ": " + what);
}

// Reads one piece into place (see the file comment). Runs without the lock.
Status Stream::RunPiece(const Piece& piece, std::byte* arena) {
  const Segment& seg = segments_[piece.segment];
  const FileSource& src = model_.source(seg.file);
  const size_t length = piece.end - piece.begin;
  std::byte* dest =
      piece.staged >= 0
          ? arena + planned_[piece.staged].home + (piece.begin - tensor(piece.staged).offset)
          : arena + (piece.begin - seg.cover_begin);
  // The file shrank after Open validated it: name the first tensor the read left incomplete.
  auto short_read = [&](uint64_t got_end) {
    const ModelTensor* cut = &tensor(piece.staged >= 0 ? static_cast<size_t>(piece.staged)
                                                       : piece.touches.front());
    for (uint32_t t : piece.touches) {
      if (tensor(t).offset + tensor(t).bytes > got_end) {
        cut = &tensor(t);
        break;
      }
    }
    struct stat st {};
    const std::string size = ::fstat(src.buffered.is_open() ? src.buffered.fd() : -1, &st) == 0
                                 ? std::to_string(st.st_size)
                                 : "at most " + std::to_string(got_end);
    return DataLossError(src.name + ": tensor " + cut->name + ": the file is " + size +
                         " bytes now, shorter than the tensor's end at byte " +
                         std::to_string(cut->offset + cut->bytes) +
                         " (truncated after it was opened?)");
  };
  auto where = [&] {
    const ModelTensor& t = piece.staged >= 0 ? tensor(static_cast<size_t>(piece.staged))
                                             : tensor(piece.touches.front());
    return src.name + ": tensor " + t.name + ": read at byte " + std::to_string(piece.begin);
  };
  auto io_error = [&](const Status& s) { return s.WithContext(where()); };
  auto errno_error = [&](int64_t result) {
    return ErrnoToStatus(static_cast<int>(-result), where());
  };

  if (seg.mapped) {  // the mapping already holds the bytes
    std::lock_guard<std::mutex> lock(mu_);
    stats_.mapped_bytes += length;
    return Status::OK();
  }
  if (!src.buffered.is_open()) {  // no local file: a ranged read from the store
    Result<size_t> got = src.store->Get(src.key, piece.begin, {dest, length});
    if (!got.ok()) return io_error(got.status());
    if (*got < length) return short_read(piece.begin + *got);
    std::lock_guard<std::mutex> lock(mu_);
    stats_.store_bytes += length;
    return Status::OK();
  }

  const uint64_t lo = AlignDown(piece.begin), hi = AlignUp(piece.end);
  auto copied = [&](size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.cached_bytes += bytes;
    return Status::OK();
  };
  bool buffered = !options_.direct_io || !src.direct.is_open();
  if (!buffered) {
    const std::optional<bool> resident = AllCached(src.buffered.fd(), lo, hi);
    if (!resident) {  // no cachestat: try the page cache without waiting, else the device
      if (CopyResident(src.buffered.fd(), piece.begin, dest, length) == length) {
        return copied(length);
      }
    }
    buffered = resident.value_or(false);
  }
  if (buffered) {
    const int64_t got = CopyFromPageCacheLimited(src.buffered.fd(), piece.begin, dest, length);
    if (got < 0) return errno_error(got);
    if (static_cast<size_t>(got) < length) return short_read(piece.begin + got);
    return copied(length);
  }

  // Cold: one O_DIRECT read of the aligned cover, into place or into a staging block.
  BufferPool::Lease lease;
  std::byte* target = arena + (lo - seg.cover_begin);
  if (piece.staged >= 0) {
    Result<BufferPool::Lease> got = staging_->Acquire();
    if (!got.ok()) return io_error(got.status());
    lease = std::move(*got);
    target = lease.data();
  }
  IoRequest r{IoOpcode::kRead, src.direct.fd(), lo, target, hi - lo};
  if (Status s = engine_.Run({&r, 1}); !s.ok()) return io_error(s);
  if (r.result < 0) return errno_error(r.result);
  if (lo + static_cast<uint64_t>(r.result) < piece.end) return short_read(lo + r.result);
  if (piece.staged >= 0) std::memcpy(dest, target + (piece.begin - lo), length);
  std::lock_guard<std::mutex> lock(mu_);
  stats_.direct_bytes += hi - lo;
  if (piece.staged >= 0) stats_.staged_bytes += length;
  return Status::OK();
}

Result<std::optional<LoadedTensor>> Stream::Next() {
  std::unique_lock<std::mutex> lock(mu_);
  if (next_out_ >= planned_.size()) return std::optional<LoadedTensor>();
  // Tensors completed before a failure are still handed out; the error comes at the first one
  // that is incomplete (it names the tensor whose read failed, which may be a later one).
  out_cv_.wait(lock,
               [&] { return stop_ || !error_.ok() || planned_[next_out_].pending == 0; });
  if (planned_[next_out_].pending != 0) {
    return error_.ok() ? CancelledError("the tensor stream was closed") : error_;
  }
  const PlannedTensor& p = planned_[next_out_++];
  Segment& seg = segments_[p.segment];
  const ModelTensor& t = model_.tensors()[p.index];
  LoadedTensor out;
  out.index = p.index;
  if (t.bytes > 0) {
    out.data = {seg.arena->data() + p.home, t.bytes};
    out.owner = seg.arena;
  }
  stats_.bytes += t.bytes;
  if (++seg.handed == seg.end - seg.first) {
    if (seg.allocated) window_used_ -= seg.arena_bytes;
    seg.arena.reset();
    work_cv_.notify_all();
  }
  return std::optional<LoadedTensor>(std::move(out));
}

ReadStats Stream::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace

Result<std::unique_ptr<TensorStream>> NewTensorStream(const ModelImpl& model,
                                                      std::vector<size_t> sequence,
                                                      const ReadOptions& options) {
  auto stream = std::make_unique<Stream>(model, options);
  GRANARY_RETURN_IF_ERROR(stream->Plan(sequence));
  stream->Start();
  return std::unique_ptr<TensorStream>(std::move(stream));
}

}  // namespace granary::model
