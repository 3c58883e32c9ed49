// FaultProxy: a test-only HTTP/1.1 proxy that sits between the S3 driver and a real server
// (moto, Ceph RGW) and injects faults by rule: error responses, connections reset or cut
// short mid-body, resets before any response, and delays. Real servers never misbehave on
// cue, so the driver's retry, timeout and truncation handling is exercised through this.
//
//   GRANARY_ASSERT_OK_AND_ASSIGN(auto proxy, FaultProxy::Start("127.0.0.1", moto->port()));
//   proxy->AddRule({.method = "GET", .kind = FaultKind::kResetMidBody, .after_body_bytes = 4096});
//   config.endpoint = proxy->endpoint();   // the driver now talks to the proxy
//
// How it works (kept simple on purpose): each client connection carries exactly one request.
// The proxy reads it (request line, headers, Content-Length body; chunked uploads are refused
// with 501), opens a fresh upstream connection, forwards the request unchanged except for
// `Connection: close`, reads the whole upstream response until EOF and relays it with
// `Connection: close`, so the client reconnects for its next request. The Host header is kept,
// so SigV4 signatures made for the proxy's address still verify upstream. An `Expect:
// 100-continue` is answered by the proxy itself and not forwarded. Test-only; never link it
// into the library.
#ifndef GRANARY_STORE_S3_TESTING_FAULT_PROXY_H_
#define GRANARY_STORE_S3_TESTING_FAULT_PROXY_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "granary/status.h"

namespace granary::s3::testing {

enum class FaultKind {
  // Answers with `status` and an S3 <Error><Code>s3_code</Code>... XML body; nothing is
  // forwarded upstream.
  kRespond,
  // Forwards, relays the response headers and `after_body_bytes` of the body, then resets the
  // connection (RST via SO_LINGER 0). Clients see a receive error (curl: CURLE_RECV_ERROR).
  kResetMidBody,
  // Forwards, relays the headers (with the upstream Content-Length) and `after_body_bytes` of
  // the body, then closes cleanly (FIN). Clients see a short body (curl: CURLE_PARTIAL_FILE).
  kTruncateBody,
  // Reads the request (just its head if the client awaits 100 Continue), forwards nothing
  // and resets the connection.
  kResetBeforeResponse,
  // Sleeps `delay`, then forwards normally (for client timeout tests).
  kDelay,
};

// One fault-injection rule. A request matches when both filters match.
struct FaultRule {
  std::string method{};         // "GET", "PUT", ...; "" matches any
  std::string target_contains{};  // substring of the request target (path?query); "" matches any
  FaultKind kind = FaultKind::kRespond;
  int status = 503;                       // kRespond only
  std::string s3_code = "SlowDown";       // kRespond only
  size_t after_body_bytes = 0;            // kResetMidBody and kTruncateBody
  std::chrono::milliseconds delay{0};     // kDelay only
  int times = 1;                          // matching requests affected; -1 = every one
};

// Thread-safe: rules may be added and counters read while requests are in flight.
class FaultProxy {
 public:
  // Listens on 127.0.0.1 (ephemeral port) and starts the accept thread. upstream_host is a
  // name or address resolved per request. Returns Internal if the socket cannot be set up.
  static Result<std::unique_ptr<FaultProxy>> Start(std::string upstream_host,
                                                   int upstream_port);

  // Stops accepting, unblocks and joins every connection thread, closes every socket.
  // Requests in flight are cut off.
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  int port() const { return port_; }
  // "http://127.0.0.1:PORT".
  std::string endpoint() const;

  // Appends a rule. Rules are tried in order; the first one that matches and has times left
  // applies (and uses up one of its times). Requests that no rule takes pass through.
  void AddRule(FaultRule rule);
  // Removes all rules; requests already past rule matching are not affected.
  void ClearRules();

  // Requests seen (their heads read from a client), and faults injected (kDelay included).
  int requests() const { return requests_.load(); }
  int faults() const { return faults_.load(); }

 private:
  struct Connection {
    std::thread thread;
    std::atomic<bool> done{false};
  };

  FaultProxy(std::string upstream_host, int upstream_port, int listen_fd, int port);

  void AcceptLoop();
  void ServeConnection(int client_fd);
  // Finds and uses up the rule for a request; false when none applies.
  bool TakeRule(const std::string& method, const std::string& target, FaultRule* rule);
  // Tracks a socket so the destructor can shut it down; false (and nothing tracked) once the
  // proxy is stopping. Untrack before closing, so a reused fd number is never shut down.
  bool Track(int fd);
  void Untrack(int fd);
  bool stopping() const;
  // Sleeps up to `delay`; returns early (false) when the proxy stops.
  bool SleepUnlessStopped(std::chrono::milliseconds delay);
  // Connects to the upstream, tracked. Returns the fd or the error.
  Result<int> ConnectUpstream();

  const std::string upstream_host_;
  const int upstream_port_;
  const int listen_fd_;
  const int port_;
  std::atomic<int> requests_{0};
  std::atomic<int> faults_{0};

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;              // GUARDED_BY(mu_)
  std::vector<FaultRule> rules_;       // GUARDED_BY(mu_)
  std::set<int> open_fds_;             // GUARDED_BY(mu_)
  std::list<Connection> connections_;  // touched by the accept thread, then the destructor
  std::thread accept_thread_;
};

}  // namespace granary::s3::testing

#endif  // GRANARY_STORE_S3_TESTING_FAULT_PROXY_H_
