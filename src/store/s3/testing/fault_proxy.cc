// FaultProxy: one thread accepts, one thread per client connection serves exactly one request
// (see fault_proxy.h for the protocol). Every socket a thread blocks on is tracked in
// open_fds_, so the destructor can shut them all down and join the threads.
#include "store/s3/testing/fault_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/sockios.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <string_view>
#include <utility>

namespace granary::s3::testing {
namespace {

constexpr size_t kMaxHeadBytes = 64 * 1024;

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Appends what one recv returns; false on EOF or error.
bool RecvSome(int fd, std::string* buf) {
  char chunk[64 * 1024];
  for (;;) {
    ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf->append(chunk, static_cast<size_t>(n));
    return true;
  }
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// An HTTP message head: the first line and the header lines, kept verbatim ("Name: value").
struct Head {
  std::string first_line;
  std::vector<std::string> lines;

  // The value of the first header called `name` (case-insensitive); *found says if it exists.
  std::string_view Get(std::string_view name, bool* found) const {
    for (const std::string& line : lines) {
      size_t colon = line.find(':');
      if (colon != std::string::npos && EqualsIgnoreCase(Trim(line.substr(0, colon)), name)) {
        *found = true;
        return Trim(std::string_view(line).substr(colon + 1));
      }
    }
    *found = false;
    return {};
  }
  // The head with hop-by-hop connection headers (and `also_drop`) replaced by
  // "Connection: close", ending in the blank line.
  std::string Serialize(std::string_view also_drop = {}) const {
    std::string out = first_line + "\r\n";
    for (const std::string& line : lines) {
      std::string_view name = Trim(std::string_view(line).substr(0, line.find(':')));
      if (EqualsIgnoreCase(name, "Connection") || EqualsIgnoreCase(name, "Keep-Alive") ||
          EqualsIgnoreCase(name, "Proxy-Connection") ||
          (!also_drop.empty() && EqualsIgnoreCase(name, also_drop))) {
        continue;
      }
      out += line + "\r\n";
    }
    return out + "Connection: close\r\n\r\n";
  }
};

// Splits `text` (which holds at least the head) into a Head; returns the offset just past the
// blank line, or npos when the head is incomplete.
size_t ParseHead(const std::string& text, Head* head) {
  size_t end = text.find("\r\n\r\n");
  if (end == std::string::npos) return std::string::npos;
  size_t pos = text.find("\r\n");
  head->first_line = text.substr(0, pos);
  head->lines.clear();
  while (pos < end) {
    size_t next = text.find("\r\n", pos + 2);
    head->lines.push_back(text.substr(pos + 2, next - pos - 2));
    pos = next;
  }
  return end + 4;
}

std::string ReasonPhrase(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 409: return "Conflict";
    case 412: return "Precondition Failed";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

// A complete S3-style error response. HEAD responses carry no body, as S3's do not.
std::string ErrorResponse(int status, const std::string& code, const std::string& message,
                          const std::string& method, const std::string& target) {
  std::string body =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + code + "</Code><Message>" +
      message + "</Message><Resource>" + target +
      "</Resource><RequestId>granary-fault-proxy</RequestId></Error>";
  if (method == "HEAD") body.clear();
  return "HTTP/1.1 " + std::to_string(status) + " " + ReasonPhrase(status) +
         "\r\nContent-Type: application/xml\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

// Closes after our FIN and the client's EOF (bounded), so unread bytes never turn the close
// into a reset.
void CloseGracefully(int fd) {
  ::shutdown(fd, SHUT_WR);
  char sink[4096];
  for (int i = 0; i < 20; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) > 0 && ::recv(fd, sink, sizeof(sink), 0) <= 0) break;
  }
}

// Waits (bounded) until the peer has acknowledged everything sent, then makes close() send a
// RST. Without the wait, SO_LINGER 0 would discard data still in the send queue.
void PrepareReset(int fd) {
  for (int i = 0; i < 2000; ++i) {
    int unacked = 0;
    if (::ioctl(fd, SIOCOUTQ, &unacked) != 0 || unacked == 0) break;
    ::usleep(1000);
  }
  linger lg{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

}  // namespace

Result<std::unique_ptr<FaultProxy>> FaultProxy::Start(std::string upstream_host,
                                                      int upstream_port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoToStatus(errno, "fault proxy: socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd, 128) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Status s = ErrnoToStatus(errno, "fault proxy: bind/listen on 127.0.0.1");
    ::close(fd);
    return s;
  }
  std::unique_ptr<FaultProxy> proxy(
      new FaultProxy(std::move(upstream_host), upstream_port, fd, ntohs(addr.sin_port)));
  proxy->accept_thread_ = std::thread([p = proxy.get()] { p->AcceptLoop(); });
  return proxy;
}

FaultProxy::FaultProxy(std::string upstream_host, int upstream_port, int listen_fd, int port)
    : upstream_host_(std::move(upstream_host)),
      upstream_port_(upstream_port),
      listen_fd_(listen_fd),
      port_(port) {}

FaultProxy::~FaultProxy() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
  }
  stop_cv_.notify_all();
  ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept() on Linux
  if (accept_thread_.joinable()) accept_thread_.join();
  for (Connection& c : connections_) c.thread.join();
  ::close(listen_fd_);
}

std::string FaultProxy::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(port_);
}

void FaultProxy::AddRule(FaultRule rule) {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.push_back(std::move(rule));
}

void FaultProxy::ClearRules() {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.clear();
}

bool FaultProxy::TakeRule(const std::string& method, const std::string& target,
                          FaultRule* rule) {
  std::lock_guard<std::mutex> lock(mu_);
  for (FaultRule& r : rules_) {
    if (r.times == 0) continue;
    if (!r.method.empty() && r.method != method) continue;
    if (target.find(r.target_contains) == std::string::npos) continue;
    if (r.times > 0) --r.times;
    *rule = r;
    return true;
  }
  return false;
}

bool FaultProxy::Track(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return false;
  open_fds_.insert(fd);
  return true;
}

void FaultProxy::Untrack(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  open_fds_.erase(fd);
}

bool FaultProxy::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

bool FaultProxy::SleepUnlessStopped(std::chrono::milliseconds delay) {
  std::unique_lock<std::mutex> lock(mu_);
  return !stop_cv_.wait_for(lock, delay, [this] { return stopping_; });
}

void FaultProxy::AcceptLoop() {
  for (;;) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down by the destructor (or a fatal error: nothing more to serve)
    }
    if (!Track(fd)) {
      ::close(fd);
      return;
    }
    SetNoDelay(fd);
    // Reap finished connections so a long test does not accumulate threads.
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (it->done.load()) {
        it->thread.join();
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    Connection& c = connections_.emplace_back();
    c.thread = std::thread([this, fd, &c] {
      ServeConnection(fd);
      Untrack(fd);
      ::close(fd);
      c.done.store(true);
    });
  }
}

