// Bindings of granary/checkpoint.h. Tensors cross as (data pointer, byte count) pairs taken from
// torch by python/granary/checkpoint.py, which keeps the tensors alive across each call; every
// call that copies, waits or does I/O releases the GIL.
#include "checkpoint_py.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "granary/checkpoint.h"
#include "status_py.h"

namespace granary::python {
namespace {

namespace py = pybind11;
using Shape = std::vector<uint64_t>;
// (name, dtype, shape, global_shape or None, global_offset or None)
using SpecTuple = std::tuple<std::string, std::string, Shape, std::optional<Shape>, std::optional<Shape>>;
// (index or name, data pointer, byte count)
using CopyTuple = std::tuple<size_t, uintptr_t, size_t>;
using LoadTuple = std::tuple<std::string, uintptr_t, size_t>;

std::span<std::byte> Span(uintptr_t ptr, size_t n) {
  return {reinterpret_cast<std::byte*>(ptr), n};
}


py::object ExceptionOf(const Status& status, std::string_view name) {
  if (status.ok()) return py::none();
  try {
    ThrowStatus(status, name);
  } catch (py::error_already_set& e) {
    return e.value();
  }
}

py::dict StatsDict(const SaveStats& s) {
  py::dict d;
  d["step"] = s.step;
  d["tensors"] = s.tensors;
  d["tensors_reused"] = s.tensors_reused;
  d["bytes_total"] = s.bytes_total;
  d["bytes_written"] = s.bytes_written;
  d["stall_s"] = s.stall_s;
  d["persist_s"] = s.persist_s;
  d["skipped"] = s.skipped;
  return d;
}

class PySession {
 public:
  explicit PySession(std::unique_ptr<SaveSession> s) : session_(std::move(s)) {}

  SaveSession& get() {
    if (!session_) throw py::value_error("the save session is finished");
    return *session_;
  }

  void CopyInMany(const std::vector<CopyTuple>& copies) {
    SaveSession& s = get();
    Status status;
    {
      py::gil_scoped_release release;
      std::vector<SaveSession::CopySource> sources;
      sources.reserve(copies.size());
      for (const auto& [index, ptr, n] : copies) sources.push_back({index, Span(ptr, n)});
      status = s.CopyInMany(sources);
    }
    ThrowIfError(status, "");
  }

  py::object Reserve(size_t index, uint64_t offset) {
    SaveSession& s = get();
    Result<std::span<std::byte>> piece = WithoutGil([&] { return s.ReservePiece(index, offset); });
    ThrowIfError(piece.status(), "");
    if (piece->empty()) return py::none();
    return py::memoryview::from_memory(piece->data(), static_cast<ssize_t>(piece->size()), false);
  }

  std::shared_ptr<SaveHandle> Finish() {
    Result<std::shared_ptr<SaveHandle>> handle = get().Finish();
    ThrowIfError(handle.status(), "");
    session_.reset();
    return *handle;
  }

  void Abandon() {
    py::gil_scoped_release release;
    session_.reset();
  }

