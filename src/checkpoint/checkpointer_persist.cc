// The persist side of a save, on its own native thread: checksums each staged piece, skips
// tensors whose content equals the base manifest's (incremental), hands the rest to the
// RankWriter without copying (the ring region is freed when its bytes are on disk), then makes
// the manifest durable, commits across ranks, writes `latest` and runs retention.
#include <algorithm>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <unordered_map>

#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpointer_impl.h"
#include "core/checksum.h"
#include "core/clock.h"
#include "core/logging.h"

namespace granary::checkpoint {
namespace {

// Data files are written in parts of this size, this many in flight (16 x 4 MiB device writes).
constexpr size_t kPartBytes = 16u << 20;
constexpr size_t kPartsInFlight = 8;
// Checksum block: small enough to stay in L2 between the crc32c and the XXH3 pass.
constexpr size_t kHashBlockBytes = 256u << 10;

TensorData DataOf(const TensorSpec& spec) {
  TensorData t;
  t.name = spec.name;
  t.dtype = spec.dtype;
  t.shape = spec.shape;
  t.global_shape = spec.global_shape;
  t.global_offset = spec.global_offset;
  return t;
}

// Sleeps with a growing interval while polling the store for other ranks.
class Backoff {
 public:
  void Sleep() {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    delay_ms_ = std::min(delay_ms_ * 2, 500);
  }

 private:
  int delay_ms_ = 5;
};

}  // namespace

Status CheckpointerImpl::PersistPieces(SaveState& save, StagingRing* ring, RankWriter& writer,
                                       SaveStats* stats) {
  const uint64_t chunk_bytes = kDefaultChunkBytes;
  Status status;
  std::vector<uint32_t> crcs;
  Xxh3_128Hasher* hasher = nullptr;
  std::optional<Xxh3_128Hasher> hasher_storage;
  StagedPiece piece;
  bool cancelled = false;
  while (save.Pop(&piece, &cancelled)) {
    auto free_region = [ring, id = piece.region] {
      if (id != 0) ring->Free(id);
    };
    if (!status.ok()) {  // failed earlier: drain so the session never blocks on a full ring
      free_region();
      continue;
    }
    const TensorSpec& spec = save.specs()[piece.tensor];
    const uint64_t length = save.lengths()[piece.tensor];
    if (piece.offset == 0) {
      crcs.clear();
      hasher_storage.emplace();
      hasher = &*hasher_storage;
      stats->tensors++;
      stats->bytes_total += length;
    }
    // Pieces are multiples of chunk_bytes except a tensor's last, so chunks never straddle.
    // Both checksums walk each chunk in cache-sized blocks, so the bytes come from memory once.
    for (uint64_t pos = 0; pos < piece.bytes.size(); pos += chunk_bytes) {
      const size_t n = std::min<uint64_t>(chunk_bytes, piece.bytes.size() - pos);
      uint32_t crc = 0;
      for (size_t b = 0; b < n; b += kHashBlockBytes) {
        const std::byte* block = piece.bytes.data() + pos + b;
        const size_t m = std::min(kHashBlockBytes, n - b);
        crc = Crc32c(block, m, crc);
        hasher->Update(block, m);
      }
      crcs.push_back(crc);
    }
    const TensorEntry* base = save.base_entry(piece.tensor);
    if (piece.reused ||
        (base != nullptr && piece.offset == 0 && piece.last && base->xxh3 == hasher->Digest() &&
         base->chunk_crc32c == crcs)) {
      free_region();
      status = writer.AddExisting(*base);  // the session or we found the bytes unchanged
      stats->tensors_reused++;
      continue;
    }
    if (piece.offset == 0) status = writer.BeginTensor(DataOf(spec), length);
    if (status.ok() && !piece.bytes.empty()) {
      status = writer.AppendBorrowed(piece.bytes, free_region);  // frees the region on error too
    } else {
      free_region();
    }
    if (status.ok()) stats->bytes_written += piece.bytes.size();
    if (status.ok() && piece.last) status = writer.EndTensor(std::move(crcs), hasher->Digest());
  }
  if (status.ok() && cancelled) status = CancelledError("the save was abandoned before Finish");
  return status;
}

Status CheckpointerImpl::CommitAcrossRanks(SaveState& save, const ManifestRef& own) {
  const uint64_t step = save.step();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options_.commit_timeout_s);
  auto timed_out = [&] { return std::chrono::steady_clock::now() > deadline; };
  if (options_.rank != 0) {
    // Durable means committed: wait for rank 0 to publish, and check it published our manifest.
    for (Backoff backoff;; backoff.Sleep()) {
      Result<CommitRecord> commit = ReadCommit(*store_, root_, step);
      if (commit.ok()) {
        if (commit->manifests.size() > own.rank && commit->manifests[own.rank] == own) return Status::OK();
        return FailedPreconditionError("step " + std::to_string(step) +
                                       " was committed without this rank's manifest (another save of the same step)");
      }
      if (commit.status().code() != StatusCode::kNotFound) return commit.status();
      if (timed_out()) {
        return Status(StatusCode::kDeadlineExceeded,
                      "step " + std::to_string(step) + ": rank 0 did not commit within " +
                          std::to_string(options_.commit_timeout_s) + " s");
      }
    }
  }
  std::vector<ManifestRef> refs{own};
  for (uint32_t r = 1; r < options_.world_size; ++r) {
    const std::string key = JoinKey(root_, ManifestKey(step, r));
    for (Backoff backoff;; backoff.Sleep()) {
      Result<std::string> bytes = store_->GetAll(key);
      if (bytes.ok()) {
        Result<RankManifest> m = DecodeManifest(*bytes, key);
        // A manifest of another attempt (a crashed save of the same step) is not ours: wait.
        if (m.ok() && m->save_id == save.save_id() && m->step == step) {
          refs.push_back(ManifestRef{r, ManifestKey(step, r), bytes->size(), Crc32c(*bytes)});
          break;
        }
      } else if (bytes.status().code() != StatusCode::kNotFound) {
        return bytes.status();
      }
      if (timed_out()) {
        return Status(StatusCode::kDeadlineExceeded,
                      "step " + std::to_string(step) + ": rank " + std::to_string(r) +
                          "'s manifest " + key + " did not appear within " +
                          std::to_string(options_.commit_timeout_s) + " s");
      }
    }
  }
  std::sort(refs.begin(), refs.end(),
            [](const ManifestRef& a, const ManifestRef& b) { return a.rank < b.rank; });
  Status published = PublishCommit(*store_, root_, step, options_.world_size, refs);
  if (!published.ok()) {
    // A store may fail after the COMMIT became visible (LocalStore: the directory fsync after
    // the rename). The caller is told the save failed, so it must not stay visible: withdraw
    // our own COMMIT (never another save's: AlreadyExists, or a different record, is left).
    if (published.code() != StatusCode::kAlreadyExists) {
      Result<CommitRecord> visible = ReadCommit(*store_, root_, step);
      if (visible.ok() && visible->world_size == options_.world_size && visible->manifests == refs) {
        Status withdrawn = store_->Delete(JoinKey(root_, CommitKey(step)));
        if (!withdrawn.ok()) {
          GRANARY_LOG_WARN("checkpoint step %llu: could not withdraw the COMMIT of the failed save: %s",
                           static_cast<unsigned long long>(step), withdrawn.ToString().c_str());
        }
      }
    }
    return published;
  }
  // The step is committed (visible and durable) now: reporting a failure would tell the caller
  // it was not saved while it is the newest checkpoint. `latest` is only a hint readers verify.
  Status latest = WriteLatest(*store_, root_, step);
  if (!latest.ok()) {
    GRANARY_LOG_WARN("checkpoint step %llu is committed, but writing the latest hint failed: %s",
                     static_cast<unsigned long long>(step), latest.ToString().c_str());
  }
  return Status::OK();
}

