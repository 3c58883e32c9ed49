#include "store/local/local_writer.h"

#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <string>
#include <utility>

namespace granary {
namespace {

class LocalWriter final : public ObjectWriter {
 public:
  LocalWriter(std::shared_ptr<LocalRoot> root, std::string key, const WriterOptions& options,
              std::shared_ptr<BufferPool> pool, TempFile temp)
      : root_(std::move(root)),
        key_(std::move(key)),
        options_(options),
        pool_(std::move(pool)),
        temp_(std::move(temp)) {}

  ~LocalWriter() override {
    if (state_ == State::kOpen) Abort().IgnoreError();  // destroying uncommitted = abort
  }

  Status Append(std::span<const std::byte> data) override {
    GRANARY_RETURN_IF_ERROR(CheckOpen("Append"));
    while (!data.empty()) {
      if (!staging_) {
        if (Status s = AcquireStaging(); !s.ok()) return Fail(s);
      }
      size_t n = std::min(options_.part_bytes - fill_, data.size());
      std::memcpy(staging_.data() + fill_, data.data(), n);
      fill_ += n;
      appended_ += n;
      data = data.subspan(n);
      if (fill_ == options_.part_bytes) SubmitPart();
    }
    // Surface errors of finished parts early instead of at Commit.
    while (!in_flight_.empty() &&
           in_flight_.front().wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      if (Status s = WaitOldest(); !s.ok()) return Fail(s);
    }
    return Status::OK();
  }

  Status AppendBorrowed(std::span<const std::byte> data, std::function<void()> release) override {
    // Calls `release` once when the last background part reading `data` is done (or now).
    auto guard = std::shared_ptr<void>(nullptr, [r = std::move(release)](void*) { r(); });
    GRANARY_RETURN_IF_ERROR(CheckOpen("AppendBorrowed"));
    const uint64_t position = next_offset_ + fill_;
    const size_t body = data.size() & ~(kDirectIoAlignment - 1);
    const bool zero_copy = temp_.direct && body > 0 && position % kDirectIoAlignment == 0 &&
                           fill_ % kDirectIoAlignment == 0 &&
                           reinterpret_cast<uintptr_t>(data.data()) % kDirectIoAlignment == 0;
    if (!zero_copy) return Append(data);
    if (fill_ > 0) SubmitPart();  // an aligned partial part: O_DIRECT can write it as it is
    staging_ = BufferPool::Lease();
    for (size_t done = 0; done < body;) {
      while (!in_flight_.empty() && in_flight_.size() >= options_.max_parts_in_flight) {
        if (Status s = WaitOldest(); !s.ok()) return Fail(s);
      }
      const size_t length = std::min(options_.part_bytes, body - done);
      FileSystem* fs = root_->fs();
      const File* file = &temp_.file;
      auto task = [fs, file, offset = next_offset_, src = data.subspan(done, length),
                   guard]() mutable -> Status {
        Status s = fs->WriteAt(*file, offset, src);
        guard.reset();  // release before the future becomes ready
        return s;
      };
      in_flight_.push_back(root_->background().Submit(std::move(task)));
      next_offset_ += length;
      appended_ += length;
      done += length;
    }
    if (body < data.size()) return Append(data.subspan(body));
    return Status::OK();
  }

  Status Commit() override {
    GRANARY_RETURN_IF_ERROR(CheckOpen("Commit"));
    FileSystem* fs = root_->fs();
    Status s = DrainParts();
    if (s.ok() && fill_ > 0) {
      s = fs->WriteAt(temp_.file, next_offset_, std::span<const std::byte>(staging_.data(), fill_));
    }
    staging_ = BufferPool::Lease();
    if (s.ok()) s = fs->Sync(temp_.file);
    if (s.ok()) s = temp_.file.Close();
    if (!s.ok()) return Fail(s);
    s = root_->Publish(key_, temp_.path, /*no_replace=*/false);
    if (!s.ok()) return Fail(s, /*add_context=*/false);
    state_ = State::kCommitted;
    return Status::OK();
  }

  Status Abort() override {
    if (state_ == State::kCommitted) {
      return FailedPreconditionError("writer for " + root_->Describe(key_) +
                                     ": Abort after Commit");
    }
    if (state_ != State::kOpen) return Status::OK();  // already aborted (or failed)
    Discard();
    state_ = State::kAborted;
    return Status::OK();
  }

  uint64_t bytes_appended() const override { return appended_; }

