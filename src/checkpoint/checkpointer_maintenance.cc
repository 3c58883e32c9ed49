// Checkpointer::Verify and Checkpointer::CollectGarbage: thin bindings of the checkpoint's
// verification and retention functions to a Checkpointer's options.
#include "checkpoint/checkpoint_gc.h"
#include "checkpoint/checkpoint_verify.h"
#include "checkpoint/checkpointer_impl.h"

namespace granary::checkpoint {

Status CheckpointerImpl::Verify(uint64_t step) {
  Result<VerifyReport> report = VerifyStep(*store_, root_, step);
  if (!report.ok()) return report.status().WithContext("verify of " + url());
  Status s = report->ToStatus();
  return s.ok() ? s : s.WithContext("verify of " + url());
}

Status CheckpointerImpl::CollectGarbage() {
  RetentionPolicy policy;
  policy.keep_last = options_.keep_last;
  policy.keep_every = options_.keep_every;
  std::optional<uint64_t> in_progress;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (current_ && !current_->Done()) in_progress = current_->step();
  }
  Result<GcReport> report = checkpoint::CollectGarbage(*store_, root_, policy, in_progress);
  return report.status();
}

}  // namespace granary::checkpoint
