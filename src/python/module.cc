// granary._core: the private native extension under the `granary` Python package. Python code
// imports `granary`, never this module directly; python/granary/_core.pyi describes it.
#include <pybind11/pybind11.h>

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
}
