#include "store/local/local_store.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/file_system.h"
#include "store/local/local_list.h"
#include "store/local/local_root.h"
#include "store/local/local_writer.h"

namespace granary {
namespace {

// GetMany splits large ranges into pieces of this size so a few big reads still keep many
// requests in flight.
constexpr size_t kReadPieceBytes = 4u << 20;

uint64_t AlignDown(uint64_t x) { return x & ~uint64_t{kDirectIoAlignment - 1}; }
uint64_t AlignUp(uint64_t x) { return AlignDown(x + kDirectIoAlignment - 1); }

class LocalStore final : public ObjectStore {
 public:
  explicit LocalStore(std::shared_ptr<LocalRoot> root) : root_(std::move(root)) {}

  std::string url() const override { return root_->url(); }

  Result<ObjectInfo> Stat(std::string_view key) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    GRANARY_ASSIGN_OR_RETURN(OpenedObject object, root_->OpenObject(key, /*direct=*/false));
    return ObjectInfo{std::string(key), object.size_bytes, object.mtime_ns};
  }

  Result<size_t> Get(std::string_view key, uint64_t offset, std::span<std::byte> dest) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    const bool direct = dest.size() >= root_->options().direct_io_min_bytes;
    GRANARY_ASSIGN_OR_RETURN(OpenedObject object, root_->OpenObject(key, direct));
    if (offset >= object.size_bytes || dest.empty()) return size_t{0};
    dest = dest.first(std::min<uint64_t>(dest.size(), object.size_bytes - offset));
    Result<size_t> n = root_->fs()->ReadAt(object.file, offset, dest);
    if (!n.ok()) return n.status().WithContext("get of " + root_->Describe(key));
    return n;
  }

  Status GetMany(std::span<ReadOp> ops) override;

  Status Put(std::string_view key, std::span<const std::byte> data) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    return root_->WriteObject(key, data, /*no_replace=*/false);
  }

  Status PutIfAbsent(std::string_view key, std::span<const std::byte> data) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    return root_->WriteObject(key, data, /*no_replace=*/true);
  }

  Result<std::unique_ptr<ObjectWriter>> NewWriter(std::string_view key,
                                                  const WriterOptions& options) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    return NewLocalWriter(root_, key, options);
  }

  Status Delete(std::string_view key) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    return root_->Remove(key);
  }

  Result<ObjectPage> ListPage(std::string_view prefix, std::string_view start_after,
                              size_t max_objects) override {
    return ListLocalTree(root_->fs(), root_->root(), prefix, start_after, max_objects);
  }

 private:
  std::shared_ptr<LocalRoot> root_;
};

