// The snapshot side of a save: copies tensors into the staging ring in order and hands the
// pieces to the persister. Large copies are split across threads: the copy is the whole stall
// a training loop sees, and one core rarely saturates memory bandwidth.
#include <algorithm>
#include <cstring>
#include <future>
#include <thread>

#include "checkpoint/checkpointer_impl.h"
#include "core/checksum.h"
#include "core/clock.h"
#include "core/thread_pool.h"

namespace granary::checkpoint {
namespace {

// Copies below this size stay on the calling thread.
constexpr size_t kParallelCopyMinBytes = 8u << 20;

ThreadPool& CopyPool() {
  static ThreadPool* pool = new ThreadPool(
      std::clamp<size_t>(std::thread::hardware_concurrency(), 2, 8) - 1, "granary-copy");
  return *pool;  // leaked on purpose: lives as long as the process
}

void ParallelCopy(std::byte* dst, const std::byte* src, size_t n) {
  if (n < kParallelCopyMinBytes) {
    std::memcpy(dst, src, n);
    return;
  }
  ThreadPool& pool = CopyPool();
  const size_t parts = pool.num_threads() + 1;
  // Split at 4 KiB boundaries so each thread writes whole pages.
  const size_t part = ((n / parts) + 4095) & ~size_t{4095};
  std::vector<std::future<void>> futures;
  for (size_t i = 1; i < parts && i * part < n; ++i) {
    const size_t begin = i * part;
    const size_t len = std::min(part, n - begin);
    futures.push_back(pool.Submit([=] { std::memcpy(dst + begin, src + begin, len); }));
  }
  std::memcpy(dst, src, std::min(part, n));
  for (auto& f : futures) f.get();
}

// Copies every (dst, src, n) job, the bytes split evenly over the copy pool and this thread.
struct CopyJob {
  std::byte* dst;
  const std::byte* src;
  size_t n;
};
void ParallelCopyJobs(const std::vector<CopyJob>& jobs) {
  size_t total = 0;
  for (const CopyJob& j : jobs) total += j.n;
  if (total < kParallelCopyMinBytes) {
    for (const CopyJob& j : jobs) std::memcpy(j.dst, j.src, j.n);
    return;
  }
  ThreadPool& pool = CopyPool();
  const size_t shares = pool.num_threads() + 1;
  const size_t share_bytes = (total + shares - 1) / shares;
  std::vector<std::vector<CopyJob>> parts(1);
  size_t in_part = 0;
  for (CopyJob j : jobs) {
    while (j.n > 0) {
      const size_t take = std::min(j.n, share_bytes - in_part);
      parts.back().push_back(CopyJob{j.dst, j.src, take});
      j.dst += take;
      j.src += take;
      j.n -= take;
      in_part += take;
      if (in_part == share_bytes) {
        parts.emplace_back();
        in_part = 0;
      }
    }
  }
  std::vector<std::future<void>> futures;
  for (size_t p = 1; p < parts.size(); ++p) {
    futures.push_back(pool.Submit([part = std::move(parts[p])] {
      for (const CopyJob& j : part) std::memcpy(j.dst, j.src, j.n);
    }));
  }
  for (const CopyJob& j : parts[0]) std::memcpy(j.dst, j.src, j.n);
  for (auto& f : futures) f.get();
}

class SaveSessionImpl final : public SaveSession {
 public:
  SaveSessionImpl(std::shared_ptr<SaveState> save, StagingRing* ring, uint64_t max_piece_bytes)
      : save_(std::move(save)), ring_(ring), max_piece_bytes_(max_piece_bytes) {}

  ~SaveSessionImpl() override {
    if (finished_ || save_->Skipped()) return;
    if (pending_) ring_->Free(pending_->region);
    save_->CancelStaging();  // the persister frees what was staged and abandons the save
  }

  std::shared_ptr<SaveHandle> handle() const override { return save_; }
  bool skipped() const override { return save_->Skipped(); }
  uint64_t max_piece_bytes() const override { return max_piece_bytes_; }

  Status CopyIn(size_t index, std::span<const std::byte> bytes) override {
    GRANARY_RETURN_IF_ERROR(CheckNext(index, 0));
    if (bytes.size() != save_->lengths()[index]) {
      return InvalidArgumentError("tensor \"" + save_->specs()[index].name + "\": " +
                                  std::to_string(bytes.size()) + " bytes given, its shape and dtype need " +
                                  std::to_string(save_->lengths()[index]));
    }
    if (bytes.empty()) return PushEmpty(index);
    // Incremental with a budget: a tensor staged in several pieces would be written before its
    // hash is known, so hash it here first; unchanged, it is neither staged nor written.
    const TensorEntry* base = save_->base_entry(index);
    if (base != nullptr && bytes.size() > max_piece_bytes_ &&
        Xxh3_128(bytes.data(), bytes.size()) == base->xxh3) {
      save_->Push(StagedPiece{index, 0, {}, 0, true, /*reused=*/true});
      next_tensor_++;
      return Status::OK();
    }
    for (uint64_t offset = 0; offset < bytes.size();) {
      GRANARY_ASSIGN_OR_RETURN(std::span<std::byte> dest, ReservePiece(index, offset));
      ParallelCopy(dest.data(), bytes.data() + offset, dest.size());
      offset += dest.size();
      GRANARY_RETURN_IF_ERROR(CommitPiece());
    }
    return Status::OK();
  }