void CheckpointerImpl::Persist(std::shared_ptr<SaveState> save, StagingRing* ring,
                               uint64_t max_piece_bytes) {
  if (options_.persist_nice > 0) {
    // Linux nice values are per thread: only this persister yields to the training threads.
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), options_.persist_nice);
  }
  Stopwatch persist;
  SaveStats stats;
  stats.step = save->step();
  RankWriterOptions writer_options;
  writer_options.data_file_bytes = options_.data_file_bytes;
  writer_options.writer.part_bytes = kPartBytes;
  writer_options.writer.max_parts_in_flight = kPartsInFlight;
  Status status;
  std::optional<RankManifest> manifest;
  {
    Result<std::unique_ptr<RankWriter>> writer = RankWriter::Create(
        store_.get(), root_, save->step(), options_.rank, options_.world_size, writer_options);
    if (writer.ok()) {
      status = (*writer)->SetUserMetadata(save->metadata_json());
      Status pieces = PersistPieces(*save, ring, **writer, &stats);
      if (status.ok()) status = pieces;
      if (status.ok()) {
        Result<RankManifest> m = (*writer)->Finish();  // data files durable
        if (m.ok()) manifest = std::move(m).value();
        status = m.status();
      }
    } else {
      status = writer.status();
      bool cancelled;
      StagedPiece piece;
      while (save->Pop(&piece, &cancelled)) {
        if (piece.region != 0) ring->Free(piece.region);
      }
    }
  }  // an unfinished RankWriter aborts its open data file here
  if (status.ok()) {
    manifest->save_id = save->save_id();
    Result<ManifestRef> ref = WriteManifest(*store_, root_, *manifest);
    status = ref.ok() ? CommitAcrossRanks(*save, *ref) : ref.status();
  }
  if (status.ok()) {
    SetBase(*manifest);
    if (options_.collect_garbage && options_.rank == 0) {
      Status gc = CollectGarbage();
      if (!gc.ok()) GRANARY_LOG_WARN("checkpoint step %llu: garbage collection failed: %s",
                                     static_cast<unsigned long long>(save->step()), gc.ToString().c_str());
    }
  }
  ring->WaitIdle();  // every borrowed region is back before the next save may reuse the ring
  stats.persist_s = persist.ElapsedSeconds() - save->stall_s();
  if (!status.ok()) {
    status = status.WithContext("checkpoint step " + std::to_string(save->step()) + " of " + url());
  }
  save->Complete(std::move(status), stats);
}

}  // namespace granary::checkpoint
