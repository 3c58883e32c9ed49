// granary._core.Model / TensorStream / save_safetensors: granary/model.h for python/granary/
// models.py. Tensors cross as writable memoryviews that own their segment's memory, so
// torch.frombuffer makes tensors without a copy and the memory lives as long as they do.
#include "model_py.h"

#include <pybind11/stl.h>

#include <mutex>

#include "buffer_py.h"
#include "granary/model.h"
#include "status_py.h"

namespace granary::python {
namespace {

// A stream and the model it reads (the stream borrows the model). `mu` serializes __next__ and
// close, which both run without the GIL: closing while another thread waits in __next__ waits
// for that call to return instead of freeing the stream under it.
struct PyStream {
  std::shared_ptr<Model> model;
  std::unique_ptr<TensorStream> stream;
  std::mutex mu;
  ~PyStream() {
    py::gil_scoped_release release;  // joins the reader threads
    stream.reset();
  }
};

py::dict StatsDict(const ReadStats& s) {
  py::dict d;
  d["bytes"] = s.bytes;
  d["cached_bytes"] = s.cached_bytes;
  d["direct_bytes"] = s.direct_bytes;
  d["staged_bytes"] = s.staged_bytes;
  d["store_bytes"] = s.store_bytes;
  d["mapped_bytes"] = s.mapped_bytes;
  d["requests"] = s.requests;
  d["segments"] = s.segments;
  d["peak_window_bytes"] = s.peak_window_bytes;
  return d;
}

py::list Files(const Model& m) {
  py::list out;
  for (const ModelFile& f : m.files()) {
    py::dict meta;
    for (const auto& [k, v] : f.metadata) meta[py::str(k)] = py::str(v);
    py::dict d;
    d["url"] = f.url;
    d["size_bytes"] = f.size_bytes;
    d["data_start"] = f.data_start;
    d["metadata"] = meta;
    out.append(d);
  }
  return out;
}

py::list Tensors(const Model& m) {
  py::list out;
  for (const ModelTensor& t : m.tensors()) {
    py::tuple shape(t.shape.size());
    for (size_t i = 0; i < t.shape.size(); ++i) shape[i] = py::int_(t.shape[i]);
    out.append(py::make_tuple(t.name, t.dtype, shape, t.bytes, t.file, t.offset));
  }
  return out;
}

}  // namespace

void RegisterModel(py::module_& m) {
  const ReadOptions defaults;
  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def(py::init([](std::vector<std::string> sources, size_t direct_io_min_bytes) {
             ModelOptions o;
             o.store.direct_io_min_bytes = direct_io_min_bytes;
             auto r = WithoutGil([&] { return Model::Open(sources, o); });
             return std::shared_ptr<Model>(
                 Unwrap(std::move(r), sources.size() == 1 ? sources[0] : ""));
           }),
           py::arg("sources"), py::arg("direct_io_min_bytes") = StoreOptions{}.direct_io_min_bytes)
      .def_property_readonly("files", &Files)
      .def_property_readonly("tensors", &Tensors)
      .def_property_readonly("index_metadata", &Model::index_metadata)
      .def_property_readonly("total_bytes", &Model::total_bytes)
      .def("find", &Model::Find, py::arg("name"))
      .def(
          "read",
          [](const std::shared_ptr<Model>& model, std::vector<size_t> sequence,
             size_t request_bytes, size_t io_threads, uint64_t window_bytes,
             uint64_t segment_bytes, bool direct_io, bool map_resident) {
            ReadOptions o;
            o.request_bytes = request_bytes;
            o.io_threads = io_threads;
            o.window_bytes = window_bytes;
            o.segment_bytes = segment_bytes;
            o.direct_io = direct_io;
            o.map_resident = map_resident;
            auto r = WithoutGil([&] { return model->Read(std::move(sequence), o); });
            auto s = std::make_unique<PyStream>();
            s->model = model;
            s->stream = Unwrap(std::move(r), "");
            return s;
          },
          py::arg("sequence"), py::arg("request_bytes") = defaults.request_bytes,
          py::arg("io_threads") = defaults.io_threads,
          py::arg("window_bytes") = defaults.window_bytes,
          py::arg("segment_bytes") = defaults.segment_bytes,
          py::arg("direct_io") = defaults.direct_io,
          py::arg("map_resident") = defaults.map_resident);

  py::class_<PyStream>(m, "TensorStream")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__",
           [](PyStream& s) -> py::tuple {
             auto r = WithoutGil([&]() -> Result<std::optional<LoadedTensor>> {
               std::lock_guard<std::mutex> lock(s.mu);
               if (!s.stream) return std::optional<LoadedTensor>();
               return s.stream->Next();
             });
             std::optional<LoadedTensor> t = Unwrap(std::move(r), "");
             if (!t) throw py::stop_iteration();
             py::object view = OwnedView(std::move(t->owner), t->data, /*writable=*/true);
             return py::make_tuple(t->index, view);
           })
      .def("stats",
           [](PyStream& s) {
             std::optional<ReadStats> stats = WithoutGil([&]() -> std::optional<ReadStats> {
               std::lock_guard<std::mutex> lock(s.mu);
               if (!s.stream) return std::nullopt;
               return s.stream->stats();
             });
             return stats ? StatsDict(*stats) : py::dict();
           })
      .def("close", [](PyStream& s) {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(s.mu);
        s.stream.reset();
      });

  m.def(
      "save_safetensors",
      [](const std::string& store_url, const std::string& key, py::list tensors,
         std::vector<std::pair<std::string, std::string>> metadata) {
        std::vector<TensorToSave> specs;
        std::vector<BufferView> views;
        specs.reserve(tensors.size());
        views.reserve(tensors.size());
        for (py::handle item : tensors) {
          auto tup = item.cast<py::tuple>();
          if (tup.size() != 4) throw py::value_error("tensors: (name, dtype, shape, buffer) tuples");
          TensorToSave t;
          t.name = tup[0].cast<std::string>();
          t.dtype = tup[1].cast<std::string>();
          t.shape = tup[2].cast<std::vector<uint64_t>>();
          views.push_back(BufferView::Readable(tup[3], "tensor " + t.name));
          t.data = views.back().const_span();
          specs.push_back(std::move(t));
        }
        Status s = WithoutGil([&]() -> Status {
          StoreOptions o;
          GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<ObjectStore> store, OpenStore(store_url, o));
          return SaveSafetensors(*store, key, specs, metadata);
        });
        ThrowIfError(s, key);
      },
      py::arg("store_url"), py::arg("key"), py::arg("tensors"), py::arg("metadata"));
}

}  // namespace granary::python
