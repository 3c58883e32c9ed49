// IoEngine creation, the process-wide default engine and GRANARY_IO.
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>

#include "core/logging.h"
#include "granary/io.h"
#include "io/psync_engine.h"
#include "io/uring_engine.h"

namespace granary {

// Largest queue depth accepted; io_uring rings larger than this buy nothing for file I/O.
static constexpr unsigned kMaxQueueDepth = 4096;

Status IoEngineOptions::Validate() const {
  if (queue_depth == 0 || queue_depth > kMaxQueueDepth) {
    return InvalidArgumentError("IoEngineOptions: queue_depth " + std::to_string(queue_depth) +
                                " is not in [1, " + std::to_string(kMaxQueueDepth) + "]");
  }
  return Status::OK();
}

IoEngineKind IoEngineKindFromEnv() {
  const char* value = std::getenv("GRANARY_IO");
  if (value == nullptr) return IoEngineKind::kAuto;
  std::string_view v(value);
  if (v == "uring" || v == "io_uring") return IoEngineKind::kUring;
  if (v == "psync") return IoEngineKind::kPsync;
  if (!v.empty() && v != "auto") {
    GRANARY_LOG_WARN("GRANARY_IO=%s is not uring, psync or auto; using auto", value);
  }
  return IoEngineKind::kAuto;
}

Result<std::unique_ptr<IoEngine>> IoEngine::Create(const IoEngineOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  IoEngineKind kind = options.kind;
  if (kind == IoEngineKind::kAuto) kind = IoEngineKindFromEnv();
  switch (kind) {
    case IoEngineKind::kPsync:
      return NewPsyncEngine(options);
    case IoEngineKind::kUring:
      return NewUringEngine(options);
    case IoEngineKind::kAuto:
      break;
  }
  Result<std::unique_ptr<IoEngine>> uring = NewUringEngine(options);
  if (uring.ok()) return uring;
  GRANARY_LOG_INFO("%s; using the psync engine (pread/pwrite threads)",
                   uring.status().message().c_str());
  return NewPsyncEngine(options);
}

IoEngine& IoEngine::Default() {
  // One per process, never destroyed: other process-wide objects use it until exit, and its
  // threads need no joining then. A forked child (torch DataLoader workers) must not share the
  // parent's io_uring ring or use its (absent) pool threads, so it gets its own on first use.
  struct Owned {
    IoEngine* engine;
    pid_t pid;
  };
  static std::atomic<Owned*> current{nullptr};
  static std::mutex mu;
  const pid_t pid = ::getpid();
  Owned* o = current.load(std::memory_order_acquire);
  if (o != nullptr && o->pid == pid) return *o->engine;
  std::lock_guard<std::mutex> lock(mu);
  o = current.load(std::memory_order_acquire);
  if (o != nullptr && o->pid == pid) return *o->engine;
  // The parent's engine (if any) is leaked in the child: destroying it would touch state that
  // belongs to the parent.
  IoEngine* e;
  Result<std::unique_ptr<IoEngine>> created = Create();
  if (created.ok()) {
    e = created->release();
  } else {
    GRANARY_LOG_WARN("default I/O engine: %s; using psync", created.status().ToString().c_str());
    e = NewPsyncEngine(IoEngineOptions{}).release();
  }
  current.store(new Owned{e, pid}, std::memory_order_release);
  return *e;
}

}  // namespace granary
