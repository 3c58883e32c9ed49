// CheckpointerImpl: the Checkpointer of include/granary/checkpoint.h. Private to src/checkpoint.
//
// One save persists at a time: BeginSave waits for (or skips past) the previous save, sizes the
// staging ring, and starts a persister thread that drains the save's staged pieces into a
// RankWriter (checksums computed on the way, unchanged tensors deduplicated against the base
// manifest), then writes the manifest, commits and collects garbage (checkpointer_persist.cc).
#ifndef GRANARY_CHECKPOINT_CHECKPOINTER_IMPL_H_
#define GRANARY_CHECKPOINT_CHECKPOINTER_IMPL_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_writer.h"
#include "checkpoint/save_state.h"
#include "checkpoint/staging_ring.h"
#include "granary/checkpoint.h"

namespace granary::checkpoint {

class CheckpointerImpl final : public Checkpointer {
 public:
  CheckpointerImpl(std::shared_ptr<ObjectStore> store, std::string root,
                   const CheckpointerOptions& options);
  ~CheckpointerImpl() override;

  Result<std::unique_ptr<SaveSession>> BeginSave(uint64_t step, std::vector<TensorSpec> tensors,
                                                 std::string user_metadata_json,
                                                 std::string save_id) override;
  Status WaitAll() override;
  Result<std::vector<uint64_t>> Steps() override;
  Result<uint64_t> Latest() override;
  Result<StepInfo> Describe(uint64_t step) override;
  Status Load(uint64_t step, std::span<const LoadTarget> targets) override;
  Status Verify(uint64_t step) override;
  Status CollectGarbage() override;
  std::string url() const override { return store_->url() + (root_.empty() ? "" : "/" + root_); }
  const CheckpointerOptions& options() const override { return options_; }

 private:
  // Persister thread body (checkpointer_persist.cc).
  void Persist(std::shared_ptr<SaveState> save, StagingRing* ring, uint64_t max_piece_bytes);
  Status PersistPieces(SaveState& save, StagingRing* ring, RankWriter& writer, SaveStats* stats);
  Status CommitAcrossRanks(SaveState& save, const ManifestRef& ref);
  // Waits for the save in flight and joins its thread; returns with `lock` held and no persister
  // running or being joined, so the caller may start the next one. REQUIRES(mu_ held by `lock`)
  void JoinPersister(std::unique_lock<std::mutex>& lock);
  // Ring able to hold `total_bytes` (auto budget) or of budget_bytes; the largest piece.
  Status PrepareRing(uint64_t total_bytes, uint64_t* max_piece_bytes);
  Result<RankManifest> ReadRankManifest(uint64_t step);
  void SetBase(RankManifest manifest);

  const std::shared_ptr<ObjectStore> store_;
  const std::string root_;
  const CheckpointerOptions options_;

  std::mutex mu_;
  std::shared_ptr<SaveState> current_;  // the last save started. GUARDED_BY(mu_)
  std::thread persister_;               // its thread. GUARDED_BY(mu_)
  bool joining_ = false;                // a thread is joining the persister. GUARDED_BY(mu_)
  std::condition_variable joined_cv_;   // signalled when joining_ turns false
  std::unique_ptr<StagingRing> ring_;   // GUARDED_BY(mu_) (used by one save at a time)
  // Block buffers of the restore path (tensor_restore.h), allocated on the first Load, reused;
  // held by one Load at a time.
  std::mutex restore_mu_;
  std::unique_ptr<BufferPool> restore_blocks_;  // GUARDED_BY(restore_mu_)
  std::mutex base_mu_;
  // Incremental base: the manifest of the last save committed or fully loaded by this process.
  std::shared_ptr<const RankManifest> base_;  // GUARDED_BY(base_mu_)
};

// The SaveSession of a CheckpointerImpl save (save_session.cc).
std::unique_ptr<SaveSession> NewSaveSession(std::shared_ptr<SaveState> save, StagingRing* ring,
                                            uint64_t max_piece_bytes);

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_CHECKPOINTER_IMPL_H_
