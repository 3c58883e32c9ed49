// IoEngine on pread/pwrite.
//
// A Run hands out requests through an atomic cursor to up to queue_depth workers: the calling
// thread plus queue_depth - 1 tasks on the engine's pool. The caller returns once every request
// has completed; pool tasks that start late find the cursor exhausted and leave (they hold the
// shared state, never the caller's stack).
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "core/clock.h"
#include "core/thread_pool.h"
#include "io/psync_engine.h"

namespace granary {
namespace {

// Largest single pread/pwrite; Linux transfers at most ~2 GiB per call anyway.
constexpr size_t kMaxCallBytes = 1u << 30;
// Pool threads per engine, beyond the calling thread.
constexpr unsigned kMaxPoolThreads = 31;

void Execute(IoRequest& r, bool record_latency) {
  uint64_t start_ns = record_latency ? NowNanos() : 0;
  uint64_t done = 0;
  int64_t result = 0;
  while (done < r.length) {
    size_t len = std::min<size_t>(r.length - done, kMaxCallBytes);
    char* buf = static_cast<char*>(r.buffer) + done;
    off_t off = static_cast<off_t>(r.offset + done);
    ssize_t n;
    if (r.opcode == IoOpcode::kRead && r.nowait) {
      iovec iov{buf, len};
      n = ::preadv2(r.fd, &iov, 1, off, RWF_NOWAIT);
    } else {
      n = r.opcode == IoOpcode::kRead ? ::pread(r.fd, buf, len, off)
                                      : ::pwrite(r.fd, buf, len, off);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      // RWF_NOWAIT: not resident; report what was copied (the caller reads the rest).
      if (r.nowait && errno == EAGAIN) {
        if (done == 0) result = -EAGAIN;
        break;
      }
      // Same rule as the io_uring engine: EINVAL when continuing an O_DIRECT read after a
      // partial block means end of file.
      if (errno == EINVAL && r.opcode == IoOpcode::kRead && done > 0) break;
      result = -errno;
      break;
    }
    if (n == 0) {
      if (r.opcode == IoOpcode::kWrite) result = -EIO;  // no progress; never spin
      break;  // a read of 0 is end of file
    }
    done += static_cast<uint64_t>(n);
    if (r.nowait) break;  // a short resident prefix is the answer; never wait for the rest
  }
  r.result = result < 0 ? result : static_cast<int64_t>(done);
  r.latency_ns = record_latency ? NowNanos() - start_ns : 0;
}

struct RunState {
  IoRequest* requests;
  size_t count;
  bool record_latency;
  std::atomic<size_t> next{0};
  std::atomic<size_t> completed{0};
  std::mutex mu;
  std::condition_variable cv;

  void Work() {
    size_t mine = 0;
    for (;;) {
      size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= count) break;
      Execute(requests[i], record_latency);
      ++mine;
    }
    if (mine == 0) return;
    if (completed.fetch_add(mine, std::memory_order_acq_rel) + mine == count) {
      std::lock_guard<std::mutex> lock(mu);  // pairs with the waiter's check: no lost wakeup
      cv.notify_all();
    }
  }
};

// Thread-safe: Runs share the pool's threads; each Run's requests are its own.
class PsyncEngine final : public IoEngine {
 public:
  explicit PsyncEngine(const IoEngineOptions& options)
      : options_(options),
        pool_(std::clamp(options.queue_depth, 2u, kMaxPoolThreads + 1) - 1, "granary-psync") {}

  std::string_view name() const override { return "psync"; }
  unsigned queue_depth() const override { return options_.queue_depth; }

  Status Run(std::span<IoRequest> requests) override {
    const size_t n = requests.size();
    size_t workers = std::min<size_t>({options_.queue_depth, n, pool_.num_threads() + 1});
    if (workers <= 1) {  // queue depth 1 (or one request): no hand-off at all
      for (IoRequest& r : requests) Execute(r, options_.record_latency);
      return Status::OK();
    }
    auto state = std::make_shared<RunState>();
    state->requests = requests.data();
    state->count = n;
    state->record_latency = options_.record_latency;
    for (size_t i = 1; i < workers; ++i) pool_.Enqueue([state] { state->Work(); });
    state->Work();
    std::unique_lock<std::mutex> lock(state->mu);
    state->cv.wait(lock, [&] { return state->completed.load(std::memory_order_acquire) == n; });
    return Status::OK();
  }

 private:
  const IoEngineOptions options_;
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<IoEngine> NewPsyncEngine(const IoEngineOptions& options) {
  return std::make_unique<PsyncEngine>(options);
}

}  // namespace granary
