// HTTP for the S3 driver: signed requests over libcurl's multi interface, many in flight on
// kept-alive connections, retried by the policy of s3_retry.h.
//
// One Transport per S3Store. It owns `loops` event-loop threads that drive the transfers of the
// store; callers hand it Calls (a request plus the slot for its response) and block until their
// calls finish (Run, RunAll) or get a callback (Start). Connections stay open between requests
// (libcurl's connection cache), TCP_NODELAY is set on each (a small request otherwise waits about
// 40 ms for a delayed ACK), and at most `max_in_flight` transfers run at once; the rest wait in
// a FIFO queue, so a queued request's timeout starts only when it is sent.
//
// Response bodies of GETs land straight in the caller's `dest` buffer (no staging copy); a body
// longer than `dest` fails the call instead of writing past it. Error bodies and XML results
// collect in S3Response::body. Each attempt is re-signed (SigV4), with a timeout that grows with
// the bytes it moves; retried outcomes wait a full-jitter backoff first.
//
// Thread-safe: any thread may submit; callbacks run on the loop thread and must not block.
// After fork() the child cannot use a Transport (its thread stayed in the parent); destroying it
// there leaks it quietly instead of hanging, and the child opens its own store.
#ifndef GRANARY_STORE_S3_S3_TRANSPORT_H_
#define GRANARY_STORE_S3_S3_TRANSPORT_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "granary/status.h"
#include "store/s3/s3_config.h"
#include "store/s3/s3_retry.h"

namespace granary::s3 {

struct TransportOptions {
  RetryPolicy retry;
  // Transfers running at once, over all loops (connections are opened as needed, then kept).
  int max_in_flight = 64;
  // Event-loop threads. Each drives its own connections and copies its responses into the
  // callers' buffers; calls are spread over them round-robin, so one core's receive-and-copy
  // rate does not cap a store's throughput.
  int loops = 2;
  std::chrono::milliseconds connect_timeout{5000};
  // Bodies up to this size are signed with their SHA-256; larger ones are sent as
  // UNSIGNED-PAYLOAD (hashing 8 MiB parts costs more CPU than it buys on a trusted link; the
  // layers above checksum their data end to end).
  size_t sign_payload_max_bytes = 1u << 20;
};

struct S3Request {
  std::string method = "GET";  // GET, HEAD, PUT, POST, DELETE
  // The object's full key in the bucket (store prefix included); "" for the bucket itself.
  std::string key;
  // Query parameters, not encoded ("uploadId" -> "abc", "uploads" -> "").
  std::vector<std::pair<std::string, std::string>> query;
  // Extra headers with lowercase names ("range", "if-none-match", "content-type").
  std::vector<std::pair<std::string, std::string>> headers;
  std::span<const std::byte> body;  // request body (PUT, POST); must outlive the call
  std::span<std::byte> dest;        // a 2xx response body lands here when non-empty
};

struct S3Response {
  int curl_code = 0;  // CURLcode of the last attempt; 0 = a response arrived
  std::string curl_error;
  int status = 0;          // HTTP status of the last attempt
  std::string s3_code;     // <Code> of an error body, "" if none
  std::string s3_message;  // <Message> of an error body
  std::string request_id;  // x-amz-request-id
  std::string body;        // body when `dest` is empty, or the error body
  size_t dest_bytes = 0;   // bytes written into dest
  bool overflow = false;   // the body was longer than dest (the call failed)
  std::string etag;        // without quotes
  std::string content_range;
  std::string last_modified;
  int64_t content_length = -1;
  int attempts = 0;

  bool ok() const {
    return curl_code == 0 && !overflow && status >= 200 && status < 300 && s3_code.empty();
  }
};

struct Call {
  S3Request request;
  S3Response response;
};

class Transport {
 public:
  // Starts the loop thread. Fails only when libcurl cannot be set up.
  static Result<std::unique_ptr<Transport>> Create(S3Settings settings,
                                                   TransportOptions options = {});
  // Waits for every submitted call to finish.
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Runs one call to completion (retries included).
  void Run(Call& call);
  // Runs calls concurrently (up to max_in_flight) and returns when all have finished.
  void RunAll(std::span<Call> calls);
  // Starts `call` and returns; `done` runs on the loop thread when it has finished. `call` must
  // stay valid until then.
  void Start(Call* call, std::function<void()> done);

  const S3Settings& settings() const { return settings_; }
  const TransportOptions& options() const { return options_; }

  // "s3://bucket/key" for messages.
  std::string Describe(std::string_view key) const;
  // The Status of a finished call: OK for success, otherwise an error naming `key` (or the
  // bucket), the HTTP status, the server's code and message, the request id and the attempts;
  // or the transport failure and the endpoint. NotFound for 404, PermissionDenied for 401/403,
  // FailedPrecondition for 409/412, OutOfRange for 416, InvalidArgument for other 4xx,
  // Unavailable for 5xx, 429 and transport failures, DataLoss for an oversized body.
  Status StatusOf(const Call& call) const;

 private:
  struct Loop;
  Transport(S3Settings settings, TransportOptions options);

  S3Settings settings_;
  TransportOptions options_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<size_t> next_loop_{0};
};

}  // namespace granary::s3

#endif  // GRANARY_STORE_S3_S3_TRANSPORT_H_
