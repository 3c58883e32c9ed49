// The one place that turns a granary Status into a Python exception.
//
//   NotFound            FileNotFoundError (errno ENOENT, filename = key or path)
//   AlreadyExists       FileExistsError (errno EEXIST)
//   PermissionDenied    PermissionError
//   InvalidArgument     ValueError
//   OutOfRange          ValueError, or IndexError where the caller indexes (OutOfRangeAs)
//   Unimplemented       NotImplementedError
//   ResourceExhausted   granary.ResourceExhaustedError (an OSError; errno ENOSPC/EDQUOT/... when
//                       the OS reported one)
//   DataLoss            granary.DataLossError (an OSError)
//   Unavailable         granary.UnavailableError (an OSError)
//   anything else       granary.GranaryError (an OSError), message "Code: ..."
// Every exception carries the Status code's name as `status_code`, and its message names the key
// or path (prepended when the Status message does not already contain it).
//
// The granary.* classes live in python/granary/errors.py; InitErrors imports them once.
#ifndef GRANARY_PYTHON_STATUS_PY_H_
#define GRANARY_PYTHON_STATUS_PY_H_

#include <pybind11/pybind11.h>

#include <string>
#include <string_view>

#include "granary/status.h"

namespace granary::python {

namespace py = pybind11;

// Imports granary.errors and keeps its classes for ThrowStatus. Call once at module init.
void InitErrors(py::module_& m);

enum class OutOfRangeAs { kValueError, kIndexError };

// Raises the Python exception for `status` (which must not be OK) by throwing
// py::error_already_set. `name` is the key or path the operation was about ("" if none). Needs
// the GIL.
[[noreturn]] void ThrowStatus(const Status& status, std::string_view name,
                              OutOfRangeAs out_of_range = OutOfRangeAs::kValueError);

// ThrowStatus unless `status` is OK.
inline void ThrowIfError(const Status& status, std::string_view name) {
  if (!status.ok()) ThrowStatus(status, name);
}

// Runs `fn` with the GIL released and returns its result (Result<T> has no default constructor,
// so a scoped release around an assignment does not work).
template <typename F>
auto WithoutGil(F&& fn) {
  py::gil_scoped_release release;
  return fn();
}

// The value of `r`, or the Python exception for its error (see ThrowStatus).
template <typename T>
T Unwrap(Result<T> r, std::string_view name,
         OutOfRangeAs out_of_range = OutOfRangeAs::kValueError) {
  if (!r.ok()) ThrowStatus(r.status(), name, out_of_range);
  return std::move(r).value();
}

// Keys and paths cross the boundary as UTF-8; bytes that are not valid UTF-8 survive a round
// trip through str via "surrogateescape" (as os.fsdecode does for file names).
// str (or bytes, taken as is) -> the key's bytes. TypeError for anything else.
std::string KeyFromPython(py::handle key);
// The key's bytes -> str.
py::str KeyToPython(std::string_view key);

}  // namespace granary::python

#endif  // GRANARY_PYTHON_STATUS_PY_H_
