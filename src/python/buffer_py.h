// Borrowing the memory of Python objects through the buffer protocol, so bytes move once:
// straight from storage into a bytearray, memoryview, numpy array or (via .numpy(), done in
// python/granary) a torch CPU tensor, and straight from any bytes-like object into storage.
#ifndef GRANARY_PYTHON_BUFFER_PY_H_
#define GRANARY_PYTHON_BUFFER_PY_H_

#include <pybind11/pybind11.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>

namespace granary::python {

namespace py = pybind11;

// A Py_buffer held while native code reads or writes its memory. While held, the exporter keeps
// the memory in place (a bytearray cannot be resized, ...), so the span stays valid with the GIL
// released. Create and destroy with the GIL held. Move-only; not thread-safe.
class BufferView {
 public:
  // A C-contiguous, writable buffer of `obj`. TypeError if `obj` has no buffer protocol,
  // ValueError if it is read-only or not C-contiguous. `what` names the argument in messages.
  static BufferView Writable(py::handle obj, std::string_view what);
  // A C-contiguous buffer of `obj` to read from (bytes, bytearray, memoryview, numpy, ...).
  static BufferView Readable(py::handle obj, std::string_view what);

  BufferView(BufferView&& other) noexcept;
  BufferView& operator=(BufferView&&) = delete;
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;
  ~BufferView();

  std::span<std::byte> span() const {
    return {static_cast<std::byte*>(view_.buf), static_cast<size_t>(view_.len)};
  }
  std::span<const std::byte> const_span() const {
    return {static_cast<const std::byte*>(view_.buf), static_cast<size_t>(view_.len)};
  }

 private:
  BufferView() = default;
  static BufferView Get(py::handle obj, std::string_view what, bool writable);
  Py_buffer view_{};
  bool held_ = false;
};

// A memoryview of `bytes` that keeps `owner` alive while any view of it (or of a tensor or array
// made from it) exists: how native memory (dataset batches, model tensors) reaches Python without
// a copy. Read-only unless `writable`. Needs the GIL.
py::object OwnedView(std::shared_ptr<const void> owner, std::span<const std::byte> bytes,
                     bool writable);

}  // namespace granary::python

#endif  // GRANARY_PYTHON_BUFFER_PY_H_