Result<int> FaultProxy::ConnectUpstream() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(upstream_port_);
  int rc = ::getaddrinfo(upstream_host_.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return UnavailableError("fault proxy: resolve " + upstream_host_ + ": " + gai_strerror(rc));
  }
  Status last = UnavailableError("fault proxy: no address for " + upstream_host_);
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    if (!Track(fd)) {
      ::close(fd);
      break;
    }
    // The destructor may have shut the socket down before connect(): check again after.
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 && !stopping()) {
      SetNoDelay(fd);
      ::freeaddrinfo(found);
      return fd;
    }
    last = ErrnoToStatus(errno, "fault proxy: connect to " + upstream_host_ + ":" + port);
    Untrack(fd);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return last;
}

void FaultProxy::ServeConnection(int client_fd) {
  // The request head, then (after rule matching) its body.
  std::string buf;
  Head head;
  size_t body_start;
  while ((body_start = ParseHead(buf, &head)) == std::string::npos) {
    if (buf.size() > kMaxHeadBytes || !RecvSome(client_fd, &buf)) return;
  }
  const std::string line = head.first_line;
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos) return;
  const std::string method = line.substr(0, sp1);
  const std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  requests_.fetch_add(1);

  bool found = false;
  head.Get("Transfer-Encoding", &found);
  if (found) {  // clients never send chunked uploads; refuse rather than mis-frame
    SendAll(client_fd, ErrorResponse(501, "NotImplemented", "chunked upload", method, target));
    return CloseGracefully(client_fd);
  }
  size_t content_length = 0;
  std::string_view cl = head.Get("Content-Length", &found);
  if (found) content_length = std::strtoull(std::string(cl).c_str(), nullptr, 10);
  const bool expect_continue =
      EqualsIgnoreCase(head.Get("Expect", &found), "100-continue");

  FaultRule rule;
  const bool faulty = TakeRule(method, target, &rule);
  if (faulty) faults_.fetch_add(1);

  // A client waiting for 100 Continue gets an early kRespond or reset without sending its
  // body, as from S3; otherwise the whole body is read (unread bytes would turn close() into
  // a RST).
  const bool early = faulty && expect_continue &&
                     (rule.kind == FaultKind::kRespond ||
                      rule.kind == FaultKind::kResetBeforeResponse);
  if (!early && content_length > 0) {
    if (expect_continue && !SendAll(client_fd, "HTTP/1.1 100 Continue\r\n\r\n")) return;
    while (buf.size() - body_start < content_length) {
      if (!RecvSome(client_fd, &buf)) return;
    }
  }

  if (faulty && rule.kind == FaultKind::kRespond) {
    SendAll(client_fd, ErrorResponse(rule.status, rule.s3_code, "Injected by FaultProxy",
                                     method, target));
    return CloseGracefully(client_fd);
  }
  if (faulty && rule.kind == FaultKind::kResetBeforeResponse) return PrepareReset(client_fd);
  if (faulty && rule.kind == FaultKind::kDelay && !SleepUnlessStopped(rule.delay)) return;

  // Forward with "Connection: close" and read the response until the upstream closes.
  Result<int> upstream = ConnectUpstream();
  if (!upstream.ok()) {
    SendAll(client_fd, ErrorResponse(502, "BadGateway", upstream.status().ToString(), method,
                                     target));
    return CloseGracefully(client_fd);
  }
  const int up = *upstream;
  std::string response;
  const std::string request =
      head.Serialize("Expect") + buf.substr(body_start, content_length);
  if (SendAll(up, request)) {
    while (RecvSome(up, &response)) {
    }
  }
  Untrack(up);
  ::close(up);

  Head response_head;
  const size_t response_body = ParseHead(response, &response_head);
  if (response_body == std::string::npos) {
    SendAll(client_fd, ErrorResponse(502, "BadGateway", "no response from upstream", method,
                                     target));
    return CloseGracefully(client_fd);
  }
  std::string_view body = std::string_view(response).substr(response_body);
  const bool cut = faulty && (rule.kind == FaultKind::kResetMidBody ||
                              rule.kind == FaultKind::kTruncateBody);
  if (cut) body = body.substr(0, std::min(body.size(), rule.after_body_bytes));
  if (!SendAll(client_fd, response_head.Serialize()) || !SendAll(client_fd, body)) return;
  if (faulty && rule.kind == FaultKind::kResetMidBody) return PrepareReset(client_fd);
  CloseGracefully(client_fd);
}

}  // namespace granary::s3::testing