// GetMany: validate, group the ops by key (one open per distinct object), cut every range into
// requests (O_DIRECT for the aligned middle of large ranges, buffered for the rest) and submit
// them all as one ReadMany batch.
Status LocalStore::GetMany(std::span<ReadOp> ops) {
  const size_t direct_min = root_->options().direct_io_min_bytes;
  std::vector<uint32_t> order;
  order.reserve(ops.size());
  for (uint32_t i = 0; i < ops.size(); ++i) {
    ReadOp& op = ops[i];
    op.bytes_read = 0;
    op.status = ValidateKey(op.key);
    if (op.status.ok()) order.push_back(i);
  }
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return ops[a].key < ops[b].key; });

  // Opened files live until the batch completes. Reserved up front: requests point at them.
  std::vector<File> files;
  files.reserve(2 * order.size());
  std::vector<IoRequest> requests;
  requests.reserve(order.size() + order.size() / 2);

  auto add_requests = [&](int fd, uint64_t offset, std::byte* dest, uint64_t length) {
    while (length > 0) {
      size_t piece = static_cast<size_t>(std::min<uint64_t>(length, kReadPieceBytes));
      IoRequest& r = requests.emplace_back();
      r.opcode = IoOpcode::kRead;
      r.fd = fd;
      r.offset = offset;
      r.buffer = dest;
      r.length = piece;
      offset += piece;
      dest += piece;
      length -= piece;
    }
  };

  // Op i's requests are [request_begin[i], request_end[i]), in file order.
  std::vector<uint32_t> request_begin(ops.size(), 0);
  std::vector<uint32_t> request_end(ops.size(), 0);
  for (size_t group = 0; group < order.size();) {
    const std::string& key = ops[order[group]].key;
    size_t group_end = group + 1;
    while (group_end < order.size() && ops[order[group_end]].key == key) ++group_end;

    Result<OpenedObject> object = root_->OpenObject(key, /*direct=*/false);
    if (!object.ok()) {
      for (size_t g = group; g < group_end; ++g) ops[order[g]].status = object.status();
      group = group_end;
      continue;
    }
    const uint64_t size = object->size_bytes;
    files.push_back(std::move(object->file));
    const int buffered_fd = files.back().fd();
    int direct_fd = -1;
    for (size_t g = group; g < group_end; ++g) {
      const uint32_t i = order[g];
      ReadOp& op = ops[i];
      request_begin[i] = static_cast<uint32_t>(requests.size());
      uint64_t begin = op.offset;
      uint64_t end = begin >= size ? begin : std::min<uint64_t>(size, begin + op.dest.size());
      std::byte* dest = op.dest.data();
      // O_DIRECT lands the aligned middle straight in dest when dest and the file offset share
      // their alignment; the unaligned head and tail go through the page cache.
      const uint64_t body_begin = AlignUp(begin);
      const uint64_t body_end = AlignDown(end);
      const bool use_direct =
          end - begin >= direct_min && body_end > body_begin &&
          (reinterpret_cast<uintptr_t>(dest) - begin) % kDirectIoAlignment == 0;
      if (use_direct && direct_fd < 0) {
        Result<File> direct = root_->ReopenDirect(key, *object);
        if (direct.ok()) {
          files.push_back(std::move(direct).value());
          direct_fd = files.back().fd();
        } else {
          direct_fd = -2;  // this key stays buffered for the whole batch
        }
      }
      if (use_direct && direct_fd >= 0) {
        add_requests(buffered_fd, begin, dest, body_begin - begin);
        add_requests(direct_fd, body_begin, dest + (body_begin - begin), body_end - body_begin);
        add_requests(buffered_fd, body_end, dest + (body_end - begin), end - body_end);
      } else {
        add_requests(buffered_fd, begin, dest, end - begin);
      }
      request_end[i] = static_cast<uint32_t>(requests.size());
    }
    group = group_end;
  }

  if (!requests.empty()) {
    Status batch = root_->fs()->ReadMany(requests);
    if (!batch.ok()) {
      batch = batch.WithContext("GetMany on " + root_->url());
      for (uint32_t i : order) {
        if (ops[i].status.ok()) ops[i].status = batch;
      }
      return batch;
    }
  }
  for (uint32_t i : order) {
    ReadOp& op = ops[i];
    if (!op.status.ok()) continue;
    size_t total = 0;
    for (uint32_t r = request_begin[i]; r < request_end[i]; ++r) {
      const IoRequest& request = requests[r];
      if (request.result < 0) {
        op.status = ErrnoToStatus(static_cast<int>(-request.result),
                                  "get of " + root_->Describe(op.key));
        break;
      }
      total += static_cast<size_t>(request.result);
      if (static_cast<size_t>(request.result) < request.length) break;  // the file ended
    }
    op.bytes_read = op.status.ok() ? total : 0;
  }
  return Status::OK();
}

}  // namespace

Result<std::unique_ptr<ObjectStore>> NewLocalStore(std::string root, const StoreOptions& options,
                                                   FileSystem* fs) {
  GRANARY_ASSIGN_OR_RETURN(std::shared_ptr<LocalRoot> local,
                           LocalRoot::Open(std::move(root), options, fs));
  return std::unique_ptr<ObjectStore>(std::make_unique<LocalStore>(std::move(local)));
}

}  // namespace granary
