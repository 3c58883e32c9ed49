// Registers granary._core.Store, granary._core.Writer and granary._core.open.
#ifndef GRANARY_PYTHON_STORE_PY_H_
#define GRANARY_PYTHON_STORE_PY_H_

#include <pybind11/pybind11.h>

namespace granary::python {

void RegisterStore(pybind11::module_& m);

}  // namespace granary::python

#endif  // GRANARY_PYTHON_STORE_PY_H_
