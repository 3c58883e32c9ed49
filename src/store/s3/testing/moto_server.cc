// MotoServer: fork/exec of `python -u -m moto.server` in its own process group, readiness by
// polling with a plain HTTP GET, and a process-group kill on destruction.
#include "store/s3/testing/moto_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#ifndef GRANARY_TEST_PYTHON
#error "GRANARY_TEST_PYTHON must name the Python interpreter that has moto[server] installed"
#endif

namespace granary::s3::testing {
namespace {

constexpr auto kStartTimeout = std::chrono::seconds(60);
constexpr auto kTermGrace = std::chrono::seconds(5);

// A port that was free a moment ago (the kernel's pick for 127.0.0.1:0). Another process may
// take it before moto binds it; Start() retries once for that.
Result<int> PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoToStatus(errno, "moto: socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Status s = ErrnoToStatus(errno, "moto: pick a free port");
    ::close(fd);
    return s;
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

// True when something on 127.0.0.1:port answers a GET with an HTTP status line.
bool AnswersHttp(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = false;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const char kRequest[] = "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    char reply[5] = {};
    ok = ::send(fd, kRequest, sizeof(kRequest) - 1, MSG_NOSIGNAL) > 0 &&
         ::recv(fd, reply, sizeof(reply), MSG_WAITALL) == 5 &&
         std::string(reply, 5) == "HTTP/";
  }
  ::close(fd);
  return ok;
}

// The last `max_bytes` of the log, for error messages.
std::string LogTail(const std::string& path, size_t max_bytes = 4000) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

// SIGTERM to the group, SIGKILL after the grace period; always reaps `pid`. The child is
// reaped last, so its pid (the group id) cannot be reused while the group is signalled.
void KillGroup(pid_t pid) {
  ::kill(-pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + kTermGrace;
  while (std::chrono::steady_clock::now() < deadline) {
    siginfo_t info{};
    if (::waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) {
      break;  // exited (still a zombie)
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(-pid, SIGKILL);  // a lingering server, or anything it left in its group
  while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

// "exit code N" or "signal N", from a waitpid status.
std::string ExitText(int status) {
  return WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                             : "exit code " + std::to_string(WEXITSTATUS(status));
}

Result<std::string> MakeLogDir() {
  const char* env = std::getenv("GRANARY_TEST_TMPDIR");
  const std::string base = env != nullptr && *env != '\0' ? env : "/tmp";
  std::error_code ec;
  std::filesystem::create_directories(base, ec);
  std::string templ = base + "/moto-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) return ErrnoToStatus(errno, "moto: mkdtemp " + templ);
  return templ;
}

}  // namespace

Result<std::unique_ptr<MotoServer>> MotoServer::Start() {
  const std::string python = GRANARY_TEST_PYTHON;
  if (::access(python.c_str(), X_OK) != 0) {
    return FailedPreconditionError(
        "moto: no Python interpreter at " + python +
        " (GRANARY_TEST_PYTHON); create the project venv and `pip install -r "
        "requirements-dev.txt` (make venv) to get moto[server]");
  }
  Result<std::unique_ptr<MotoServer>> server = StartOnce(python);
  if (server.ok()) return server;
  return StartOnce(python);  // the free port may have been taken in between: one more try
}

Result<std::unique_ptr<MotoServer>> MotoServer::StartOnce(const std::string& python) {
  GRANARY_ASSIGN_OR_RETURN(int port, PickFreePort());
  GRANARY_ASSIGN_OR_RETURN(std::string dir, MakeLogDir());
  const std::string log_path = dir + "/moto.log";
  const std::string port_text = std::to_string(port);
  // Everything the child needs is built before fork(): after it only async-signal-safe calls.
  std::vector<std::string> args = {python, "-u", "-m", "moto.server", "-H", "127.0.0.1",
                                   "-p", port_text};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoToStatus(errno, "moto: open " + log_path);
  const pid_t parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) {
    Status s = ErrnoToStatus(errno, "moto: fork");
    ::close(log_fd);
    return s;
  }
  if (pid == 0) {
    ::setpgid(0, 0);                       // own group: the destructor kills it whole
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);    // and a crashed test leaves no server behind
    if (::getppid() != parent) ::_exit(127);
    int null_fd = ::open("/dev/null", O_RDONLY);
    ::dup2(null_fd, STDIN_FILENO);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    ::close_range(3, ~0U, 0);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(log_fd);
  ::setpgid(pid, pid);  // also from the parent, so kill(-pid) works even before the child ran
  std::unique_ptr<MotoServer> server(new MotoServer(pid, port, dir, log_path));

  const auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  while (!AnswersHttp(port)) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      server->pid_ = -1;  // reaped already; nothing to kill
      return UnavailableError("moto: server exited (" + ExitText(status) +
                              ") before answering on port " + port_text + "; its log ends:\n" +
                              LogTail(log_path));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return UnavailableError("moto: no HTTP answer on port " + port_text +
                              " within 60 s; its log ends:\n" + LogTail(log_path));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return server;
}

MotoServer::~MotoServer() {
  if (pid_ > 0) KillGroup(pid_);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);  // best effort: a leftover log dir is harmless
}

std::string MotoServer::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(port_);
}

}  // namespace granary::s3::testing
