#include "store/s3/s3_retry.h"

#include <curl/curl.h>

#include <algorithm>

namespace granary::s3 {

Verdict Classify(int curl_code, int http_status, std::string_view s3_code) {
  if (curl_code != CURLE_OK) {
    switch (curl_code) {
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_COULDNT_CONNECT:
      case CURLE_PARTIAL_FILE:
      case CURLE_OPERATION_TIMEDOUT:
      case CURLE_GOT_NOTHING:
      case CURLE_SEND_ERROR:
      case CURLE_RECV_ERROR:
      case CURLE_HTTP2:
      case CURLE_HTTP2_STREAM:
        return Verdict::kRetry;
      default:
        return Verdict::kFail;  // TLS trust, bad URL, out of memory, aborted by us, ...
    }
  }
  for (std::string_view code : {"SlowDown", "InternalError", "ServiceUnavailable",
                                "RequestTimeout", "Throttling", "ThrottlingException"}) {
    if (s3_code == code) return Verdict::kRetry;
  }
  if (http_status >= 200 && http_status < 300) return Verdict::kDone;
  switch (http_status) {
    case 408:
    case 429:
    case 500:
    case 502:
    case 503:
    case 504:
      return Verdict::kRetry;
    default:
      return Verdict::kFail;
  }
}

std::chrono::milliseconds Backoff(const RetryPolicy& policy, int attempt, uint64_t random) {
  const int shift = std::clamp(attempt - 1, 0, 30);
  const int64_t ceiling =
      std::min<int64_t>(policy.cap.count(), policy.base.count() * (int64_t{1} << shift));
  if (ceiling <= 0) return std::chrono::milliseconds(0);
  const uint64_t span = static_cast<uint64_t>(ceiling) + 1;
  return std::chrono::milliseconds(static_cast<int64_t>(random % span));
}

std::chrono::milliseconds AttemptTimeout(const RetryPolicy& policy, uint64_t bytes) {
  const uint64_t rate = std::max<uint64_t>(policy.min_bytes_per_second, 1);
  return policy.fixed_timeout + std::chrono::milliseconds(bytes * 1000 / rate);
}

}  // namespace granary::s3