 private:
  enum class State { kOpen, kCommitted, kAborted, kFailed };

  Status CheckOpen(std::string_view op) const {
    switch (state_) {
      case State::kOpen: return Status::OK();
      case State::kFailed: return error_;
      case State::kCommitted:
        return FailedPreconditionError("writer for " + root_->Describe(key_) + ": " +
                                       std::string(op) + " after Commit");
      case State::kAborted:
        break;
    }
    return FailedPreconditionError("writer for " + root_->Describe(key_) + ": " +
                                   std::string(op) + " after Abort");
  }

  // Gets a staging buffer, keeping staged + in-flight parts within max_parts_in_flight.
  Status AcquireStaging() {
    while (!in_flight_.empty() && in_flight_.size() + 1 > options_.max_parts_in_flight) {
      GRANARY_RETURN_IF_ERROR(WaitOldest());
    }
    for (;;) {
      GRANARY_ASSIGN_OR_RETURN(BufferPool::Lease lease, pool_->TryAcquire());
      if (lease) {
        staging_ = std::move(lease);
        return Status::OK();
      }
      // The pool is shared with the store's other writers; our own parts free buffers soonest.
      if (in_flight_.empty()) break;
      GRANARY_RETURN_IF_ERROR(WaitOldest());
    }
    GRANARY_ASSIGN_OR_RETURN(staging_, pool_->Acquire());
    return Status::OK();
  }

  void SubmitPart() {
    FileSystem* fs = root_->fs();
    const File* file = &temp_.file;
    const uint64_t offset = next_offset_;
    const size_t length = fill_;
    auto task = [fs, file, offset, length, pool = pool_,
                 lease = std::move(staging_)]() mutable -> Status {
      Status s = fs->WriteAt(*file, offset, std::span<const std::byte>(lease.data(), length));
      lease = BufferPool::Lease();  // back to the pool before the future becomes ready
      return s;
    };
    in_flight_.push_back(root_->background().Submit(std::move(task)));
    staging_ = BufferPool::Lease();
    next_offset_ += length;
    fill_ = 0;
  }

  Status WaitOldest() {
    Status s = in_flight_.front().get();
    in_flight_.pop_front();
    return s;
  }

  // Waits for every part; returns the first error.
  Status DrainParts() {
    Status first;
    while (!in_flight_.empty()) {
      Status s = WaitOldest();
      if (first.ok()) first = s;
    }
    return first;
  }

  void Discard() {
    DrainParts().IgnoreError();  // the data is being thrown away
    staging_ = BufferPool::Lease();
    root_->DiscardTemp(temp_);
  }

  // Aborts after an error and remembers it for every later call.
  Status Fail(const Status& s, bool add_context = true) {
    error_ = add_context ? s.WithContext("writer for " + root_->Describe(key_)) : s;
    Discard();
    state_ = State::kFailed;
    return error_;
  }

  std::shared_ptr<LocalRoot> root_;
  const std::string key_;
  const WriterOptions options_;
  std::shared_ptr<BufferPool> pool_;
  TempFile temp_;
  BufferPool::Lease staging_;  // the part being filled
  size_t fill_ = 0;            // bytes in staging_
  uint64_t next_offset_ = 0;   // file offset of the part being filled
  uint64_t appended_ = 0;
  std::deque<std::future<Status>> in_flight_;  // oldest first
  State state_ = State::kOpen;
  Status error_;
};

}  // namespace

Result<std::unique_ptr<ObjectWriter>> NewLocalWriter(std::shared_ptr<LocalRoot> root,
                                                     std::string_view key,
                                                     const WriterOptions& options) {
  const std::string context = "writer for " + root->Describe(key);
  GRANARY_RETURN_IF_ERROR(options.Validate().WithContext(context));
  Result<std::shared_ptr<BufferPool>> pool = root->StagingPool(options.part_bytes);
  if (!pool.ok()) return pool.status().WithContext(context);
  // O_DIRECT needs every part at an aligned offset, so part_bytes must be aligned too.
  const bool direct = options.part_bytes >= root->options().direct_io_min_bytes &&
                      options.part_bytes % kDirectIoAlignment == 0;
  Result<TempFile> temp = root->CreateTemp(direct);
  if (!temp.ok()) return temp.status().WithContext(context);
  return std::unique_ptr<ObjectWriter>(std::make_unique<LocalWriter>(
      std::move(root), std::string(key), options, std::move(*pool), std::move(*temp)));
}

}  // namespace granary
