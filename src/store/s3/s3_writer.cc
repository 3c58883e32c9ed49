#include "store/s3/s3_writer.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "store/s3/s3_xml.h"

namespace granary::s3 {
namespace {

class S3Writer final : public ObjectWriter {
 public:
  S3Writer(std::shared_ptr<Transport> transport, std::string object_key,
           const WriterOptions& options)
      : transport_(std::move(transport)),
        object_key_(std::move(object_key)),
        part_bytes_(std::max(options.part_bytes, kMinPartBytes)),
        max_in_flight_(options.max_parts_in_flight) {}

  ~S3Writer() override {
    if (!committed_) Abort().IgnoreError();  // the store.h contract: destroying aborts
  }

  Status Append(std::span<const std::byte> data) override {
    GRANARY_RETURN_IF_ERROR(Check());
    while (!data.empty()) {
      if (current_ == nullptr) GRANARY_RETURN_IF_ERROR(TakeBuffer());
      const size_t n = std::min(data.size(), part_bytes_ - fill_);
      std::memcpy(current_->data() + fill_, data.data(), n);
      fill_ += n;
      appended_ += n;
      data = data.subspan(n);
      if (fill_ == part_bytes_) GRANARY_RETURN_IF_ERROR(SendPart());
    }
    return Status::OK();
  }

  Status Commit() override {
    GRANARY_RETURN_IF_ERROR(Check());
    if (upload_id_.empty()) {  // everything fit in one part: a plain PUT
      Call call;
      call.request.method = "PUT";
      call.request.key = object_key_;
      if (current_ != nullptr) call.request.body = std::span(current_->data(), fill_);
      transport_->Run(call);
      Status s = transport_->StatusOf(call);
      if (!s.ok()) return Fail(s);
      committed_ = true;
      return Status::OK();
    }
    if (fill_ > 0) GRANARY_RETURN_IF_ERROR(SendPart());
    std::vector<std::pair<int, std::string>> parts;
    Status background;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return in_flight_ == 0; });
      background = error_;
      parts = parts_;
    }
    if (!background.ok()) return Fail(background);
    std::sort(parts.begin(), parts.end());
    const std::string xml = CompleteMultipartUploadBody(parts);
    Call call;
    call.request.method = "POST";
    call.request.key = object_key_;
    call.request.query = {{"uploadId", upload_id_}};
    call.request.headers = {{"content-type", "application/xml"}};
    call.request.body = std::as_bytes(std::span(xml.data(), xml.size()));
    transport_->Run(call);
    Status s = transport_->StatusOf(call);
    if (!s.ok()) return Fail(s.WithContext("completing the multipart upload"));
    committed_ = true;
    return Status::OK();
  }

  Status Abort() override {
    if (committed_ || aborted_) return Status::OK();
    aborted_ = true;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return in_flight_ == 0; });
    }
    if (upload_id_.empty()) return Status::OK();
    Call call;
    call.request.method = "DELETE";
    call.request.key = object_key_;
    call.request.query = {{"uploadId", upload_id_}};
    transport_->Run(call);
    if (call.response.status == 404) return Status::OK();  // already gone
    return transport_->StatusOf(call).WithContext("aborting the multipart upload");
  }

  uint64_t bytes_appended() const override { return appended_; }

 private:
  // The error every call returns once the writer failed or was aborted.
  Status Check() {
    if (committed_) {
      return FailedPreconditionError(transport_->Describe(object_key_) +
                                     ": writer already committed");
    }
    if (!sticky_.ok()) return sticky_;
    if (aborted_) {
      return FailedPreconditionError(transport_->Describe(object_key_) + ": writer was aborted");
    }
    Status background;
    {
      std::lock_guard lock(mu_);
      background = error_;
    }
    if (!background.ok()) return Fail(background);
    return Status::OK();
  }

  Status Fail(const Status& s) {
    Abort().IgnoreError();  // the original error is the one to report
    sticky_ = s;
    return s;
  }

  // Makes current_ a free staging buffer, waiting for an in-flight part when all are busy.
  Status TakeBuffer() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return !free_.empty() || buffers_.size() < max_in_flight_ ||
                                !error_.ok(); });
    if (!error_.ok()) return error_;
    if (!free_.empty()) {
      current_ = free_.back();
      free_.pop_back();
    } else {
      buffers_.push_back(std::make_unique<std::vector<std::byte>>(part_bytes_));
      current_ = buffers_.back().get();
    }
    fill_ = 0;
    return Status::OK();
  }

  Status StartUpload() {
    Call call;
    call.request.method = "POST";
    call.request.key = object_key_;
    call.request.query = {{"uploads", ""}};
    transport_->Run(call);
    GRANARY_RETURN_IF_ERROR(
        transport_->StatusOf(call).WithContext("starting a multipart upload"));
    GRANARY_ASSIGN_OR_RETURN(upload_id_,
                             ParseUploadId(call.response.body, transport_->Describe(object_key_)));
    return Status::OK();
  }

  // Sends current_[0, fill_) as the next part, in the background.
  Status SendPart() {
    if (upload_id_.empty()) {
      Status s = StartUpload();
      if (!s.ok()) return Fail(s);
    }
    const int number = ++parts_sent_;
    if (number > kMaxParts) {
      return Fail(ResourceExhaustedError(
          transport_->Describe(object_key_) + ": more than " + std::to_string(kMaxParts) +
          " parts of " + std::to_string(part_bytes_) +
          " bytes; raise WriterOptions.part_bytes for objects this large"));
    }
    auto call = std::make_shared<Call>();
    call->request.method = "PUT";
    call->request.key = object_key_;
    call->request.query = {{"partNumber", std::to_string(number)}, {"uploadId", upload_id_}};
    call->request.body = std::span(current_->data(), fill_);
    std::vector<std::byte>* buffer = current_;
    current_ = nullptr;
    fill_ = 0;
    {
      std::lock_guard lock(mu_);
      ++in_flight_;
    }
    transport_->Start(call.get(), [this, call, buffer, number] {
      Status s = transport_->StatusOf(*call);
      if (s.ok() && call->response.etag.empty()) {
        s = DataLossError(transport_->Describe(object_key_) + ": part " +
                          std::to_string(number) + " was stored without an ETag");
      }
      std::lock_guard lock(mu_);
      if (s.ok()) {
        parts_.emplace_back(number, call->response.etag);
      } else if (error_.ok()) {
        error_ = s.WithContext("part " + std::to_string(number));
      }
      free_.push_back(buffer);
      --in_flight_;
      cv_.notify_all();
    });
    return Status::OK();
  }

  const std::shared_ptr<Transport> transport_;
  const std::string object_key_;
  const size_t part_bytes_;
  const size_t max_in_flight_;

  // Writer-thread state.
  std::string upload_id_;
  std::vector<std::byte>* current_ = nullptr;
  size_t fill_ = 0;
  uint64_t appended_ = 0;
  int parts_sent_ = 0;
  bool committed_ = false;
  bool aborted_ = false;
  Status sticky_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<std::vector<std::byte>>> buffers_;  // guarded by mu_
  std::vector<std::vector<std::byte>*> free_;                     // guarded by mu_
  std::vector<std::pair<int, std::string>> parts_;                // guarded by mu_
  int in_flight_ = 0;                                             // guarded by mu_
  Status error_;                                                  // guarded by mu_
};

}  // namespace

std::unique_ptr<ObjectWriter> NewS3Writer(std::shared_ptr<Transport> transport,
                                          std::string object_key, const WriterOptions& options) {
  return std::make_unique<S3Writer>(std::move(transport), std::move(object_key), options);
}

}  // namespace granary::s3
