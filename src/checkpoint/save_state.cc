#include "checkpoint/save_state.h"

#include <string_view>
#include <unordered_map>

#include "checkpoint/checkpoint_format.h"

namespace granary::checkpoint {

SaveState::SaveState(uint64_t step, std::vector<TensorSpec> specs, std::vector<uint64_t> lengths,
                     std::string metadata_json, std::string save_id, bool skipped)
    : step_(step),
      specs_(std::move(specs)),
      lengths_(std::move(lengths)),
      metadata_json_(std::move(metadata_json)),
      save_id_(std::move(save_id)),
      skipped_(skipped) {
  base_entries_.assign(specs_.size(), nullptr);
  stats_.step = step;
  stats_.skipped = skipped;
  if (skipped) done_ = true;
}

void SaveState::SetBase(std::shared_ptr<const RankManifest> base) {
  base_ = std::move(base);
  base_entries_.assign(specs_.size(), nullptr);
  if (!base_ || base_->chunk_bytes != kDefaultChunkBytes) return;
  std::unordered_map<std::string_view, const TensorEntry*> by_name;
  for (const TensorEntry& e : base_->tensors) by_name.emplace(e.name, &e);
  for (size_t i = 0; i < specs_.size(); ++i) {
    auto it = by_name.find(specs_[i].name);
    if (it == by_name.end()) continue;
    const TensorEntry& e = *it->second;
    if (e.dtype == specs_[i].dtype && e.shape == specs_[i].shape && e.length == lengths_[i] &&
        e.global_shape == specs_[i].global_shape && e.global_offset == specs_[i].global_offset) {
      base_entries_[i] = &e;
    }
  }
}

Status SaveState::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_; });
  return status_;
}

bool SaveState::Done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

SaveStats SaveState::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

double SaveState::stall_s() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stall_s_;
}

void SaveState::Push(const StagedPiece& piece) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(piece);
  }
  cv_.notify_all();
}

void SaveState::FinishStaging(double stall_s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    staging_done_ = true;
    stall_s_ = stall_s;
  }
  cv_.notify_all();
}

void SaveState::CancelStaging() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    staging_done_ = true;
    cancelled_ = true;
  }
  cv_.notify_all();
}

bool SaveState::Pop(StagedPiece* piece, bool* cancelled) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return staging_done_ || (!queue_.empty() && !persist_after_staging_); });
  *cancelled = cancelled_;
  if (queue_.empty()) return false;
  *piece = queue_.front();
  queue_.pop_front();
  return true;
}

void SaveState::Complete(Status status, SaveStats stats) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(status);
    stats_ = stats;
    stats_.stall_s = stall_s_;
    done_ = true;
  }
  cv_.notify_all();
}

}  // namespace granary::checkpoint
