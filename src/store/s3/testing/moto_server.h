// MotoServer: starts moto's standalone S3 server (`python -m moto.server`) on a free local port
// for one test binary, and stops it again. moto gives the S3 driver's tests a real HTTP server
// that speaks the S3 wire protocol without a Ceph cluster; it accepts unsigned requests too.
//
//   GRANARY_ASSERT_OK_AND_ASSIGN(auto moto, MotoServer::Start());
//   config.endpoint = moto->endpoint();   // "http://127.0.0.1:PORT"
//
// The interpreter is GRANARY_TEST_PYTHON (CMake sets it to the project's .venv/bin/python,
// where requirements-dev.txt installs moto[server]). Test-only; never link it into the library.
#ifndef GRANARY_STORE_S3_TESTING_MOTO_SERVER_H_
#define GRANARY_STORE_S3_TESTING_MOTO_SERVER_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "granary/status.h"

namespace granary::s3::testing {

// Not thread-safe to destroy concurrently with use; the accessors are const and cheap.
class MotoServer {
 public:
  // Spawns moto in its own process group with stdout/stderr going to a log file in a fresh
  // directory under $GRANARY_TEST_TMPDIR (or /tmp), and waits (up to 60 s) until it answers
  // HTTP. Returns FailedPrecondition if the interpreter is missing, or Unavailable (with the
  // tail of moto's log) if moto exits or never answers; a port lost to a race is retried once.
  // Call it from a thread that outlives the server (e.g. the test's main thread): the child is
  // sent SIGTERM when the thread that started it exits, so a crashed test leaves no server.
  static Result<std::unique_ptr<MotoServer>> Start();

  // SIGTERM to the process group, SIGKILL after 5 s if it lingers; reaps the child and removes
  // the log directory.
  ~MotoServer();
  MotoServer(const MotoServer&) = delete;
  MotoServer& operator=(const MotoServer&) = delete;

  int port() const { return port_; }
  // "http://127.0.0.1:PORT".
  std::string endpoint() const;
  // moto's combined stdout/stderr (useful in failure messages while the server lives).
  const std::string& log_path() const { return log_path_; }

 private:
  MotoServer(pid_t pid, int port, std::string dir, std::string log_path)
      : pid_(pid), port_(port), dir_(std::move(dir)), log_path_(std::move(log_path)) {}

  // One attempt at Start(): spawn on a fresh port and wait until it answers.
  static Result<std::unique_ptr<MotoServer>> StartOnce(const std::string& python);

  pid_t pid_;
  int port_;
  std::string dir_;
  std::string log_path_;
};

}  // namespace granary::s3::testing

#endif  // GRANARY_STORE_S3_TESTING_MOTO_SERVER_H_
