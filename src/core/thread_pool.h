// A fixed-size pool of native threads running queued tasks in FIFO order.
//
// Thread-safe: Submit may be called from any thread, including from a task. The destructor
// finishes every task already queued, then joins the threads. std::future is granary's one
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
  void WorkerLoop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                    // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

}  // namespace granary

#endif  // GRANARY_CORE_THREAD_POOL_H_
