#include "store/local/local_store.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
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

  Result<File> OpenLocalFile(std::string_view key, bool direct_io) override {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    GRANARY_ASSIGN_OR_RETURN(OpenedObject object, root_->OpenObject(key, direct_io));
    return std::move(object.file);
  }

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

  // Bounce reads: request r reads an aligned range into `lease`; bytes [skip, skip + length) of
  // it belong at `dest`. Ops read this way are accounted from these, not from request results.
  struct Bounce {
    uint32_t request;
    uint32_t op;
    BufferPool::Lease lease;
    size_t skip;
    std::byte* dest;
    size_t length;
  };
  std::vector<Bounce> bounces;
  std::vector<bool> bounced(ops.size(), false);
  std::shared_ptr<BufferPool> bounce_pool;
  if (Result<std::shared_ptr<BufferPool>> pool = root_->BouncePool(); pool.ok()) bounce_pool = *pool;
  // Reads [aligned_begin, aligned_end) of fd into bounce buffers for op `op` (wanting [begin, end)
  // at dest). False, adding nothing, when the pool cannot lend enough buffers right now.
  auto AddBounced = [&](int fd, uint64_t aligned_begin, uint64_t aligned_end, uint64_t begin,
                        uint64_t end, std::byte* dest, uint32_t op) {
    std::vector<BufferPool::Lease> leases;
    for (uint64_t at = aligned_begin; at < aligned_end; at += bounce_pool->buffer_bytes()) {
      Result<BufferPool::Lease> lease = bounce_pool->TryAcquire();
      if (!lease.ok() || !*lease) return false;  // leases go back to the pool
      leases.push_back(std::move(lease).value());
    }
    size_t k = 0;
    for (uint64_t at = aligned_begin; at < aligned_end; at += bounce_pool->buffer_bytes(), ++k) {
      const uint64_t piece_end = std::min<uint64_t>(aligned_end, at + bounce_pool->buffer_bytes());
      const uint64_t from = std::max(begin, at);
      const uint64_t to = std::min(end, piece_end);
      IoRequest& r = requests.emplace_back();
      r.opcode = IoOpcode::kRead;
      r.fd = fd;
      r.offset = at;
      r.buffer = leases[k].data();
      r.length = static_cast<size_t>(piece_end - at);
      bounces.push_back(Bounce{static_cast<uint32_t>(requests.size() - 1), op, std::move(leases[k]),
                               static_cast<size_t>(from - at), dest + (from - begin),
                               static_cast<size_t>(to - from)});
    }
    bounced[op] = true;
    return true;
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
      const bool large = end - begin >= direct_min && body_end > body_begin;
      const bool aligned_dest = (reinterpret_cast<uintptr_t>(dest) - begin) % kDirectIoAlignment == 0;
      // Misaligned destinations (a torch tensor is only 64-byte aligned) read with O_DIRECT
      // into bounce buffers and are copied after the batch, when enough buffers are free.
      const bool use_direct = large && (aligned_dest || bounce_pool);
      if (use_direct && direct_fd < 0) {
        Result<File> direct = root_->ReopenDirect(key, *object);
        if (direct.ok()) {
          files.push_back(std::move(direct).value());
          direct_fd = files.back().fd();
        } else {
          direct_fd = -2;  // this key stays buffered for the whole batch
        }
      }
      if (use_direct && direct_fd >= 0 && !aligned_dest &&
          AddBounced(direct_fd, AlignDown(begin), AlignUp(end), begin, end, dest, i)) {
        // all of op i's requests are bounce reads
      } else if (use_direct && direct_fd >= 0 && aligned_dest) {
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
  // Bounce reads: copy what each read returned into its destination, in file order per op.
  std::vector<bool> bounce_done(ops.size(), false);
  std::vector<size_t> bounce_total(ops.size(), 0);
  for (Bounce& b : bounces) {
    ReadOp& op = ops[b.op];
    if (!op.status.ok() || bounce_done[b.op]) continue;
    const IoRequest& request = requests[b.request];
    if (request.result < 0) {
      op.status = ErrnoToStatus(static_cast<int>(-request.result), "get of " + root_->Describe(op.key));
      continue;
    }
    const size_t got = static_cast<size_t>(request.result);
    const size_t n = got > b.skip ? std::min(b.length, got - b.skip) : 0;
    std::memcpy(b.dest, b.lease.data() + b.skip, n);
    bounce_total[b.op] += n;
    if (n < b.length) bounce_done[b.op] = true;  // the file ended
    b.lease = BufferPool::Lease();
  }
  for (uint32_t i : order) {
    ReadOp& op = ops[i];
    if (!op.status.ok()) continue;
    if (bounced[i]) {
      op.bytes_read = bounce_total[i];
      continue;
    }
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
