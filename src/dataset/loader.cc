// Loader: reads batches ahead of the consumer along the epoch's known order.
//
// Batches are numbered from the epoch position the loader started at: batch b holds positions
// [start + b * batch_size, ...) of this rank's sequence, and this loader (share s of k) produces
// the batches with b % k == s. io_threads producer threads claim batch numbers in order, read
// them with Dataset::ReadBatch (which keeps its own reads in flight together) and park them in
// `ready_`; Next() hands them out in order. The bytes claimed but not yet handed out stay under
// prefetch_bytes (estimated from the dataset's mean sample size before reading, so a claim never
// waits on I/O), but one batch may always be in flight so progress never stalls.
//
// StartEpoch bumps a generation number: batches of the old generation still being read are
// dropped when they finish, so a restart never hands out stale samples.
#include <algorithm>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "dataset/loader_batches.h"
#include "dataset/next_epoch_cache.h"
#include "granary/dataset.h"

namespace granary {

Status LoaderOptions::Validate() const {
  if (batch_size == 0) return InvalidArgumentError("batch_size must be at least 1");
  if (io_threads == 0 || io_threads > 64) {
    return InvalidArgumentError("io_threads must be 1..64, not " + std::to_string(io_threads));
  }
  if (num_shares == 0 || share >= num_shares) {
    return InvalidArgumentError("share " + std::to_string(share) + " of " +
                                std::to_string(num_shares) + " is not a valid share");
  }
  return order.Validate();
}

namespace {

using dataset::NextEpochCache;
using dataset::SampleRef;

class LoaderImpl final : public Loader {
 public:
  LoaderImpl(std::shared_ptr<Dataset> dataset, const LoaderOptions& options)
      : dataset_(std::move(dataset)), options_(options) {
    const uint64_t n = dataset_->size();
    mean_sample_bytes_ = std::max<uint64_t>(1, n == 0 ? 1 : dataset_->total_bytes() / n);
    if (options_.cache_bytes > 0) cache_ = std::make_unique<NextEpochCache>(options_.cache_bytes);
    if (options_.order.locality_shards > 0) {
      for (const ShardInfo& s : dataset_->shards()) shard_first_samples_.push_back(s.first_sample);
    }
  }

  ~LoaderImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  Status Init() {
    GRANARY_RETURN_IF_ERROR(StartEpoch(options_.epoch, 0));
    for (unsigned i = 0; i < options_.io_threads; ++i) {
      threads_.emplace_back([this] { ProduceLoop(); });
    }
    return Status();
  }

  Result<std::shared_ptr<Batch>> Next() override {
    std::unique_lock<std::mutex> lock(mu_);
    if (next_consume_ >= total_batches_) return std::shared_ptr<Batch>();
    const uint64_t b = next_consume_;
    auto it = ready_.find(b);
    if (it == ready_.end()) {
      Stopwatch waited;
      consumer_cv_.wait(lock, [&] { return (it = ready_.find(b)) != ready_.end(); });
      stats_.wait_ns += waited.ElapsedNanos();
    }
    Result<std::shared_ptr<Batch>> result = std::move(it->second.batch);
    claimed_bytes_ -= it->second.claimed_bytes;
    ready_.erase(it);
    next_consume_ += options_.num_shares;
    consumed_samples_ += BatchSamples(b);
    if (result.ok()) {
      const Batch& batch = **result;
      ++stats_.batches;
      stats_.samples += batch.size();
      stats_.bytes += batch.bytes();
      stats_.corrupt_skipped += batch.corrupt_count();
    }
    lock.unlock();
    cv_.notify_all();
    return result;
  }

