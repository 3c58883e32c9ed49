#include "store/s3/s3_transport.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include <unistd.h>

#include "store/s3/s3_xml.h"
#include "store/s3/sigv4.h"

namespace granary::s3 {
namespace {

using Clock = std::chrono::steady_clock;

// Response bodies kept in memory when there is no dest buffer (XML results, error documents).
constexpr size_t kMaxBodyBytes = size_t{256} << 20;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view TrimView(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' ||
                        s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

// One call in the loop: the call, its callback, and the state of its current attempt.
struct Transfer {
  Call* call = nullptr;
  std::function<void()> done;
  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  std::string url;
  std::string payload_sha256;  // computed once per call
  size_t upload_pos = 0;
  Clock::time_point retry_at{};
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  S3Response& r = t->call->response;
  const std::string_view line(data, size * n);
  if (line.starts_with("HTTP/")) {  // a new response (after 100 Continue, or a retry)
    r.etag.clear();
    r.content_range.clear();
    r.last_modified.clear();
    r.content_length = -1;
    const size_t sp = line.find(' ');
    if (sp != std::string_view::npos) r.status = std::atoi(std::string(line.substr(sp + 1, 3)).c_str());
    return size * n;
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * n;
  const std::string name = Lower(TrimView(line.substr(0, colon)));
  std::string_view value = TrimView(line.substr(colon + 1));
  if (name == "etag") {
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    r.etag = std::string(value);
  } else if (name == "content-range") {
    r.content_range = std::string(value);
  } else if (name == "last-modified") {
    r.last_modified = std::string(value);
  } else if (name == "content-length") {
    r.content_length = std::atoll(std::string(value).c_str());
  } else if (name == "x-amz-request-id") {
    r.request_id = std::string(value);
  }
  return size * n;
}

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  S3Response& r = t->call->response;
  const std::span<std::byte> dest = t->call->request.dest;
  const size_t bytes = size * n;
  if (!dest.empty() && r.status >= 200 && r.status < 300) {
    if (bytes > dest.size() - r.dest_bytes) {
      r.overflow = true;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
    std::memcpy(dest.data() + r.dest_bytes, data, bytes);
    r.dest_bytes += bytes;
    return bytes;
  }
  if (r.body.size() + bytes > kMaxBodyBytes) return 0;
  r.body.append(data, bytes);
  return bytes;
}

size_t OnRead(char* buffer, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::span<const std::byte> body = t->call->request.body;
  const size_t count = std::min(size * n, body.size() - t->upload_pos);
  std::memcpy(buffer, body.data() + t->upload_pos, count);
  t->upload_pos += count;
  return count;
}

int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 ||
      static_cast<size_t>(offset) > t->call->request.body.size()) {
    return CURL_SEEKFUNC_CANTSEEK;
  }
  t->upload_pos = static_cast<size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

std::string QueryString(const std::vector<std::pair<std::string, std::string>>& query) {
  std::string out;
  for (const auto& [k, v] : query) {
    out += out.empty() ? "?" : "&";
    out += UriEncode(k, true);
    if (!v.empty()) out += "=" + UriEncode(v, true);
  }
  return out;
}

}  // namespace

struct Transport::Loop {
  Transport* owner = nullptr;
  CURLM* multi = nullptr;
  std::thread thread;
  const int owner_pid = ::getpid();
  std::mt19937_64 random{std::random_device{}()};

  std::mutex mu;
  std::deque<Transfer*> submitted;  // guarded by mu
  bool stopping = false;            // guarded by mu

  // Loop-thread state.
  std::deque<Transfer*> waiting;   // not yet started (over max_in_flight)
  std::vector<Transfer*> backoff;  // retries waiting for retry_at
  std::vector<CURL*> idle_easy;
  int in_flight = 0;

  void Submit(Transfer* t) {
    {
      std::lock_guard lock(mu);
      submitted.push_back(t);
    }
    curl_multi_wakeup(multi);
  }