  Status CopyInMany(std::span<const CopySource> sources) override {
    // Check everything first, so an error stages nothing.
    if (sources.empty()) return Status::OK();
    GRANARY_RETURN_IF_ERROR(CheckNext(sources[0].index, 0));
    for (size_t k = 0; k < sources.size(); ++k) {
      const size_t index = sources[k].index;
      if (index != sources[0].index + k || index >= save_->specs().size()) {
        return InvalidArgumentError("CopyInMany: tensor index " + std::to_string(index) +
                                    " is not the next of " + std::to_string(save_->specs().size()) +
                                    " (indices must be consecutive)");
      }
      if (sources[k].bytes.size() != save_->lengths()[index]) {
        return InvalidArgumentError("tensor \"" + save_->specs()[index].name + "\": " +
                                    std::to_string(sources[k].bytes.size()) +
                                    " bytes given, its shape and dtype need " +
                                    std::to_string(save_->lengths()[index]));
      }
    }
    size_t k = 0;
    while (k < sources.size()) {
      if (sources[k].bytes.size() > max_piece_bytes_) {  // several pieces: on its own
        GRANARY_RETURN_IF_ERROR(CopyIn(sources[k].index, sources[k].bytes));
        ++k;
        continue;
      }
      // A group of single-piece tensors of at most one piece's bytes in all: allocate their
      // regions in order, copy them together, then hand them to the persister in order.
      std::vector<StagedPiece> group;
      std::vector<CopyJob> jobs;
      uint64_t group_bytes = 0;
      Status status;
      for (; k < sources.size() && sources[k].bytes.size() <= max_piece_bytes_; ++k) {
        const CopySource& src = sources[k];
        if (!group.empty() && group_bytes + src.bytes.size() > max_piece_bytes_) break;
        StagedPiece piece{src.index, 0, {}, 0, true};
        if (!src.bytes.empty()) {
          Result<StagingRing::Region> region = ring_->Allocate(src.bytes.size());
          if (!region.ok()) {
            status = region.status();
            break;
          }
          piece.bytes = region->bytes;
          piece.region = region->id;
          jobs.push_back(CopyJob{region->bytes.data(), src.bytes.data(), src.bytes.size()});
        }
        group_bytes += src.bytes.size();
        group.push_back(piece);
      }
      if (!status.ok()) {
        for (const StagedPiece& piece : group) {
          if (piece.region != 0) ring_->Free(piece.region);
        }
        return status;
      }
      ParallelCopyJobs(jobs);
      for (const StagedPiece& piece : group) save_->Push(piece);
      next_tensor_ += group.size();
    }
    return Status::OK();
  }

  Result<std::span<std::byte>> ReservePiece(size_t index, uint64_t offset) override {
    GRANARY_RETURN_IF_ERROR(CheckNext(index, offset));
    if (pending_) return FailedPreconditionError("ReservePiece: previous piece not committed");
    const uint64_t length = save_->lengths()[index];
    if (length == 0) {
      GRANARY_RETURN_IF_ERROR(PushEmpty(index));
      return std::span<std::byte>();
    }
    const uint64_t n = std::min(max_piece_bytes_, length - offset);
    GRANARY_ASSIGN_OR_RETURN(StagingRing::Region region, ring_->Allocate(n));
    pending_ = StagedPiece{index, offset, region.bytes, region.id, offset + n == length};
    return region.bytes;
  }

  Status CommitPiece() override {
    if (!pending_) return FailedPreconditionError("CommitPiece without ReservePiece");
    save_->Push(*pending_);
    if (pending_->last) {
      next_tensor_++;
      next_offset_ = 0;
    } else {
      next_offset_ += pending_->bytes.size();
    }
    pending_.reset();
    return Status::OK();
  }

  Result<std::shared_ptr<SaveHandle>> Finish() override {
    if (save_->Skipped()) return std::shared_ptr<SaveHandle>(save_);
    if (finished_) return FailedPreconditionError("SaveSession: Finish called twice");
    if (pending_ || next_tensor_ != save_->specs().size()) {
      return FailedPreconditionError("step " + std::to_string(save_->step()) + ": " +
                                     std::to_string(next_tensor_) + " of " +
                                     std::to_string(save_->specs().size()) + " tensors staged");
    }
    finished_ = true;
    save_->FinishStaging(stall_.ElapsedSeconds());
    return std::shared_ptr<SaveHandle>(save_);
  }

 private:
  Status CheckNext(size_t index, uint64_t offset) const {
    if (save_->Skipped()) return FailedPreconditionError("the save was skipped; stage nothing");
    if (finished_) return FailedPreconditionError("SaveSession: staging after Finish");
    if (index >= save_->specs().size()) {
      return OutOfRangeError("tensor index " + std::to_string(index) + " out of range (" +
                             std::to_string(save_->specs().size()) + " tensors)");
    }
    if (index != next_tensor_ || offset != next_offset_) {
      return InvalidArgumentError("tensor \"" + save_->specs()[index].name +
                                  "\" staged out of order (next is tensor " +
                                  std::to_string(next_tensor_) + " at byte " +
                                  std::to_string(next_offset_) + ")");
    }
    return Status::OK();
  }

  Status PushEmpty(size_t index) {
    save_->Push(StagedPiece{index, 0, {}, 0, true});
    next_tensor_++;
    next_offset_ = 0;
    return Status::OK();
  }

  std::shared_ptr<SaveState> save_;
  StagingRing* ring_;
  const uint64_t max_piece_bytes_;
  size_t next_tensor_ = 0;
  uint64_t next_offset_ = 0;
  std::optional<StagedPiece> pending_;
  bool finished_ = false;
  Stopwatch stall_;  // from BeginSave's return, close enough to its start
};

}  // namespace

std::unique_ptr<SaveSession> NewSaveSession(std::shared_ptr<SaveState> save, StagingRing* ring,
                                            uint64_t max_piece_bytes) {
  return std::make_unique<SaveSessionImpl>(std::move(save), ring, max_piece_bytes);
}

}  // namespace granary::checkpoint
