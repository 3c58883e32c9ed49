// Checkpointer: opening, starting saves, listing and loading. The persist side lives in
// checkpointer_persist.cc, the snapshot side in save_session.cc.
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpointer_impl.h"
#include "checkpoint/tensor_restore.h"

namespace granary {

Status CheckpointerOptions::Validate() const {
  if (budget_bytes != 0 && budget_bytes < (16u << 20)) {
    return InvalidArgumentError("checkpoint budget_bytes must be 0 (unbounded) or at least 16 MiB, got " +
                                std::to_string(budget_bytes));
  }
  if (world_size < 1 || world_size > checkpoint::kMaxWorldSize) {
    return InvalidArgumentError("checkpoint world_size must be in [1, 99999], got " + std::to_string(world_size));
  }
  if (rank >= world_size) {
    return InvalidArgumentError("checkpoint rank " + std::to_string(rank) + " is not below world_size " +
                                std::to_string(world_size));
  }
  if (data_file_bytes < 1) return InvalidArgumentError("checkpoint data_file_bytes must be >= 1");
  if (persist_nice < 0 || persist_nice > 19) {
    return InvalidArgumentError("checkpoint persist_nice must be in [0, 19], got " + std::to_string(persist_nice));
  }
  return Status::OK();
}

Result<std::unique_ptr<Checkpointer>> Checkpointer::Open(std::string_view url,
                                                         const CheckpointerOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  Result<std::unique_ptr<ObjectStore>> store = OpenStore(url);
  if (!store.ok()) return store.status().WithContext("checkpoint " + std::string(url));
  return Open(std::shared_ptr<ObjectStore>(std::move(store).value()), "", options);
}

Result<std::unique_ptr<Checkpointer>> Checkpointer::Open(std::shared_ptr<ObjectStore> store,
                                                         std::string root,
                                                         const CheckpointerOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  while (!root.empty() && root.back() == '/') root.pop_back();
  if (!root.empty()) GRANARY_RETURN_IF_ERROR(ValidateKey(root));
  return std::unique_ptr<Checkpointer>(
      new checkpoint::CheckpointerImpl(std::move(store), std::move(root), options));
}

namespace checkpoint {
namespace {

constexpr uint64_t kMiB = 1u << 20;
uint64_t AlignUp(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

Result<std::vector<uint64_t>> TensorLengths(const std::vector<TensorSpec>& specs) {
  std::vector<uint64_t> lengths;
  lengths.reserve(specs.size());
  std::unordered_set<std::string_view> names;
  for (const TensorSpec& spec : specs) {
    const std::string what = "tensor \"" + spec.name + "\"";
    if (spec.name.empty()) return InvalidArgumentError("a tensor has an empty name");
    if (!names.insert(spec.name).second) return InvalidArgumentError(what + " appears twice");
    Result<uint32_t> element = DtypeElementBytes(spec.dtype);
    if (!element.ok()) return element.status().WithContext(what);
    uint64_t n = *element;
    for (uint64_t d : spec.shape) {
      if (d != 0 && n > UINT64_MAX / d) return InvalidArgumentError(what + ": shape overflows");
      n *= d;
    }
    lengths.push_back(n);
  }
  return lengths;
}

// The newest step whose COMMIT decodes, if any. Lists the keys but reads only the newest
// COMMITs (ListCommittedSteps would read every one, on the caller's thread at each BeginSave).
Result<std::optional<uint64_t>> NewestCommittedStep(ObjectStore& store, const std::string& root) {
  const std::string prefix = JoinKey(root, kStepPrefix);
  const size_t root_len = prefix.size() - kStepPrefix.size();
  GRANARY_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, store.List(prefix));
  std::vector<uint64_t> steps;
  for (const ObjectInfo& info : objects) {
    if (std::optional<uint64_t> step = ParseCommitKey(std::string_view(info.key).substr(root_len))) {
      steps.push_back(*step);
    }
  }
  std::sort(steps.rbegin(), steps.rend());
  for (uint64_t step : steps) {
    Result<CommitRecord> commit = ReadCommit(store, root, step);
    if (commit.ok()) return std::optional<uint64_t>(step);
    const StatusCode code = commit.status().code();
    if (code != StatusCode::kDataLoss && code != StatusCode::kInvalidArgument && code != StatusCode::kNotFound) {
      return commit.status();  // a store error, not a damaged (invisible) COMMIT
    }
  }
  return std::optional<uint64_t>();
}

}  // namespace

CheckpointerImpl::CheckpointerImpl(std::shared_ptr<ObjectStore> store, std::string root,
                                   const CheckpointerOptions& options)
    : store_(std::move(store)), root_(std::move(root)), options_(options) {}

CheckpointerImpl::~CheckpointerImpl() {
  std::unique_lock<std::mutex> lock(mu_);
  JoinPersister(lock);
}

void CheckpointerImpl::JoinPersister(std::unique_lock<std::mutex>& lock) {
  // Another BeginSave may be joining (with mu_ released) or may have started the next save
  // meanwhile: loop until neither, so only one save ever persists.
  while (joining_ || persister_.joinable()) {
    if (joining_) {
      joined_cv_.wait(lock);
      continue;
    }
    std::thread t = std::move(persister_);
    joining_ = true;
    lock.unlock();
    t.join();
    lock.lock();
    joining_ = false;
    joined_cv_.notify_all();
  }
}

Status CheckpointerImpl::PrepareRing(uint64_t total_bytes, uint64_t* max_piece_bytes) {
  if (options_.budget_bytes == 0) {
    // Unbounded: one region per tensor, the whole state at once. Grow with some headroom so a
    // slightly larger state does not reallocate (and re-fault) the ring.
    const uint64_t need = std::max<uint64_t>(total_bytes, kMiB);
    if (!ring_ || ring_->capacity_bytes() < need) {
      ring_.reset();  // free the old ring before faulting in the new one
      GRANARY_ASSIGN_OR_RETURN(ring_, StagingRing::Create(AlignUp(need + need / 16, kMiB)));
    }
    *max_piece_bytes = ring_->capacity_bytes();
    return Status::OK();
  }
  if (!ring_) {
    GRANARY_ASSIGN_OR_RETURN(ring_, StagingRing::Create(options_.budget_bytes));
  }
  // Pieces of a quarter of the ring (whole checksum chunks) keep copying and writing overlapped.
  *max_piece_bytes = std::max<uint64_t>(kDefaultChunkBytes,
                                        ring_->capacity_bytes() / 4 / kDefaultChunkBytes * kDefaultChunkBytes);
  return Status::OK();
}

Result<std::unique_ptr<SaveSession>> CheckpointerImpl::BeginSave(uint64_t step,
                                                                 std::vector<TensorSpec> tensors,
                                                                 std::string user_metadata_json,
                                                                 std::string save_id) {
  const std::string what = "checkpoint step " + std::to_string(step);
  if (step > kMaxStep) return InvalidArgumentError(what + ": steps go up to 999999999999");
  Result<std::vector<uint64_t>> lengths = TensorLengths(tensors);
  if (!lengths.ok()) return lengths.status().WithContext(what);
  if (save_id.empty()) save_id = std::to_string(step);
  std::unique_lock<std::mutex> lock(mu_);
  if (current_ && !current_->Done() && options_.if_busy == IfBusy::kSkip) {
    auto skipped = std::make_shared<SaveState>(step, std::move(tensors), std::move(*lengths),
                                               std::move(user_metadata_json), std::move(save_id), true);
    return NewSaveSession(std::move(skipped), nullptr, 0);
  }
  JoinPersister(lock);  // waits for the previous save to be durable (or failed)
  Result<ObjectInfo> committed = store_->Stat(JoinKey(root_, CommitKey(step)));
  if (committed.ok()) return AlreadyExistsError(what + " is already committed in " + url());
  if (committed.status().code() != StatusCode::kNotFound) return committed.status().WithContext(what);
  Result<std::optional<uint64_t>> newest = NewestCommittedStep(*store_, root_);
  if (!newest.ok()) return newest.status().WithContext(what);
  if (*newest && step < **newest) {
    return FailedPreconditionError(what + " is not above the newest committed step " +
                                   std::to_string(**newest) + " in " + url() +
                                   " (steps only go up; remove newer steps with 'granary ckpt rm' to go back)");
  }
  uint64_t total = 0;
  for (uint64_t n : *lengths) total += AlignUp(n, kDirectIoAlignment);
  uint64_t max_piece = 0;
  GRANARY_RETURN_IF_ERROR(PrepareRing(total, &max_piece));
  auto save = std::make_shared<SaveState>(step, std::move(tensors), std::move(*lengths),
                                          std::move(user_metadata_json), std::move(save_id), false);
  if (options_.incremental) {
    std::lock_guard<std::mutex> base_lock(base_mu_);
    save->SetBase(base_);
  }
  if (options_.budget_bytes == 0) save->PersistAfterStaging();
  current_ = save;
  StagingRing* ring = ring_.get();
  persister_ = std::thread([this, save, ring, max_piece] { Persist(save, ring, max_piece); });
  return NewSaveSession(std::move(save), ring, max_piece);
}

Status CheckpointerImpl::WaitAll() {
  std::shared_ptr<SaveState> current;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current = current_;
  }
  return current ? current->Wait() : Status::OK();
}

Result<std::vector<uint64_t>> CheckpointerImpl::Steps() { return ListCommittedSteps(*store_, root_); }

Result<uint64_t> CheckpointerImpl::Latest() {
  Result<uint64_t> latest = ReadLatestStep(*store_, root_);
  if (!latest.ok() && latest.status().code() == StatusCode::kNotFound) {
    return NotFoundError("no committed checkpoint in " + url());
  }
  return latest;
}

Result<RankManifest> CheckpointerImpl::ReadRankManifest(uint64_t step) {
  GRANARY_ASSIGN_OR_RETURN(CommitRecord commit, ReadCommit(*store_, root_, step));
  if (commit.world_size != options_.world_size) {
    return FailedPreconditionError("step " + std::to_string(step) + " of " + url() + " was saved by " +
                                   std::to_string(commit.world_size) + " ranks, this checkpointer has " +
                                   std::to_string(options_.world_size) +
                                   " (load with the same world size, or reshard through granary.dcp)");
  }
  return ReadManifest(*store_, root_, commit, options_.rank);
}

Result<StepInfo> CheckpointerImpl::Describe(uint64_t step) {
  GRANARY_ASSIGN_OR_RETURN(RankManifest m, ReadRankManifest(step));
  StepInfo info;
  info.step = m.step;
  info.world_size = m.world_size;
  info.user_metadata_json = m.user_metadata_json;
  for (const TensorEntry& e : m.tensors) {
    info.tensors.push_back(StoredTensor{e.name, e.dtype, e.shape, e.global_shape, e.global_offset, e.length});
  }
  return info;
}

Status CheckpointerImpl::Load(uint64_t step, std::span<const LoadTarget> targets) {
  GRANARY_ASSIGN_OR_RETURN(RankManifest m, ReadRankManifest(step));
  std::unordered_map<std::string_view, const TensorEntry*> by_name;
  for (const TensorEntry& e : m.tensors) by_name.emplace(e.name, &e);
  std::vector<TensorRead> reads;
  reads.reserve(targets.size());
  std::unordered_set<const TensorEntry*> seen;
  for (const LoadTarget& t : targets) {
    auto it = by_name.find(t.name);
    if (it == by_name.end()) {
      return NotFoundError("tensor \"" + t.name + "\" is not in step " + std::to_string(step) + " of " + url());
    }
    seen.insert(it->second);
    reads.push_back(TensorRead{it->second, t.dest});
  }
  // Loads run one at a time: each may hold every block buffer (two batches in flight).
  std::lock_guard<std::mutex> lock(restore_mu_);
  if (!restore_blocks_) {
    BufferPool::Options options;
    options.buffer_bytes = kRestoreBlockBytes;
    options.max_buffers = 2 * kRestoreBlocksPerBatch;
    GRANARY_ASSIGN_OR_RETURN(restore_blocks_, BufferPool::Create(options));
  }
  Status s = RestoreTensors(*store_, root_, m, reads, *restore_blocks_);
  if (!s.ok()) return s.WithContext("step " + std::to_string(step) + " of " + url());
  // Every byte of the step was just checked: it can serve as the base of incremental saves.
  if (seen.size() == m.tensors.size()) SetBase(std::move(m));
  return Status::OK();
}

void CheckpointerImpl::SetBase(RankManifest manifest) {
  auto base = std::make_shared<const RankManifest>(std::move(manifest));
  std::lock_guard<std::mutex> lock(base_mu_);
  base_ = std::move(base);
}

}  // namespace checkpoint
}  // namespace granary