  void Main();
  void StartAttempt(Transfer* t);
  void Finish(Transfer* t, CURLcode code);
  bool Idle() const { return waiting.empty() && backoff.empty() && in_flight == 0; }
};

void Transport::Loop::StartAttempt(Transfer* t) {
  const S3Settings& s = owner->settings_;
  const TransportOptions& o = owner->options_;
  S3Request& req = t->call->request;
  S3Response& resp = t->call->response;
  const int attempts = resp.attempts + 1;
  resp = S3Response{};
  resp.attempts = attempts;
  t->upload_pos = 0;

  std::string host = s.host;
  std::string path;
  if (s.path_style) {
    path = "/" + s.bucket;
    if (!req.key.empty()) path += "/" + UriEncode(req.key, false);
  } else {
    host = s.bucket + "." + s.host;
    path = "/" + UriEncode(req.key, false);
  }
  t->url = s.scheme + "://" + host + path + QueryString(req.query);

  if (t->payload_sha256.empty()) {
    t->payload_sha256 = req.body.size() <= o.sign_payload_max_bytes ? Sha256Hex(req.body)
                                                                     : "UNSIGNED-PAYLOAD";
  }
  SignRequest sign;
  sign.method = req.method;
  sign.path = path;
  sign.query = req.query;
  sign.headers = req.headers;
  sign.headers.emplace_back("host", host);
  sign.headers.emplace_back("x-amz-content-sha256", t->payload_sha256);
  sign.payload_sha256 = t->payload_sha256;
  std::string authorization;
  if (!s.credentials.access_key_id.empty()) {
    SignScope scope;
    scope.region = s.region;
    scope.amz_date = AmzDate(std::chrono::system_clock::now());
    authorization = Sign(sign, s.credentials, scope);
  }

  curl_slist_free_all(t->header_list);
  t->header_list = nullptr;
  for (const auto& [name, value] : sign.headers) {
    if (name == "host") continue;  // curl writes Host from the URL
    t->header_list = curl_slist_append(t->header_list, (name + ": " + value).c_str());
  }
  if (!authorization.empty()) {
    t->header_list =
        curl_slist_append(t->header_list, ("Authorization: " + authorization).c_str());
  }
  t->header_list = curl_slist_append(t->header_list, "Expect:");  // no 100-continue round trip
  if (req.method == "POST" || req.method == "PUT") {
    bool has_type = false;
    for (const auto& h : req.headers) has_type |= h.first == "content-type";
    if (!has_type) {
      t->header_list =
          curl_slist_append(t->header_list, "Content-Type: application/octet-stream");
    }
  }

  if (t->easy == nullptr) {
    if (!idle_easy.empty()) {
      t->easy = idle_easy.back();
      idle_easy.pop_back();
      curl_easy_reset(t->easy);
    } else {
      t->easy = curl_easy_init();
    }
  } else {
    curl_easy_reset(t->easy);
  }
  CURL* e = t->easy;
  const uint64_t bytes_moved = std::max<uint64_t>(req.body.size(), req.dest.size());
  curl_easy_setopt(e, CURLOPT_URL, t->url.c_str());
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->header_list);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout.count()));
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(AttemptTimeout(o.retry, bytes_moved).count()));
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
  if (req.method == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (req.method == "PUT" || req.method == "POST") {
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 2L * 1024 * 1024);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    curl_easy_setopt(e, CURLOPT_READFUNCTION, OnRead);
    curl_easy_setopt(e, CURLOPT_READDATA, t);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, OnSeek);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
    if (req.method == "POST") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "POST");
  } else if (req.method != "GET") {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  curl_multi_add_handle(multi, e);
  ++in_flight;
}

void Transport::Loop::Finish(Transfer* t, CURLcode code) {
  curl_multi_remove_handle(multi, t->easy);
  --in_flight;
  S3Response& r = t->call->response;
  r.curl_code = code;
  if (code != CURLE_OK) {
    const char* what = curl_easy_strerror(code);
    r.curl_error = what != nullptr ? what : "unknown";
  }
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status != 0) r.status = static_cast<int>(status);
  const bool error_status = r.status < 200 || r.status >= 300;
  if (!r.body.empty() && (error_status || t->call->request.method == "POST")) {
    if (std::optional<S3Error> err = ParseError(r.body)) {
      r.s3_code = err->code;
      r.s3_message = err->message;
      if (r.request_id.empty()) r.request_id = err->request_id;
    }
  }
  const Verdict verdict = r.overflow ? Verdict::kFail : Classify(code, r.status, r.s3_code);
  if (verdict == Verdict::kRetry && r.attempts < owner->options_.retry.max_attempts) {
    t->retry_at = Clock::now() + Backoff(owner->options_.retry, r.attempts, random());
    backoff.push_back(t);
    return;
  }
  curl_slist_free_all(t->header_list);
  t->header_list = nullptr;
  idle_easy.push_back(t->easy);
  t->easy = nullptr;
  std::function<void()> done = std::move(t->done);
  delete t;
  done();
}

void Transport::Loop::Main() {
  const int loops = std::max<int>(1, static_cast<int>(owner->loops_.size()));
  const int max_in_flight = std::max(1, owner->options_.max_in_flight / loops);
  for (;;) {
    {
      std::lock_guard lock(mu);
      while (!submitted.empty()) {
        waiting.push_back(submitted.front());
        submitted.pop_front();
      }
      if (stopping && Idle()) break;
    }
    const Clock::time_point now = Clock::now();
    Clock::time_point next_retry = now + std::chrono::milliseconds(200);
    for (size_t i = 0; i < backoff.size();) {
      if (backoff[i]->retry_at <= now) {
        waiting.push_front(backoff[i]);
        backoff[i] = backoff.back();
        backoff.pop_back();
      } else {
        next_retry = std::min(next_retry, backoff[i]->retry_at);
        ++i;
      }
    }
    while (in_flight < max_in_flight && !waiting.empty()) {
      Transfer* t = waiting.front();
      waiting.pop_front();
      StartAttempt(t);
    }
    int running = 0;
    curl_multi_perform(multi, &running);
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
      if (msg->msg != CURLMSG_DONE) continue;
      Transfer* t = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &t);
      Finish(t, msg->data.result);
    }
    if (!waiting.empty() && in_flight < max_in_flight) continue;
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_retry -
                                                                            Clock::now());
    curl_multi_poll(multi, nullptr, 0, static_cast<int>(std::max<int64_t>(wait.count(), 0)),
                    nullptr);
  }
}

