// Registers the dataset classes of granary._core (see dataset_py.cc).
#ifndef GRANARY_PYTHON_DATASET_PY_H_
#define GRANARY_PYTHON_DATASET_PY_H_

#include <pybind11/pybind11.h>

namespace granary::python {

void RegisterDataset(pybind11::module_& m);

}  // namespace granary::python

#endif  // GRANARY_PYTHON_DATASET_PY_H_
