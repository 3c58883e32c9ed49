// granary._core: the private native extension under the `granary` Python package. Python code
// imports `granary`, never this module directly; python/granary/_core.pyi describes it.
#include <pybind11/pybind11.h>

#include "buffer_py.h"
#include "checkpoint_py.h"
#include "core/checksum.h"
#include "dataset_py.h"
#include "model_py.h"
#include "status_py.h"
#include "store_py.h"

#ifndef GRANARY_VERSION
#error "GRANARY_VERSION must be defined by the build (src/python/CMakeLists.txt)"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "granary native extension (private; use the granary package)";
  m.attr("__version__") = GRANARY_VERSION;
  granary::python::InitErrors(m);
  granary::python::RegisterStore(m);
  granary::python::RegisterCheckpoint(m);
  granary::python::RegisterDataset(m);
  granary::python::RegisterModel(m);
  m.def(
      "crc32c",
      [](pybind11::handle data, uint32_t crc) {
        granary::python::BufferView view = granary::python::BufferView::Readable(data, "data");
        std::span<const std::byte> bytes = view.const_span();
        pybind11::gil_scoped_release release;
        return granary::Crc32c(bytes.data(), bytes.size(), crc);
      },
      pybind11::arg("data"), pybind11::arg("crc") = 0,
      "CRC-32C (Castagnoli) of a bytes-like object; pass a previous result as crc to extend.");
}