  Status StartEpoch(uint64_t epoch, uint64_t position) override {
    const uint64_t n = dataset_->size();
    GRANARY_ASSIGN_OR_RETURN(EpochOrder order,
                             EpochOrder::Create(n, epoch, options_.order, shard_first_samples_));
    GRANARY_ASSIGN_OR_RETURN(EpochOrder next,
                             EpochOrder::Create(n, epoch + 1, options_.order, shard_first_samples_));
    if (position > order.size()) {
      return OutOfRangeError("position " + std::to_string(position) + " is past the end of epoch " +
                             std::to_string(epoch) + " (" + std::to_string(order.size()) +
                             " samples for this rank)");
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++generation_;
      order_ = std::make_shared<const EpochOrder>(std::move(order));
      next_order_ = std::make_shared<const EpochOrder>(std::move(next));
      epoch_ = epoch;
      start_position_ = position;
      const uint64_t left = order_->size() - position;
      total_batches_ = options_.drop_last_batch ? left / options_.batch_size
                                                : (left + options_.batch_size - 1) /
                                                      options_.batch_size;
      next_claim_ = options_.share;
      next_consume_ = options_.share;
      consumed_samples_ = 0;
      ready_.clear();
      claimed_bytes_ = 0;
    }
    if (cache_) cache_->DropBefore(UseTime(epoch, position));
    cv_.notify_all();
    return Status();
  }

  LoaderState state() const override {
    std::lock_guard<std::mutex> lock(mu_);
    LoaderState s;
    s.seed = options_.order.seed;
    s.epoch = epoch_;
    s.position = start_position_ + consumed_samples_;
    s.num_samples = dataset_->size();
    s.world_size = options_.order.world_size;
    s.rank = options_.order.rank;
    return s;
  }

  Status Restore(const LoaderState& s) override {
    auto mismatch = [](const char* what, uint64_t saved, uint64_t now) {
      return InvalidArgumentError(std::string("loader state was saved with ") + what + " " +
                                  std::to_string(saved) + ", this loader has " +
                                  std::to_string(now));
    };
    if (s.num_samples != dataset_->size()) {
      return mismatch("a dataset of size", s.num_samples, dataset_->size());
    }
    if (s.seed != options_.order.seed) return mismatch("seed", s.seed, options_.order.seed);
    if (s.world_size != options_.order.world_size) {
      return mismatch("world_size", s.world_size, options_.order.world_size);
    }
    if (s.rank != options_.order.rank) return mismatch("rank", s.rank, options_.order.rank);
    return StartEpoch(s.epoch, s.position);
  }

  uint64_t num_batches() const override {
    std::lock_guard<std::mutex> lock(mu_);
    if (total_batches_ <= options_.share) return 0;
    return (total_batches_ - options_.share + options_.num_shares - 1) / options_.num_shares;
  }

  LoaderStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    LoaderStats s = stats_;
    s.cache_hits = cache_hits_;
    s.cache_misses = cache_misses_;
    s.cache_bytes = cache_ ? cache_->bytes() : 0;
    return s;
  }

 private:
  struct Ready {
    Result<std::shared_ptr<Batch>> batch;
    uint64_t claimed_bytes = 0;
  };

  // Samples in batch b of the current epoch.
  uint64_t BatchSamples(uint64_t b) const {
    const uint64_t first = start_position_ + b * options_.batch_size;
    return std::min<uint64_t>(options_.batch_size, order_->size() - first);
  }

  uint64_t UseTime(uint64_t epoch, uint64_t position) const {
    return epoch * (dataset_->size() + 1) + position;
  }

