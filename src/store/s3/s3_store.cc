#include "store/s3/s3_store.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "store/cache/cache_source.h"
#include "store/s3/s3_writer.h"
#include "store/s3/s3_xml.h"

namespace granary::s3 {
namespace {

// Attempts of a create-only PUT that the server answered 409 ConditionalRequestConflict (another
// conditional write of the key was in progress).
constexpr int kConflictAttempts = 8;

std::string RandomHex() {
  std::random_device rd;
  char buf[33];
  std::snprintf(buf, sizeof buf, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  return buf;
}

// True when a key component starts with ".granary" (the driver's own objects).
bool IsInternal(std::string_view key) {
  size_t begin = 0;
  for (;;) {
    if (key.substr(begin).starts_with(".granary")) return true;
    const size_t slash = key.find('/', begin);
    if (slash == std::string_view::npos) return false;
    begin = slash + 1;
  }
}

// "bytes 100-199/1000" -> 100; -1 when not that form.
int64_t RangeStart(std::string_view content_range) {
  if (!content_range.starts_with("bytes ")) return -1;
  content_range.remove_prefix(6);
  const size_t dash = content_range.find('-');
  if (dash == std::string_view::npos || dash == 0) return -1;
  int64_t v = 0;
  for (char c : content_range.substr(0, dash)) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// S3's longest key.
constexpr size_t kMaxS3KeyBytes = 1024;

class S3Store final : public ObjectStore, public CacheSource {
 public:
  S3Store(std::shared_ptr<Transport> transport, std::string url, std::string prefix)
      : transport_(std::move(transport)),
        url_(std::move(url)),
        prefix_with_slash_(std::move(prefix)) {}

  std::string url() const override { return url_; }

  Result<ObjectInfo> Stat(std::string_view key) override {
    GRANARY_RETURN_IF_ERROR(CheckKey(key));
    Call call = HeadCall(key);
    transport_->Run(call);
    return InfoOf(key, call);
  }

  Result<size_t> Get(std::string_view key, uint64_t offset, std::span<std::byte> dest) override {
    GRANARY_RETURN_IF_ERROR(CheckKey(key));
    Call call = dest.empty() ? HeadCall(key) : RangedGet(key, offset, dest);
    transport_->Run(call);
    return BytesOf(call, offset);
  }

  Status GetMany(std::span<ReadOp> ops) override {
    std::vector<Call> calls;
    std::vector<size_t> index;
    calls.reserve(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      ReadOp& op = ops[i];
      op.bytes_read = 0;
      op.status = CheckKey(op.key);
      if (!op.status.ok()) continue;
      calls.push_back(op.dest.empty() ? HeadCall(op.key) : RangedGet(op.key, op.offset, op.dest));
      index.push_back(i);
    }
    transport_->RunAll(calls);
    for (size_t c = 0; c < calls.size(); ++c) {
      ReadOp& op = ops[index[c]];
      Result<size_t> n = BytesOf(calls[c], op.offset);
      if (n.ok()) {
        op.bytes_read = *n;
      } else {
        op.status = n.status();
      }
    }
    return Status::OK();
  }

  Status Put(std::string_view key, std::span<const std::byte> data) override {
    GRANARY_RETURN_IF_ERROR(CheckKey(key));
    Call call = Upload(key, data);
    transport_->Run(call);
    return transport_->StatusOf(call);
  }

  Status PutIfAbsent(std::string_view key, std::span<const std::byte> data) override {
    GRANARY_RETURN_IF_ERROR(CheckKey(key));
    if (!conditional_put_enforced_) {
      // Documented fallback for servers that ignore If-None-Match: not safe against racing
      // creators.
      Call head = HeadCall(key);
      transport_->Run(head);
      if (head.response.ok()) return Exists(key);
      if (head.response.status != 404) return transport_->StatusOf(head);
      return Put(key, data);
    }
    std::mt19937_64 random{std::random_device{}()};
    for (int attempt = 1;; ++attempt) {
      Call call = Upload(key, data);
      call.request.headers.emplace_back("if-none-match", "*");
      transport_->Run(call);
      if (call.response.status == 412) return Exists(key);
      if (call.response.status == 409 && attempt < kConflictAttempts) {
        std::this_thread::sleep_for(Backoff(transport_->options().retry, attempt, random()));
        continue;
      }
      return transport_->StatusOf(call);
    }
  }

  Result<std::unique_ptr<ObjectWriter>> NewWriter(std::string_view key,
                                                  const WriterOptions& options) override {
    GRANARY_RETURN_IF_ERROR(CheckKey(key));
    GRANARY_RETURN_IF_ERROR(options.Validate());
    return NewS3Writer(transport_, FullKey(key), options);
  }

  Status Delete(std::string_view key) override {
    GRANARY_RETURN_IF_ERROR(CheckKey(key));
    Call head = HeadCall(key);
    transport_->Run(head);
    GRANARY_RETURN_IF_ERROR(transport_->StatusOf(head));
    Call call;
    call.request.method = "DELETE";
    call.request.key = FullKey(key);
    transport_->Run(call);
    return transport_->StatusOf(call);
  }

  Result<ObjectPage> ListPage(std::string_view prefix, std::string_view start_after,
                              size_t max_objects) override {
    const std::string& base = prefix_with_slash_;
    ObjectPage page;
    std::string after = start_after.empty() ? "" : base + std::string(start_after);
    const size_t want = std::clamp<size_t>(max_objects, 1, 1000);
    // Pages may come back with only internal keys; keep going until something to return.
    for (;;) {
      Call call;
      call.request.method = "GET";
      call.request.query = {{"list-type", "2"},
                            {"encoding-type", "url"},
                            {"max-keys", std::to_string(want)},
                            {"prefix", base + std::string(prefix)}};
      if (!after.empty()) call.request.query.emplace_back("start-after", after);
      transport_->Run(call);
      GRANARY_RETURN_IF_ERROR(transport_->StatusOf(call));
      GRANARY_ASSIGN_OR_RETURN(
          ListResult list,
          ParseListObjectsV2(call.response.body,
                             transport_->Describe(base + std::string(prefix) + "*")));
      for (ListedObject& o : list.objects) {
        if (!o.key.starts_with(base)) continue;
        std::string key = o.key.substr(base.size());
        if (IsInternal(key)) continue;
        page.objects.push_back({std::move(key), o.size_bytes, o.mtime_ns});
      }
      if (!list.truncated || list.objects.empty()) return page;
      after = list.objects.back().key;
      if (!page.objects.empty()) {
        page.next_start_after = after.substr(base.size());
        return page;
      }
    }
  }

  // CacheSource.
  std::string cache_identity() const override {
    const S3Settings& s = transport_->settings();
    return s.scheme + "://" + s.host + "/" + s.bucket + "/" + prefix_with_slash_;
  }

  Result<SourceObject> Head(std::string_view key) override {
    GRANARY_RETURN_IF_ERROR(CheckKey(key));
    Call call = HeadCall(key);
    transport_->Run(call);
    return SourceObjectOf(key, call);
  }

  std::vector<Result<SourceObject>> HeadMany(std::span<const std::string> keys) override {
    std::vector<Call> calls;
    calls.reserve(keys.size());
    for (const std::string& key : keys) {
      if (CheckKey(key).ok()) calls.push_back(HeadCall(key));
    }
    transport_->RunAll(calls);
    std::vector<Result<SourceObject>> out;
    out.reserve(keys.size());
    size_t c = 0;
    for (const std::string& key : keys) {
      Status bad = CheckKey(key);
      out.push_back(bad.ok() ? SourceObjectOf(key, calls[c++]) : Result<SourceObject>(bad));
    }
    return out;
  }

  Status ReadPinned(std::span<PinnedRead> reads) override {
    std::vector<Call> calls;
    calls.reserve(reads.size());
    for (PinnedRead& r : reads) {
      calls.push_back(RangedGet(r.key, r.offset, r.dest));
      calls.back().request.headers.emplace_back("if-match", "\"" + r.etag + "\"");
    }
    transport_->RunAll(calls);
    for (size_t i = 0; i < reads.size(); ++i) {
      PinnedRead& r = reads[i];
      r.bytes_read = 0;
      if (calls[i].response.curl_code == CURLE_OK && calls[i].response.status == 412) {
        r.status = FailedPreconditionError(transport_->Describe(calls[i].request.key) +
                                           ": replaced (no longer ETag " + r.etag + ")");
        continue;
      }
      Result<size_t> n = BytesOf(calls[i], r.offset);
      r.status = n.status();
      if (n.ok()) r.bytes_read = *n;
    }
    return Status::OK();
  }

  bool conditional_put_enforced_ = true;

  // Creates the bucket if asked, checks it exists, probes conditional PUTs.
  Status Open(bool create_bucket) {
    Call head;
    head.request.method = "HEAD";
    transport_->Run(head);
    if (head.response.status == 404 && create_bucket) {
      Call create;
      create.request.method = "PUT";
      transport_->Run(create);
      if (!create.response.ok() && create.response.s3_code != "BucketAlreadyOwnedByYou") {
        return transport_->StatusOf(create).WithContext("creating the bucket");
      }
    } else if (head.response.status == 404) {
      return NotFoundError("bucket '" + transport_->settings().bucket + "' does not exist at " +
                           transport_->settings().scheme + "://" + transport_->settings().host +
                           " (add create_bucket=true to the URL to create it)");
    } else if (head.response.curl_code != CURLE_OK) {
      return transport_->StatusOf(head);
    }
    return ProbeConditionalPut();
  }

 private:
  std::string FullKey(std::string_view key) const { return prefix_with_slash_ + std::string(key); }

  // ValidateKey, plus S3's 1024-byte limit on the key with the store's prefix.
  Status CheckKey(std::string_view key) const {
    GRANARY_RETURN_IF_ERROR(ValidateKey(key));
    if (prefix_with_slash_.size() + key.size() > kMaxS3KeyBytes) {
      return InvalidArgumentError(
          "invalid key '" + std::string(key.substr(0, 200)) + "...': " +
          std::to_string(key.size()) + " bytes; with the prefix '" + prefix_with_slash_ +
          "' it exceeds S3's 1024-byte limit (at most " +
          std::to_string(kMaxS3KeyBytes - prefix_with_slash_.size()) + " bytes here)");
    }
    return Status::OK();
  }

  Call HeadCall(std::string_view key) const {
    Call call;
    call.request.method = "HEAD";
    call.request.key = FullKey(key);
    return call;
  }

  Call RangedGet(std::string_view key, uint64_t offset, std::span<std::byte> dest) const {
    Call call;
    call.request.method = "GET";
    call.request.key = FullKey(key);
    call.request.headers.emplace_back("range", "bytes=" + std::to_string(offset) + "-" +
                                                   std::to_string(offset + dest.size() - 1));
    call.request.dest = dest;
    return call;
  }

  Call Upload(std::string_view key, std::span<const std::byte> data) const {
    Call call;
    call.request.method = "PUT";
    call.request.key = FullKey(key);
    call.request.body = data;
    return call;
  }

  Status Exists(std::string_view key) const {
    return AlreadyExistsError(transport_->Describe(FullKey(key)) + ": already exists");
  }

  Result<SourceObject> SourceObjectOf(std::string_view key, const Call& call) const {
    GRANARY_ASSIGN_OR_RETURN(ObjectInfo info, InfoOf(key, call));
    if (call.response.etag.empty()) {
      return DataLossError(transport_->Describe(call.request.key) + ": HEAD answered without an ETag");
    }
    return SourceObject{info.size_bytes, call.response.etag};
  }

  Result<ObjectInfo> InfoOf(std::string_view key, const Call& call) const {
    GRANARY_RETURN_IF_ERROR(transport_->StatusOf(call));
    const S3Response& r = call.response;
    if (r.content_length < 0) {
      return DataLossError(transport_->Describe(call.request.key) +
                           ": HEAD answered without a Content-Length");
    }
    ObjectInfo info;
    info.key = std::string(key);
    info.size_bytes = static_cast<uint64_t>(r.content_length);
    if (!r.last_modified.empty()) {
      const time_t t = curl_getdate(r.last_modified.c_str(), nullptr);
      if (t > 0) info.mtime_ns = static_cast<int64_t>(t) * 1000000000;
    }
    return info;
  }

  // The outcome of a ranged GET (or of the HEAD of an empty read) as Get returns it.
  Result<size_t> BytesOf(const Call& call, uint64_t offset) const {
    const S3Response& r = call.response;
    if (call.request.method == "HEAD") {
      GRANARY_RETURN_IF_ERROR(transport_->StatusOf(call));
      return size_t{0};
    }
    if (r.curl_code == CURLE_OK && r.status == 416) return size_t{0};  // offset at or past end
    GRANARY_RETURN_IF_ERROR(transport_->StatusOf(call));
    if (r.status == 206) {
      if (RangeStart(r.content_range) != static_cast<int64_t>(offset)) {
        return DataLossError(transport_->Describe(call.request.key) +
                             ": asked for bytes from " + std::to_string(offset) +
                             ", the server sent Content-Range '" + r.content_range + "'");
      }
    } else if (offset != 0) {  // 200: the whole object, so the server ignored Range
      return DataLossError(transport_->Describe(call.request.key) + ": the server ignored Range " +
                           "(answered " + std::to_string(r.status) + " for a read at offset " +
                           std::to_string(offset) + ")");
    }
    if (r.content_length >= 0 && static_cast<uint64_t>(r.content_length) != r.dest_bytes) {
      return UnavailableError(transport_->Describe(call.request.key) + ": got " +
                              std::to_string(r.dest_bytes) + " of " +
                              std::to_string(r.content_length) + " bytes");
    }
    return r.dest_bytes;
  }

  Status ProbeConditionalPut() {
    static std::mutex mu;
    static std::map<std::string, bool> known;  // endpoint + bucket -> enforced
    const S3Settings& s = transport_->settings();
    const std::string id = s.scheme + "://" + s.host + "/" + s.bucket;
    {
      std::lock_guard lock(mu);
      if (auto it = known.find(id); it != known.end()) {
        conditional_put_enforced_ = it->second;
        return Status::OK();
      }
    }
    const std::string key = ".granary/probe/" + RandomHex();
    const std::byte none[1] = {};
    int statuses[2] = {0, 0};
    for (int& status : statuses) {
      Call call = Upload(key, std::span(none, 0));
      call.request.headers.emplace_back("if-none-match", "*");
      transport_->Run(call);
      status = call.response.status;
      if (call.response.curl_code != CURLE_OK) return transport_->StatusOf(call);
    }
    if (statuses[0] / 100 != 2) {
      return Status::OK();  // read-only credentials: nothing to learn, assume enforced
    }
    Call del;
    del.request.method = "DELETE";
    del.request.key = FullKey(key);
    transport_->Run(del);
    conditional_put_enforced_ = statuses[1] == 412;
    std::lock_guard lock(mu);
    known[id] = conditional_put_enforced_;
    return Status::OK();
  }

  const std::shared_ptr<Transport> transport_;
  const std::string url_;
  const std::string prefix_with_slash_;  // "" or "prefix/"
};

}  // namespace

Result<std::unique_ptr<ObjectStore>> NewS3Store(S3Settings settings,
                                                const S3StoreOptions& options) {
  std::string url = options.url;
  if (url.empty()) {
    url = "s3://" + settings.bucket;
    if (!settings.prefix.empty()) url += "/" + settings.prefix;
  }
  std::string prefix = settings.prefix.empty() ? "" : settings.prefix + "/";
  const bool create_bucket = settings.create_bucket;
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<Transport> transport,
                           Transport::Create(std::move(settings), options.transport));
  auto store = std::make_unique<S3Store>(std::shared_ptr<Transport>(std::move(transport)),
                                         std::move(url), std::move(prefix));
  GRANARY_RETURN_IF_ERROR(store->Open(create_bucket));
  return std::unique_ptr<ObjectStore>(std::move(store));
}

Result<std::unique_ptr<ObjectStore>> OpenS3Store(const StoreUrl& url) {
  GRANARY_ASSIGN_OR_RETURN(S3Settings settings, ResolveS3Settings(url, Environment::Process()));
  S3StoreOptions options;
  options.url = RedactedUrl(url);
  return NewS3Store(std::move(settings), options);
}

bool ConditionalPutEnforced(const ObjectStore& store) {
  const auto* s3 = dynamic_cast<const S3Store*>(&store);
  return s3 != nullptr && s3->conditional_put_enforced_;
}

}  // namespace granary::s3
