#include "store/memory/memory_store.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace granary {
namespace {

int64_t WallNanos() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// The objects of one store; shared by every handle (and writer) of it.
struct MemoryData {
  struct Entry {
    std::shared_ptr<const std::string> bytes;  // immutable once published
    int64_t mtime_ns = 0;
  };
  std::mutex mu;
  std::map<std::string, Entry, std::less<>> objects;  // GUARDED_BY(mu)
};

std::string KeyContext(const std::string& url, std::string_view key) {
  return url + ": key '" + std::string(key) + "'";
}

class MemoryWriter final : public ObjectWriter {
 public:
  MemoryWriter(std::shared_ptr<MemoryData> data, std::string url, std::string key)
      : data_(std::move(data)), url_(std::move(url)), key_(std::move(key)) {}

  Status Append(std::span<const std::byte> bytes) override {
    GRANARY_RETURN_IF_ERROR(CheckOpen("Append"));
    buffer_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    appended_ += bytes.size();
    return Status::OK();
  }

  Status Commit() override {
    GRANARY_RETURN_IF_ERROR(CheckOpen("Commit"));
    auto bytes = std::make_shared<const std::string>(std::move(buffer_));
    buffer_ = std::string();
    {
      std::lock_guard<std::mutex> lock(data_->mu);
      data_->objects[key_] = MemoryData::Entry{std::move(bytes), WallNanos()};
    }
    state_ = State::kCommitted;
    return Status::OK();
  }

  Status Abort() override {
    if (state_ == State::kCommitted) {
      return FailedPreconditionError(KeyContext(url_, key_) + ": Abort after Commit");
    }
    state_ = State::kAborted;
    buffer_ = std::string();
    return Status::OK();
  }

  uint64_t bytes_appended() const override { return appended_; }

 private:
  enum class State { kOpen, kCommitted, kAborted };

  Status CheckOpen(std::string_view op) const {
    if (state_ == State::kOpen) return Status::OK();
    return FailedPreconditionError(KeyContext(url_, key_) + ": " + std::string(op) +
                                   (state_ == State::kCommitted ? " after Commit"
                                                                : " after Abort"));
  }

  std::shared_ptr<MemoryData> data_;
  std::string url_;
  std::string key_;
  std::string buffer_;
  uint64_t appended_ = 0;
  State state_ = State::kOpen;
};

class MemoryStore final : public ObjectStore {
 public:
  MemoryStore(std::shared_ptr<MemoryData> data, std::string url)
      : data_(std::move(data)), url_(std::move(url)) {}

  std::string url() const override { return url_; }

  Result<ObjectInfo> Stat(std::string_view key) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    std::lock_guard<std::mutex> lock(data_->mu);
    auto it = data_->objects.find(key);
    if (it == data_->objects.end()) return NotFound(key);
    return ObjectInfo{it->first, it->second.bytes->size(), it->second.mtime_ns};
  }

  Result<size_t> Get(std::string_view key, uint64_t offset, std::span<std::byte> dest) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    std::shared_ptr<const std::string> bytes;
    {
      std::lock_guard<std::mutex> lock(data_->mu);
      auto it = data_->objects.find(key);
      if (it == data_->objects.end()) return NotFound(key);
      bytes = it->second.bytes;
    }
    if (offset >= bytes->size()) return size_t{0};
    size_t n = std::min<uint64_t>(dest.size(), bytes->size() - offset);
    if (n > 0) std::memcpy(dest.data(), bytes->data() + offset, n);
    return n;
  }

  Status GetMany(std::span<ReadOp> ops) override {
    for (ReadOp& op : ops) {
      Result<size_t> n = Get(op.key, op.offset, op.dest);
      op.bytes_read = n.ok() ? *n : 0;
      op.status = n.status();
    }
    return Status::OK();
  }

  Status Put(std::string_view key, std::span<const std::byte> data) override {
    return DoPut(key, data, /*replace=*/true);
  }

  Status PutIfAbsent(std::string_view key, std::span<const std::byte> data) override {
    return DoPut(key, data, /*replace=*/false);
  }

  Result<std::unique_ptr<ObjectWriter>> NewWriter(std::string_view key,
                                                  const WriterOptions& options) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    GRANARY_RETURN_IF_ERROR(options.Validate());
    return std::unique_ptr<ObjectWriter>(
        std::make_unique<MemoryWriter>(data_, url_, std::string(key)));
  }

  Status Delete(std::string_view key) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    std::lock_guard<std::mutex> lock(data_->mu);
    auto it = data_->objects.find(key);
    if (it == data_->objects.end()) return NotFound(key);
    data_->objects.erase(it);
    return Status::OK();
  }

  Result<ObjectPage> ListPage(std::string_view prefix, std::string_view start_after,
                              size_t max_objects) override {
    if (max_objects == 0) {
      return InvalidArgumentError(url_ + ": ListPage needs max_objects >= 1");
    }
    ObjectPage page;
    std::lock_guard<std::mutex> lock(data_->mu);
    auto it = start_after < prefix ? data_->objects.lower_bound(prefix)
                                   : data_->objects.upper_bound(start_after);
    for (; it != data_->objects.end() && it->first.starts_with(prefix); ++it) {
      if (page.objects.size() == max_objects) {
        page.next_start_after = page.objects.back().key;
        break;
      }
      page.objects.push_back(
          ObjectInfo{it->first, it->second.bytes->size(), it->second.mtime_ns});
    }
    return page;
  }

 private:
  // Put (replace) and PutIfAbsent (!replace: AlreadyExists if the key is taken).
  Status DoPut(std::string_view key, std::span<const std::byte> data, bool replace) {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    auto bytes = std::make_shared<const std::string>(reinterpret_cast<const char*>(data.data()),
                                                     data.size());
    std::lock_guard<std::mutex> lock(data_->mu);
    auto [it, inserted] = data_->objects.try_emplace(std::string(key));
    if (!inserted && !replace) {
      return AlreadyExistsError(KeyContext(url_, key) + ": already exists");
    }
    it->second = MemoryData::Entry{std::move(bytes), WallNanos()};
    return Status::OK();
  }

  Status NotFound(std::string_view key) const {
    return NotFoundError(KeyContext(url_, key) + ": not found");
  }

  std::shared_ptr<MemoryData> data_;
  std::string url_;
};

}  // namespace

Result<std::unique_ptr<ObjectStore>> OpenMemoryStore(std::string_view name) {
  if (name.empty() || name.find_first_of(std::string_view("/?#\0", 4)) != std::string_view::npos) {
    return InvalidArgumentError("memory store name '" + std::string(name) +
                                "' must be non-empty without '/', '?', '#' or NUL");
  }
  // Leaked on purpose: the registry lives as long as the process (no destruction-order issues).
  static std::mutex* mu = new std::mutex;
  static auto* registry = new std::unordered_map<std::string, std::shared_ptr<MemoryData>>;
  std::shared_ptr<MemoryData> data;
  {
    std::lock_guard<std::mutex> lock(*mu);
    std::shared_ptr<MemoryData>& slot = (*registry)[std::string(name)];
    if (!slot) slot = std::make_shared<MemoryData>();
    data = slot;
  }
  return std::unique_ptr<ObjectStore>(
      std::make_unique<MemoryStore>(std::move(data), "mem://" + std::string(name)));
}

std::unique_ptr<ObjectStore> NewMemoryStore() {
  static std::atomic<uint64_t> next_id{0};
  return std::make_unique<MemoryStore>(std::make_shared<MemoryData>(),
                                       "mem://#anonymous-" + std::to_string(++next_id));
}

}  // namespace granary
