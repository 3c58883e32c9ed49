#include "dataset/next_epoch_cache.h"

#include "dataset/loader_batches.h"

namespace granary::dataset {
namespace {

// Bookkeeping per entry (map node, set node, batch object), so a cache of tiny samples still
// respects its byte budget.
constexpr uint64_t kEntryOverheadBytes = 192;

uint64_t SampleBytes(const Batch& batch, size_t i) {
  uint64_t n = batch.key(i).size() + kEntryOverheadBytes;
  for (size_t j = 0; j < batch.num_fields(i); ++j) {
    n += batch.field_name(i, j).size() + batch.field(i, j).size();
  }
  return n;
}

}  // namespace

std::shared_ptr<Batch> NextEpochCache::Find(uint64_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(index);
  return it == entries_.end() ? nullptr : it->second.sample;
}

void NextEpochCache::Offer(const Batch& batch, size_t i, uint64_t use_time) {
  if (capacity_bytes_ == 0 || !batch.ok(i)) return;
  const uint64_t need = SampleBytes(batch, i);
  if (need > capacity_bytes_) return;
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t index = batch.index(i);
  if (auto it = entries_.find(index); it != entries_.end()) {
    // Already held (a repeated index): keep the sooner use.
    if (use_time < it->second.use_time) {
      by_use_.erase({it->second.use_time, index});
      it->second.use_time = use_time;
      by_use_.insert({use_time, index});
    }
    return;
  }
  // Evict samples needed later than this one until it fits; give up if that is not enough.
  while (bytes_ + need > capacity_bytes_) {
    if (by_use_.empty()) return;
    auto last = std::prev(by_use_.end());
    if (last->first <= use_time) return;
    EraseLocked(entries_.find(last->second));
  }
  Entry e;
  e.sample = CopySample(batch, i);
  e.use_time = use_time;
  e.bytes = need;
  bytes_ += need;
  by_use_.insert({use_time, index});
  entries_.emplace(index, std::move(e));
}

void NextEpochCache::Update(uint64_t index, std::optional<uint64_t> use_time) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(index);
  if (it == entries_.end()) return;
  if (!use_time) {
    EraseLocked(it);
    return;
  }
  by_use_.erase({it->second.use_time, index});
  it->second.use_time = *use_time;
  by_use_.insert({*use_time, index});
}

void NextEpochCache::DropBefore(uint64_t use_time) {
  std::lock_guard<std::mutex> lock(mu_);
  while (!by_use_.empty() && by_use_.begin()->first < use_time) {
    EraseLocked(entries_.find(by_use_.begin()->second));
  }
}

uint64_t NextEpochCache::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

void NextEpochCache::EraseLocked(std::unordered_map<uint64_t, Entry>::iterator it) {
  by_use_.erase({it->second.use_time, it->first});
  bytes_ -= it->second.bytes;
  entries_.erase(it);
}

}  // namespace granary::dataset
