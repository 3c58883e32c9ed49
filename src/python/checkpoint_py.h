// Bindings of granary/checkpoint.h: _core.Checkpointer, _core.SaveSession, _core.SaveHandle.
// python/granary/checkpoint.py builds the public granary.Checkpointer on top.
#ifndef GRANARY_PYTHON_CHECKPOINT_PY_H_
#define GRANARY_PYTHON_CHECKPOINT_PY_H_

#include <pybind11/pybind11.h>

namespace granary::python {

void RegisterCheckpoint(pybind11::module_& m);

}  // namespace granary::python

#endif  // GRANARY_PYTHON_CHECKPOINT_PY_H_
