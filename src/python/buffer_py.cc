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

// ---- Views that own their memory -------------------------------------------------------------

namespace {

// A minimal buffer exporter holding a shared owner of the bytes it exposes. Written against the
// C API because one is created per field or tensor: a pybind11 object costs several times more.
struct ViewOwner {
  PyObject_HEAD
  std::shared_ptr<const void> owner;
  const std::byte* data;
  Py_ssize_t size;
  bool readonly;
};

int ViewOwnerGetBuffer(PyObject* self, Py_buffer* view, int flags) {
  auto* v = reinterpret_cast<ViewOwner*>(self);
  return PyBuffer_FillInfo(view, self, const_cast<std::byte*>(v->data), v->size,
                           v->readonly ? 1 : 0, flags);
}

void ViewOwnerDealloc(PyObject* self) {
  auto* v = reinterpret_cast<ViewOwner*>(self);
  v->owner.~shared_ptr();
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);
}

PyTypeObject* ViewOwnerType() {
  static PyTypeObject* type = [] {
    static PyType_Slot slots[] = {
        {Py_bf_getbuffer, reinterpret_cast<void*>(&ViewOwnerGetBuffer)},
        {Py_tp_dealloc, reinterpret_cast<void*>(&ViewOwnerDealloc)},
        {0, nullptr},
    };
    static PyType_Spec spec = {"granary._core._OwnedBytes", sizeof(ViewOwner), 0,
                               Py_TPFLAGS_DEFAULT, slots};
    PyObject* t = PyType_FromSpec(&spec);
    if (t == nullptr) throw py::error_already_set();
    return reinterpret_cast<PyTypeObject*>(t);
  }();
  return type;
}

}  // namespace

py::object OwnedView(std::shared_ptr<const void> owner, std::span<const std::byte> bytes,
                     bool writable) {
  PyTypeObject* type = ViewOwnerType();
  PyObject* obj = type->tp_alloc(type, 0);
  if (obj == nullptr) throw py::error_already_set();
  auto* v = reinterpret_cast<ViewOwner*>(obj);
  new (&v->owner) std::shared_ptr<const void>(std::move(owner));
  v->data = bytes.data();
  v->size = static_cast<Py_ssize_t>(bytes.size());
  v->readonly = !writable;
  PyObject* mv = PyMemoryView_FromObject(obj);
  Py_DECREF(obj);
  if (mv == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(mv);
}

}  // namespace granary::python