  void ProduceLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] {
        if (stopping_) return true;
        if (next_claim_ >= total_batches_) return false;
        const uint64_t want = BatchSamples(next_claim_) * mean_sample_bytes_;
        return claimed_bytes_ == 0 || claimed_bytes_ + want <= options_.prefetch_bytes;
      });
      if (stopping_) return;
      const uint64_t b = next_claim_;
      next_claim_ += options_.num_shares;
      const uint64_t count = BatchSamples(b);
      const uint64_t claimed = count * mean_sample_bytes_;
      claimed_bytes_ += claimed;
      const uint64_t generation = generation_;
      const uint64_t first = start_position_ + b * options_.batch_size;
      std::shared_ptr<const EpochOrder> order = order_;
      std::shared_ptr<const EpochOrder> next = next_order_;
      const uint64_t epoch = epoch_;
      lock.unlock();

      std::vector<uint64_t> indices(count);
      for (uint64_t k = 0; k < count; ++k) indices[k] = order->At(first + k);
      Result<std::shared_ptr<Batch>> batch = cache_ ? ReadThroughCache(indices, epoch, *next)
                                                    : dataset_->ReadBatch(indices);

      lock.lock();
      if (generation != generation_) continue;  // StartEpoch ran meanwhile: drop it
      ready_.emplace(b, Ready{std::move(batch), claimed});
      consumer_cv_.notify_all();
    }
  }

  // When this loader will next need sample `index`: its position in the next epoch's order, if
  // it falls to this rank and this share (batches counted from the start of that epoch).
  std::optional<uint64_t> NextUse(uint64_t index, uint64_t epoch, const EpochOrder& next) const {
    std::optional<std::pair<uint32_t, uint64_t>> owner = next.Owner(next.GlobalPosition(index));
    if (!owner || owner->first != options_.order.rank) return std::nullopt;
    if ((owner->second / options_.batch_size) % options_.num_shares != options_.share) {
      return std::nullopt;
    }
    return UseTime(epoch + 1, owner->second);
  }

  Result<std::shared_ptr<Batch>> ReadThroughCache(const std::vector<uint64_t>& indices,
                                                  uint64_t epoch, const EpochOrder& next) {
    std::vector<SampleRef> refs(indices.size());
    std::vector<uint64_t> misses;
    std::vector<size_t> miss_slots;
    for (size_t k = 0; k < indices.size(); ++k) {
      if (std::shared_ptr<Batch> hit = cache_->Find(indices[k])) {
        refs[k] = SampleRef{std::move(hit), 0};
        cache_->Update(indices[k], NextUse(indices[k], epoch, next));
      } else {
        misses.push_back(indices[k]);
        miss_slots.push_back(k);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      cache_hits_ += indices.size() - misses.size();
      cache_misses_ += misses.size();
    }
    if (misses.empty()) return dataset::ComposeBatch(std::move(refs));
    GRANARY_ASSIGN_OR_RETURN(std::shared_ptr<Batch> read, dataset_->ReadBatch(misses));
    for (size_t m = 0; m < misses.size(); ++m) {
      if (std::optional<uint64_t> use = NextUse(misses[m], epoch, next)) {
        cache_->Offer(*read, m, *use);
      }
    }
    if (misses.size() == indices.size()) return read;
    for (size_t m = 0; m < misses.size(); ++m) refs[miss_slots[m]] = SampleRef{read, m};
    return dataset::ComposeBatch(std::move(refs));
  }

  const std::shared_ptr<Dataset> dataset_;
  const LoaderOptions options_;
  uint64_t mean_sample_bytes_ = 1;
  std::vector<uint64_t> shard_first_samples_;
  std::unique_ptr<NextEpochCache> cache_;

  mutable std::mutex mu_;
  std::condition_variable cv_;           // producers wait for budget or work
  std::condition_variable consumer_cv_;  // Next() waits for its batch
  bool stopping_ = false;
  uint64_t generation_ = 0;
  std::shared_ptr<const EpochOrder> order_;       // GUARDED_BY(mu_)
  std::shared_ptr<const EpochOrder> next_order_;  // GUARDED_BY(mu_)
  uint64_t epoch_ = 0;
  uint64_t start_position_ = 0;
  uint64_t total_batches_ = 0;  // all shares, from start_position_
  uint64_t next_claim_ = 0;
  uint64_t next_consume_ = 0;
  uint64_t consumed_samples_ = 0;
  uint64_t claimed_bytes_ = 0;
  std::map<uint64_t, Ready> ready_;
  LoaderStats stats_;
  uint64_t cache_hits_ = 0;
  uint64_t cache_misses_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace

Result<std::unique_ptr<Loader>> Loader::Create(std::shared_ptr<Dataset> dataset,
                                               const LoaderOptions& options) {
  if (dataset == nullptr) return InvalidArgumentError("Loader needs a dataset");
  GRANARY_RETURN_IF_ERROR(options.Validate());
  auto loader = std::make_unique<LoaderImpl>(std::move(dataset), options);
  GRANARY_RETURN_IF_ERROR(loader->Init());
  return std::unique_ptr<Loader>(std::move(loader));
}

}  // namespace granary