Transport::Transport(S3Settings settings, TransportOptions options)
    : settings_(std::move(settings)), options_(options) {}

Result<std::unique_ptr<Transport>> Transport::Create(S3Settings settings,
                                                     TransportOptions options) {
  GlobalInit();
  std::unique_ptr<Transport> t(new Transport(std::move(settings), options));
  const int loops = std::clamp(options.loops, 1, 64);
  for (int i = 0; i < loops; ++i) {
    auto loop = std::make_unique<Loop>();
    loop->owner = t.get();
    loop->multi = curl_multi_init();
    if (loop->multi == nullptr) return InternalError("libcurl: curl_multi_init failed");
    // Keep as many idle connections as transfers may run at once.
    curl_multi_setopt(loop->multi, CURLMOPT_MAXCONNECTS,
                      static_cast<long>(std::max(1, options.max_in_flight / loops)));
    t->loops_.push_back(std::move(loop));
  }
  // Threads start once every loop exists (Main reads loops_.size()).
  for (auto& loop : t->loops_) loop->thread = std::thread([l = loop.get()] { l->Main(); });
  return t;
}

Transport::~Transport() {
  for (auto& loop : loops_) {
    if (::getpid() != loop->owner_pid) {
      // A forked child: the loop thread lives only in the parent, and its mutex and curl
      // handles may be mid-use there. Let go of everything without touching it.
      if (loop->thread.joinable()) loop->thread.detach();
      (void)loop.release();  // deliberately leaked
      continue;
    }
    {
      std::lock_guard lock(loop->mu);
      loop->stopping = true;
    }
    curl_multi_wakeup(loop->multi);
    if (loop->thread.joinable()) loop->thread.join();
    for (CURL* e : loop->idle_easy) curl_easy_cleanup(e);
    curl_multi_cleanup(loop->multi);
  }
}

void Transport::Start(Call* call, std::function<void()> done) {
  auto* t = new Transfer;
  t->call = call;
  t->done = std::move(done);
  call->response = S3Response{};
  loops_[next_loop_.fetch_add(1, std::memory_order_relaxed) % loops_.size()]->Submit(t);
}

void Transport::RunAll(std::span<Call> calls) {
  std::mutex mu;
  std::condition_variable cv;
  size_t remaining = calls.size();
  for (Call& call : calls) {
    Start(&call, [&] {
      std::lock_guard lock(mu);
      if (--remaining == 0) cv.notify_all();
    });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return remaining == 0; });
}

void Transport::Run(Call& call) { RunAll(std::span<Call>(&call, 1)); }

std::string Transport::Describe(std::string_view key) const {
  std::string out = "s3://" + settings_.bucket;
  if (!key.empty()) out += "/" + std::string(key);
  return out;
}

Status Transport::StatusOf(const Call& call) const {
  const S3Response& r = call.response;
  if (r.ok()) return Status::OK();
  const std::string what = Describe(call.request.key);
  const std::string tries =
      r.attempts == 1 ? "1 attempt" : std::to_string(r.attempts) + " attempts";
  if (r.overflow) {
    return DataLossError(what + ": the server sent more bytes than asked for (" +
                         std::to_string(call.request.dest.size()) + ")");
  }
  if (r.curl_code != CURLE_OK && (r.status == 0 || r.curl_code != CURLE_WRITE_ERROR)) {
    const std::string endpoint = settings_.scheme + "://" + settings_.host;
    if (r.curl_code == CURLE_PARTIAL_FILE) {
      return UnavailableError(what + ": the response body from " + endpoint +
                              " was cut short (" + tries + ")");
    }
    return UnavailableError(what + ": " + call.request.method + " to " + endpoint +
                            " failed: " + r.curl_error + " (curl " +
                            std::to_string(r.curl_code) + ", " + tries + ")");
  }
  std::string msg = what + ": " + call.request.method + " answered HTTP " +
                    std::to_string(r.status);
  if (!r.s3_code.empty()) msg += " " + r.s3_code;
  if (!r.s3_message.empty()) msg += ": " + r.s3_message;
  if (!r.request_id.empty()) msg += " (request id " + r.request_id + ", " + tries + ")";
  else msg += " (" + tries + ")";
  switch (r.status) {
    case 404:
      return NotFoundError(msg);
    case 401:
    case 403:
      return PermissionDeniedError(msg);
    case 409:
    case 412:
      return FailedPreconditionError(msg);
    case 416:
      return OutOfRangeError(msg);
    default:
      break;
  }
  if (r.status >= 500 || r.status == 429 || r.status == 408 || r.status < 300) {
    return UnavailableError(msg);
  }
  if (r.status >= 400) return InvalidArgumentError(msg);
  return InternalError(msg);
}

}  // namespace granary::s3
