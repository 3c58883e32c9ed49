// granary/status.h: the error vocabulary of every granary API.
//
// Every fallible function returns a Status or a Result<T>; the core never throws. Codes follow
// abseil's status.h meanings:
//   kNotFound            the key, file or tensor does not exist
//   kAlreadyExists       a create-only operation found the target present
//   kInvalidArgument     the caller passed something malformed (bad key, bad URL, bad option)
//   kOutOfRange          an index or byte range past the end
//   kDataLoss            stored bytes fail their checksum or are truncated/corrupt
//   kResourceExhausted   a budget or the disk is full (ENOSPC, EDQUOT)
//   kUnavailable         transient; retrying may succeed (an S3 503, a timeout)
//   kFailedPrecondition  the system is not in a state where the call can work
//   kPermissionDenied    the OS or server refused access
//   kUnimplemented       the feature is not built (for example s3:// before the S3 driver)
//   kCancelled           the caller aborted the operation
//   kInternal            an invariant broke or the OS reported an unexpected error
// Messages name the file, key or tensor involved; context is prepended on the way up with
// Status::WithContext ("shard 12 of datasets/imagenet: ...").
//
// Ignoring an error is written out: `s.IgnoreError();  // why`.
#ifndef GRANARY_STATUS_H_
#define GRANARY_STATUS_H_

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace granary {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
};

// "NotFound", "DataLoss", ...
std::string_view StatusCodeName(StatusCode code);

// The outcome of an operation: OK, or a code, a message and (when the OS reported it) an errno.
// Copyable value type; not synchronized (like any value).
class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message, int sys_errno = 0);

  static Status OK() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // The errno that caused this error, or 0.
  int sys_errno() const { return sys_errno_; }

  // "NotFound: key a/b: No such file or directory", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "<context>: <message>"; OK stays OK.
  Status WithContext(std::string_view context) const;

  // Marks an error as deliberately ignored; greppable.
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  int sys_errno_ = 0;
  std::string message_;
};

// Constructors for each code.
Status CancelledError(std::string message);
Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status AlreadyExistsError(std::string message);
Status PermissionDeniedError(std::string message);
Status ResourceExhaustedError(std::string message);
Status FailedPreconditionError(std::string message);
Status OutOfRangeError(std::string message);
Status UnimplementedError(std::string message);
Status InternalError(std::string message);
Status UnavailableError(std::string message);
Status DataLossError(std::string message);

// Maps an errno to a Status: ENOENT -> NotFound, EEXIST -> AlreadyExists, ENOSPC/EDQUOT ->
// ResourceExhausted, EACCES/EPERM -> PermissionDenied, EINVAL/ENAMETOOLONG -> InvalidArgument,
// EAGAIN/EINTR/ETIMEDOUT -> Unavailable, everything else (EIO, ...) -> Internal. The message is
// "<what>: <strerror>" and the errno is kept.
Status ErrnoToStatus(int sys_errno, std::string_view what);

// A value of type T, or the error that prevented it. [[nodiscard]]; accessing value() of an
// error aborts (a programming error), so check ok() first or use GRANARY_ASSIGN_OR_RETURN.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "Result built from OK status");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const& { return status_; }
  Status status() && { return std::move(status_); }

  const T& value() const& { CheckOk(); return *value_; }
  T& value() & { CheckOk(); return *value_; }
  T&& value() && { CheckOk(); return std::move(*value_); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

  // The value, or `fallback` on error.
  T value_or(T fallback) const& { return ok() ? *value_ : std::move(fallback); }

 private:
  void CheckOk() const {
    if (!status_.ok()) std::abort();
  }
  Status status_;
  std::optional<T> value_;
};

}  // namespace granary

#define GRANARY_STATUS_CONCAT_INNER_(a, b) a##b
#define GRANARY_STATUS_CONCAT_(a, b) GRANARY_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is an error.
#define GRANARY_RETURN_IF_ERROR(expr)                        \
  do {                                                       \
    ::granary::Status granary_status_ = (expr);              \
    if (!granary_status_.ok()) return granary_status_;       \
  } while (0)

// `lhs = value of expr` (a Result<T>), or returns its error from the enclosing function.
// lhs may declare a variable: GRANARY_ASSIGN_OR_RETURN(auto file, OpenFile(path));
#define GRANARY_ASSIGN_OR_RETURN(lhs, expr) \
  GRANARY_ASSIGN_OR_RETURN_IMPL_(GRANARY_STATUS_CONCAT_(granary_result_, __LINE__), lhs, expr)
#define GRANARY_ASSIGN_OR_RETURN_IMPL_(result, lhs, expr) \
  auto result = (expr);                                   \
  if (!result.ok()) return std::move(result).status();    \
  lhs = std::move(result).value()

#endif  // GRANARY_STATUS_H_
