// Registers the model-loading classes of granary._core (see model_py.cc).
#ifndef GRANARY_PYTHON_MODEL_PY_H_
#define GRANARY_PYTHON_MODEL_PY_H_

#include <pybind11/pybind11.h>

namespace granary::python {

void RegisterModel(pybind11::module_& m);

}  // namespace granary::python

#endif  // GRANARY_PYTHON_MODEL_PY_H_
