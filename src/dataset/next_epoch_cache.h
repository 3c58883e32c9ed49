// NextEpochCache: a RAM cache of samples that keeps the ones needed soonest and evicts the ones
// needed last (Belady's rule), which is possible because every future epoch order is known. LRU
// keeps what was read recently, which under a fresh shuffle each epoch is no better than random.
//
// Priorities are absolute "use times": epoch * samples_per_epoch + position, so samples still to
// be used this epoch outrank everything needed in a later one. Thread-safe.
#ifndef GRANARY_DATASET_NEXT_EPOCH_CACHE_H_
#define GRANARY_DATASET_NEXT_EPOCH_CACHE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "granary/dataset.h"

namespace granary::dataset {

class NextEpochCache {
 public:
  explicit NextEpochCache(uint64_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

  // The cached copy of sample `index` (a one-sample batch), or nullptr.
  std::shared_ptr<Batch> Find(uint64_t index);
  // Offers sample `i` of `batch` for its next use at `use_time`. It is copied in if it fits, or
  // if samples needed later than it can be evicted to make room; otherwise it is not kept.
  void Offer(const Batch& batch, size_t i, uint64_t use_time);
  // After a hit: the sample's next use moves to `use_time`, or it is dropped (nullopt: this
  // reader will not need it again soon).
  void Update(uint64_t index, std::optional<uint64_t> use_time);
  // Drops samples whose use time has passed without a hit (an epoch was skipped or restarted).
  void DropBefore(uint64_t use_time);
  uint64_t bytes() const;

 private:
  struct Entry {
    std::shared_ptr<Batch> sample;
    uint64_t use_time = 0;
    uint64_t bytes = 0;
  };
  void EraseLocked(std::unordered_map<uint64_t, Entry>::iterator it);

  const uint64_t capacity_bytes_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, Entry> entries_;        // GUARDED_BY(mu_)
  std::set<std::pair<uint64_t, uint64_t>> by_use_;     // (use_time, index), GUARDED_BY(mu_)
  uint64_t bytes_ = 0;                                 // GUARDED_BY(mu_)
};

}  // namespace granary::dataset

#endif  // GRANARY_DATASET_NEXT_EPOCH_CACHE_H_
