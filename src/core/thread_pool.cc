#include "core/thread_pool.h"

#include <pthread.h>
#include <unistd.h>

namespace granary {

ThreadPool::ThreadPool(size_t num_threads, std::string name) : owner_pid_(::getpid()) {
  if (num_threads == 0) num_threads = 1;
  threads_.reserve(num_threads);
  for (size_t i = 0; i < num_threads; ++i) {
    threads_.emplace_back([this] { WorkerLoop(); });
    // Linux limits thread names to 15 characters.
    std::string thread_name = (name + "-" + std::to_string(i)).substr(0, 15);
    pthread_setname_np(threads_.back().native_handle(), thread_name.c_str());
  }
}

ThreadPool::~ThreadPool() {
  if (::getpid() != owner_pid_) {  // a forked child: see the header
    for (auto& t : threads_) t.detach();
    (void)shared_.release();  // deliberately leaked
    return;
  }
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->stopping = true;
  }
  shared_->cv.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::Enqueue(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->queue.push_back(std::move(fn));
  }
  shared_->cv.notify_one();
}

void ThreadPool::WorkerLoop() {
  for (;;) {
    std::function<void()> fn;
    {
      Shared& s = *shared_;
      std::unique_lock<std::mutex> lock(s.mu);
      s.cv.wait(lock, [&s] { return s.stopping || !s.queue.empty(); });
      if (s.queue.empty()) return;  // stopping and drained
      fn = std::move(s.queue.front());
      s.queue.pop_front();
    }
    fn();
  }
}

}  // namespace granary
