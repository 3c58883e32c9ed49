#include "buffer_py.h"

#include <string>

namespace granary::python {

BufferView BufferView::Get(py::handle obj, std::string_view what, bool writable) {
  BufferView out;
  // Ask for strides (accepted by every exporter) and judge read-only and contiguity ourselves,
  // so the caller gets a ValueError that says what is wrong instead of a BufferError.
  if (PyObject_GetBuffer(obj.ptr(), &out.view_, PyBUF_STRIDES) != 0) {
    PyErr_Clear();
    throw py::type_error(std::string(what) +
                         " must support the buffer protocol (bytes, bytearray, memoryview, "
                         "numpy array, ...), not " + Py_TYPE(obj.ptr())->tp_name);
  }
  out.held_ = true;
  if (writable && out.view_.readonly) {
    throw py::value_error(std::string(what) + " is read-only (" + Py_TYPE(obj.ptr())->tp_name +
                          "); pass a writable buffer such as a bytearray or numpy array");
  }
  if (!PyBuffer_IsContiguous(&out.view_, 'C')) {
    throw py::value_error(std::string(what) + " is not C-contiguous (" +
                          Py_TYPE(obj.ptr())->tp_name + "); pass a contiguous buffer");
  }
  return out;
}

BufferView BufferView::Writable(py::handle obj, std::string_view what) {
  return Get(obj, what, /*writable=*/true);
}

BufferView BufferView::Readable(py::handle obj, std::string_view what) {
  return Get(obj, what, /*writable=*/false);
}

BufferView::BufferView(BufferView&& other) noexcept : view_(other.view_), held_(other.held_) {
  other.held_ = false;
  other.view_ = Py_buffer{};
}

BufferView::~BufferView() {
  if (held_) PyBuffer_Release(&view_);
}

}  // namespace granary::python