 private:
  std::unique_ptr<SaveSession> session_;
};

IfBusy ParseIfBusy(const std::string& s) {
  if (s == "wait") return IfBusy::kWait;
  if (s == "skip") return IfBusy::kSkip;
  throw py::value_error("if_busy must be \"wait\" or \"skip\", not \"" + s + "\"");
}

std::unique_ptr<Checkpointer> OpenCheckpointer(const std::string& url, uint32_t keep_last,
                                               uint64_t keep_every, uint64_t budget_bytes,
                                               bool incremental, const std::string& if_busy,
                                               uint32_t rank, uint32_t world_size,
                                               uint32_t commit_timeout_s, uint64_t data_file_bytes,
                                               bool collect_garbage, int persist_nice) {
  CheckpointerOptions o;
  o.keep_last = keep_last;
  o.keep_every = keep_every;
  o.budget_bytes = budget_bytes;
  o.incremental = incremental;
  o.if_busy = ParseIfBusy(if_busy);
  o.rank = rank;
  o.world_size = world_size;
  o.commit_timeout_s = commit_timeout_s;
  o.data_file_bytes = data_file_bytes;
  o.collect_garbage = collect_garbage;
  o.persist_nice = persist_nice;
  Result<std::unique_ptr<Checkpointer>> c = WithoutGil([&] { return Checkpointer::Open(url, o); });
  ThrowIfError(c.status(), url);
  return std::move(c).value();
}

}  // namespace

void RegisterCheckpoint(py::module_& m) {
  py::class_<SaveHandle, std::shared_ptr<SaveHandle>>(m, "SaveHandle")
      .def_property_readonly("step", &SaveHandle::step)
      .def("done", &SaveHandle::Done)
      .def("skipped", &SaveHandle::Skipped)
      .def("wait",
           [](SaveHandle& h, std::optional<double> timeout) {
             Status s;
             {
               py::gil_scoped_release release;
               s = h.Wait();
             }
             ThrowIfError(s, "");
           },
           py::arg("timeout") = py::none())
      .def("exception",
           [](SaveHandle& h) -> py::object {
             if (!h.Done()) return py::none();
             Status s;
             {
               py::gil_scoped_release release;
               s = h.Wait();
             }
             return ExceptionOf(s, "");
           })
      .def("stats", [](SaveHandle& h) { return StatsDict(h.stats()); });

  py::class_<PySession>(m, "SaveSession")
      .def_property_readonly("skipped", [](PySession& s) { return s.get().skipped(); })
      .def_property_readonly("max_piece_bytes", [](PySession& s) { return s.get().max_piece_bytes(); })
      .def("copy_in_many", &PySession::CopyInMany, py::arg("copies"))
      .def("reserve", &PySession::Reserve, py::arg("index"), py::arg("offset"))
      .def("commit_piece",
           [](PySession& s) { ThrowIfError(s.get().CommitPiece(), ""); })
      .def("finish", &PySession::Finish)
      .def("abandon", &PySession::Abandon);

  py::class_<Checkpointer>(m, "Checkpointer")
      .def(py::init(&OpenCheckpointer), py::arg("url"), py::arg("keep_last"), py::arg("keep_every"),
           py::arg("budget_bytes"), py::arg("incremental"), py::arg("if_busy"), py::arg("rank"),
           py::arg("world_size"), py::arg("commit_timeout_s"), py::arg("data_file_bytes"),
           py::arg("collect_garbage"), py::arg("persist_nice"))
      .def_property_readonly("url", &Checkpointer::url)
      .def("begin_save",
           [](Checkpointer& c, uint64_t step, const std::vector<SpecTuple>& specs,
              std::string metadata_json, std::string save_id) {
             std::vector<TensorSpec> tensors;
             tensors.reserve(specs.size());
             for (const auto& [name, dtype, shape, gshape, goffset] : specs) {
               tensors.push_back(TensorSpec{name, dtype, shape, gshape.value_or(Shape{}),
                                            goffset.value_or(Shape{})});
             }
             Result<std::unique_ptr<SaveSession>> s = WithoutGil([&] { return c.BeginSave(step, std::move(tensors), std::move(metadata_json), std::move(save_id)); });
             return PySession(Unwrap(std::move(s), c.url()));
           },
           py::arg("step"), py::arg("specs"), py::arg("metadata_json"), py::arg("save_id"))
      .def("wait_all",
           [](Checkpointer& c) {
             Status s;
             {
               py::gil_scoped_release release;
               s = c.WaitAll();
             }
             ThrowIfError(s, c.url());
           })
      .def("steps",
           [](Checkpointer& c) {
             Result<std::vector<uint64_t>> r = WithoutGil([&] { return c.Steps(); });
             return Unwrap(std::move(r), c.url());
           })
      .def("latest",
           [](Checkpointer& c) -> py::object {
             Result<uint64_t> r = WithoutGil([&] { return c.Latest(); });
             if (!r.ok() && r.status().code() == StatusCode::kNotFound) return py::none();
             return py::int_(Unwrap(std::move(r), c.url()));
           })
      .def("describe",
           [](Checkpointer& c, uint64_t step) {
             Result<StepInfo> r = WithoutGil([&] { return c.Describe(step); });
             StepInfo info = Unwrap(std::move(r), c.url());
             py::list tensors;
             for (const StoredTensor& t : info.tensors) {
               tensors.append(py::make_tuple(t.name, t.dtype, t.shape, t.global_shape, t.global_offset, t.length));
             }
             return py::make_tuple(info.world_size, info.user_metadata_json, tensors);
           },
           py::arg("step"))
      .def("load",
           [](Checkpointer& c, uint64_t step, const std::vector<LoadTuple>& targets) {
             std::vector<LoadTarget> t;
             t.reserve(targets.size());
             for (const auto& [name, ptr, n] : targets) t.push_back(LoadTarget{name, Span(ptr, n)});
             Status s;
             {
               py::gil_scoped_release release;
               s = c.Load(step, t);
             }
             ThrowIfError(s, c.url());
           },
           py::arg("step"), py::arg("targets"))
      .def("verify",
           [](Checkpointer& c, uint64_t step) {
             Status s;
             {
               py::gil_scoped_release release;
               s = c.Verify(step);
             }
             ThrowIfError(s, c.url());
           },
           py::arg("step"))
      .def("collect_garbage", [](Checkpointer& c) {
        Status s;
        {
          py::gil_scoped_release release;
          s = c.CollectGarbage();
        }
        ThrowIfError(s, c.url());
      });
}

}  // namespace granary::python
