// SaveState: everything one save shares between its SaveSession (the snapshot side, on the
// caller's thread), its persister thread and the caller's SaveHandle. Staged pieces flow through
// a queue from the session to the persister in tensor order. Thread-safe.
#ifndef GRANARY_CHECKPOINT_SAVE_STATE_H_
#define GRANARY_CHECKPOINT_SAVE_STATE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_manifest.h"
#include "granary/checkpoint.h"

namespace granary::checkpoint {

// Bytes [offset, offset + bytes.size()) of tensor `tensor`, held in staging ring region `region`
// (0 for a zero-size tensor, which has one empty piece).
struct StagedPiece {
  size_t tensor = 0;
  uint64_t offset = 0;
  std::span<const std::byte> bytes;
  uint64_t region = 0;
  bool last = false;  // the tensor's final piece
  // Incremental: the session found the tensor's bytes equal to its base entry and staged
  // nothing; the persister records the base entry (the piece is empty and last).
  bool reused = false;
};

class SaveState final : public SaveHandle {
 public:
  SaveState(uint64_t step, std::vector<TensorSpec> specs, std::vector<uint64_t> lengths,
            std::string metadata_json, std::string save_id, bool skipped);

  // SaveHandle.
  Status Wait() override;
  bool Done() const override;
  bool Skipped() const override { return skipped_; }
  uint64_t step() const override { return step_; }
  SaveStats stats() const override;

  // Session side.
  void Push(const StagedPiece& piece);
  void FinishStaging(double stall_s);
  void CancelStaging();

  // Unbounded staging: the persister starts only once staging is finished, so the copy (the
  // caller's stall) has the CPU and memory bandwidth to itself. Call before sharing the save.
  void PersistAfterStaging() { persist_after_staging_ = true; }
  // Persister side: the next piece, or false once staging finished (or was cancelled) and the
  // queue is empty. `*cancelled` tells which.
  bool Pop(StagedPiece* piece, bool* cancelled);
  // Records the outcome; wakes waiters. Called once.
  void Complete(Status status, SaveStats stats);

  const std::vector<TensorSpec>& specs() const { return specs_; }
  const std::vector<uint64_t>& lengths() const { return lengths_; }
  const std::string& metadata_json() const { return metadata_json_; }
  const std::string& save_id() const { return save_id_; }
  // Incremental base: the entry of the base manifest with tensor `index`'s name, dtype, shape,
  // sharding and chunk size, or null (no base, incremental off, or the layout changed).
  const TensorEntry* base_entry(size_t index) const { return base_entries_[index]; }
  // Sets the base (before the save is shared with other threads).
  void SetBase(std::shared_ptr<const RankManifest> base);
  double stall_s() const;

 private:
  const uint64_t step_;
  const std::vector<TensorSpec> specs_;
  const std::vector<uint64_t> lengths_;  // bytes of each tensor
  const std::string metadata_json_;
  const std::string save_id_;
  const bool skipped_;
  std::shared_ptr<const RankManifest> base_;   // keeps base_entries_ alive
  std::vector<const TensorEntry*> base_entries_;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<StagedPiece> queue_;  // GUARDED_BY(mu_)
  bool staging_done_ = false;      // GUARDED_BY(mu_)
  bool persist_after_staging_ = false;
  bool cancelled_ = false;         // GUARDED_BY(mu_)
  double stall_s_ = 0;             // GUARDED_BY(mu_)
  bool done_ = false;              // GUARDED_BY(mu_)
  Status status_;                  // GUARDED_BY(mu_)
  SaveStats stats_;                // GUARDED_BY(mu_)
};

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_SAVE_STATE_H_
