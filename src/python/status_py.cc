#include "status_py.h"

#include <algorithm>
#include <cerrno>
#include <string>
#include <string_view>

namespace granary::python {
namespace {

// granary.errors classes; references held for the life of the process (never released, so
// nothing runs at interpreter teardown).
struct ErrorClasses {
  PyObject* granary_error = nullptr;
  PyObject* data_loss = nullptr;
  PyObject* unavailable = nullptr;
  PyObject* resource_exhausted = nullptr;
};
ErrorClasses g_classes;

// How to build the exception: an OSError-style (errno, strerror, filename) or a plain message.
struct ExceptionSpec {
  PyObject* type = nullptr;
  bool os_error = false;
  int sys_errno = 0;  // os_error only; 0 leaves errno None
  bool code_in_message = false;
};

ExceptionSpec SpecFor(const Status& status, OutOfRangeAs out_of_range) {
  const int sys_errno = status.sys_errno();
  switch (status.code()) {
    case StatusCode::kNotFound:
      return {PyExc_FileNotFoundError, true, ENOENT};
    case StatusCode::kAlreadyExists:
      return {PyExc_FileExistsError, true, EEXIST};
    case StatusCode::kPermissionDenied:
      return {PyExc_PermissionError, true, sys_errno != 0 ? sys_errno : EACCES};
    case StatusCode::kInvalidArgument:
      return {PyExc_ValueError};
    case StatusCode::kOutOfRange:
      return {out_of_range == OutOfRangeAs::kIndexError ? PyExc_IndexError : PyExc_ValueError};
    case StatusCode::kUnimplemented:
      return {PyExc_NotImplementedError};
    case StatusCode::kResourceExhausted:
      return {g_classes.resource_exhausted, true, sys_errno};
    case StatusCode::kDataLoss:
      return {g_classes.data_loss, true, sys_errno};
    case StatusCode::kUnavailable:
      return {g_classes.unavailable, true, sys_errno};
    default:
      return {g_classes.granary_error, true, sys_errno, /*code_in_message=*/true};
  }
}

// `text` with the values of secret_access_key= and session_token= (store URL query parameters,
// docs/s3.md) replaced, so an exception naming the URL a user passed never shows a secret.
std::string RedactSecrets(std::string text) {
  static constexpr std::string_view kSecrets[] = {"secret_access_key=", "session_token="};
  static constexpr std::string_view kRedacted = "<redacted>";
  for (std::string_view param : kSecrets) {
    for (size_t at = text.find(param); at != std::string::npos; at = text.find(param, at)) {
      const size_t value = at + param.size();
      // A value ends where the URL's next parameter or the message's text begins.
      const size_t end = std::min(text.find_first_of("&#:,;'\" \t\n)", value), text.size());
      text.replace(value, end - value, kRedacted);
      at = value + kRedacted.size();
    }
  }
  return text;
}

}  // namespace

void InitErrors(py::module_& m) {
  py::module_ errors = py::module_::import("granary.errors");
  auto keep = [&](const char* name) { return py::object(errors.attr(name)).release().ptr(); };
  g_classes.granary_error = keep("GranaryError");
  g_classes.data_loss = keep("DataLossError");
  g_classes.unavailable = keep("UnavailableError");
  g_classes.resource_exhausted = keep("ResourceExhaustedError");
}

std::string KeyFromPython(py::handle key) {
  if (PyUnicode_Check(key.ptr())) {
    py::object encoded = py::reinterpret_steal<py::object>(
        PyUnicode_AsEncodedString(key.ptr(), "utf-8", "surrogateescape"));
    if (!encoded) throw py::error_already_set();
    return std::string(PyBytes_AS_STRING(encoded.ptr()),
                       static_cast<size_t>(PyBytes_GET_SIZE(encoded.ptr())));
  }
  if (PyBytes_Check(key.ptr())) {
    return std::string(PyBytes_AS_STRING(key.ptr()),
                       static_cast<size_t>(PyBytes_GET_SIZE(key.ptr())));
  }
  throw py::type_error(std::string("key must be str or bytes, not ") +
                       Py_TYPE(key.ptr())->tp_name);
}

py::str KeyToPython(std::string_view key) {
  PyObject* s = PyUnicode_DecodeUTF8(key.data(), static_cast<Py_ssize_t>(key.size()),
                                     "surrogateescape");
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

void ThrowStatus(const Status& status, std::string_view name, OutOfRangeAs out_of_range) {
  ExceptionSpec spec = SpecFor(status, out_of_range);
  if (spec.type == nullptr) spec.type = PyExc_OSError;  // InitErrors not run: still an OSError

  std::string message = status.message();
  if (!name.empty() && message.find(name) == std::string::npos) {
    message = std::string(name) + ": " + message;
  }
  message = RedactSecrets(std::move(message));
  const std::string safe_name = RedactSecrets(std::string(name));
  name = safe_name;
  if (spec.code_in_message) message = std::string(StatusCodeName(status.code())) + ": " + message;

  py::str py_message = KeyToPython(message);
  py::object args;
  if (spec.os_error && spec.sys_errno != 0 && !name.empty()) {
    args = py::make_tuple(spec.sys_errno, py_message, KeyToPython(name));
  } else if (spec.os_error && spec.sys_errno != 0) {
    args = py::make_tuple(spec.sys_errno, py_message);
  } else {
    args = py::make_tuple(py_message);
  }
  PyObject* exc = PyObject_CallObject(spec.type, args.ptr());
  if (exc == nullptr) throw py::error_already_set();
  py::object exception = py::reinterpret_steal<py::object>(exc);
  // errno-less OSErrors still name their key (granary.GranaryError prints just the message).
  if (spec.os_error && spec.sys_errno == 0 && !name.empty()) {
    exception.attr("filename") = KeyToPython(name);
  }
  exception.attr("status_code") = py::str(std::string(StatusCodeName(status.code())));
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc)), exc);
  throw py::error_already_set();
}

}  // namespace granary::python
