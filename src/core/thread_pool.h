// A fixed-size pool of native threads running queued tasks in FIFO order.
//
// Thread-safe: Submit may be called from any thread, including from a task. The destructor
// finishes every task already queued, then joins the threads. Fork-safe to destroy: in a forked
// child (a DataLoader worker collecting its parent's objects) the threads do not exist, so the
// destructor only lets go of the handles and the queue state (a condition variable with the
// parent's waiters recorded in it cannot be destroyed); the pool is unusable there. std::future is granary's one
// async vocabulary: Submit returns one.
#ifndef GRANARY_CORE_THREAD_POOL_H_
#define GRANARY_CORE_THREAD_POOL_H_

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace granary {

class ThreadPool {
 public:
  // Starts `num_threads` (at least 1) threads named "<name>-<i>" (visible in top/perf).
  explicit ThreadPool(size_t num_threads, std::string name = "granary");
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t num_threads() const { return threads_.size(); }

  // Queues `fn`; its result (or exception, for non-core callers) arrives through the future.
  template <typename F>
  auto Submit(F&& fn) -> std::future<std::invoke_result_t<std::decay_t<F>>> {
    using R = std::invoke_result_t<std::decay_t<F>>;
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<F>(fn));
    std::future<R> future = task->get_future();
    Enqueue([task] { (*task)(); });
    return future;
  }

  // Queues `fn` with no future (fire and forget).
  void Enqueue(std::function<void()> fn);

 private:
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void()>> queue;  // GUARDED_BY(mu)
    bool stopping = false;                    // GUARDED_BY(mu)
  };
  void WorkerLoop();

  std::unique_ptr<Shared> shared_ = std::make_unique<Shared>();
  std::vector<std::thread> threads_;
  const int owner_pid_;
};

}  // namespace granary

#endif  // GRANARY_CORE_THREAD_POOL_H_
