// When an S3 request is tried again, after how long, and how long one attempt may take.
//
// Retried: HTTP 500, 502, 503, 504, 408 and 429; the transient S3 error codes (SlowDown,
// InternalError, ServiceUnavailable, RequestTimeout, Throttling) whatever their status; transport
// failures that leave the request's outcome unknown or unsent (connection refused or
// reset, nothing received, a body cut short, timeouts, DNS). Everything else (403, 404, 412, other
// 4xx, TLS certificate errors) fails at once with the server's code.
//
// Backoff is "full jitter" (AWS Architecture Blog, "Exponential Backoff and Jitter"): attempt n
// waits uniform(0, min(cap, base * 2^n)), so many clients hammered by one SlowDown spread out.
// A request's timeout grows with its size: a fixed allowance plus its bytes at a floor bandwidth,
// so an 8 MiB part on a slow link is not cut off while a stalled small request fails fast.
//
// Pure functions; thread-safe.
#ifndef GRANARY_STORE_S3_S3_RETRY_H_
#define GRANARY_STORE_S3_S3_RETRY_H_

#include <chrono>
#include <cstdint>
#include <string_view>

namespace granary::s3 {

struct RetryPolicy {
  int max_attempts = 8;  // including the first
  std::chrono::milliseconds base{50};
  std::chrono::milliseconds cap{5000};
  // Timeout of one attempt: fixed + bytes / min_bytes_per_second.
  std::chrono::milliseconds fixed_timeout{15000};
  uint64_t min_bytes_per_second = 4u << 20;
};

enum class Verdict { kDone, kRetry, kFail };

// The verdict on one attempt: `curl_code` is the transport's result (0 = a response arrived),
// `http_status` the response's status (ignored unless curl_code is 0), `s3_code` the <Code> of
// an error body ("" if none).
Verdict Classify(int curl_code, int http_status, std::string_view s3_code);

// How long to wait before attempt `attempt` (1 = the first retry), given a uniformly random
// 64-bit value (the caller's generator, so tests are deterministic).
std::chrono::milliseconds Backoff(const RetryPolicy& policy, int attempt, uint64_t random);

// The time one attempt moving `bytes` (request body or expected response) may take.
std::chrono::milliseconds AttemptTimeout(const RetryPolicy& policy, uint64_t bytes);

}  // namespace granary::s3

#endif  // GRANARY_STORE_S3_S3_RETRY_H_
