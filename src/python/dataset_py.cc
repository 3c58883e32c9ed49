// granary._core.DatasetWriter, Dataset, Batch, Loader and epoch_order: the dataset workload for
// Python. python/granary/data.py wraps them with documentation and the torch adapters.
//
// Sample fields reach Python as read-only memoryviews straight into the batch's memory (no
// copy); each view keeps the batch's memory alive through a tiny exporter object, so a view
// outliving its Batch is safe. Every call that may touch storage releases the GIL.
#include "dataset_py.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "buffer_py.h"
#include "granary/dataset.h"
#include "status_py.h"

namespace granary::python {
namespace {

py::object FieldValue(const std::shared_ptr<Batch>& batch, std::span<const std::byte> bytes,
                      bool as_bytes) {
  if (as_bytes) {
    return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  return OwnedView(batch, bytes, /*writable=*/false);
}

// {"__key__": key, "__index__": index, field: view, ...}; None for a skipped corrupt sample.
py::object SampleDict(const std::shared_ptr<Batch>& batch, size_t i, bool as_bytes) {
  if (!batch->ok(i)) return py::none();
  py::dict d;
  d["__key__"] = KeyToPython(batch->key(i));
  d["__index__"] = py::int_(batch->index(i));
  for (size_t j = 0; j < batch->num_fields(i); ++j) {
    std::string_view name = batch->field_name(i, j);
    d[py::str(name.data(), name.size())] = FieldValue(batch, batch->field(i, j), as_bytes);
  }
  return d;
}

size_t CheckIndex(const Batch& batch, int64_t i) {
  int64_t n = static_cast<int64_t>(batch.size());
  if (i < 0) i += n;
  if (i < 0 || i >= n) throw py::index_error("batch index out of range");
  return static_cast<size_t>(i);
}

// ---- Field values from Python -------------------------------------------------------------

// Holds what Add needs alive: buffers of bytes-like values and encoded text of str/int values.
struct FieldArgs {
  std::vector<std::string> names;
  std::vector<std::string> text;
  std::vector<BufferView> views;
  std::vector<FieldData> fields;
};

void ConvertFields(py::dict values, FieldArgs* out) {
  const size_t n = values.size();
  out->names.reserve(n);
  out->text.reserve(n);
  out->views.reserve(n);
  out->fields.reserve(n);
  // Two passes: strings and views must stop moving before spans into them are taken.
  std::vector<std::pair<int, size_t>> where;  // (0 text | 1 view, slot)
  for (auto item : values) {
    if (!py::isinstance<py::str>(item.first)) throw py::type_error("field names must be str");
    out->names.push_back(item.first.cast<std::string>());
    py::handle v = item.second;
    if (py::isinstance<py::str>(v)) {
      out->text.push_back(v.cast<std::string>());
      where.emplace_back(0, out->text.size() - 1);
    } else if (py::isinstance<py::bool_>(v) || !py::isinstance<py::int_>(v)) {
      if (py::isinstance<py::bool_>(v)) {
        throw py::type_error("field '" + out->names.back() + "': bool is ambiguous; pass int or str");
      }
      out->views.push_back(BufferView::Readable(v, out->names.back()));
      where.emplace_back(1, out->views.size() - 1);
    } else {
      out->text.push_back(py::str(v).cast<std::string>());  // ints as decimal text, like WebDataset
      where.emplace_back(0, out->text.size() - 1);
    }
  }
  for (size_t k = 0; k < n; ++k) {
    std::span<const std::byte> data =
        where[k].first == 0
            ? std::as_bytes(std::span(out->text[where[k].second].data(),
                                      out->text[where[k].second].size()))
            : out->views[where[k].second].const_span();
    out->fields.emplace_back(out->names[k], data);
  }
}

// ---- Indices from Python ------------------------------------------------------------------

std::vector<uint64_t> IndicesFromPython(py::handle indices, uint64_t size) {
  std::vector<uint64_t> out;
  if (PyObject_CheckBuffer(indices.ptr()) && !py::isinstance<py::bytes>(indices)) {
    py::buffer_info info = py::reinterpret_borrow<py::buffer>(indices).request();
    if (info.ndim != 1 || info.itemsize != 8 ||
        (info.format != "q" && info.format != "Q" && info.format != "l" && info.format != "L")) {
      throw py::type_error("indices buffer must be a 1-D array of int64 or uint64");
    }
    out.resize(static_cast<size_t>(info.shape[0]));
    const char* base = static_cast<const char*>(info.ptr);
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;
      std::memcpy(&v, base + i * info.strides[0], 8);
      out[i] = static_cast<uint64_t>(v);
    }
    if (info.format == "q" || info.format == "l") {
      for (uint64_t& v : out) {
        if (static_cast<int64_t>(v) < 0) v += size;  // negative indices count from the end
      }
    }
    return out;
  }
  py::sequence seq = py::reinterpret_borrow<py::sequence>(indices);
  out.reserve(seq.size());
  for (py::handle item : seq) {
    int64_t v = item.cast<int64_t>();
    if (v < 0) v += static_cast<int64_t>(size);
    if (v < 0) throw py::index_error("dataset index out of range");
    out.push_back(static_cast<uint64_t>(v));
  }
  return out;
}

// Runs `fn` with the GIL released and returns its result.
Remainder RemainderFromString(const std::string& s) {
  if (s == "pad") return Remainder::kPad;
  if (s == "drop") return Remainder::kDrop;
  if (s == "uneven") return Remainder::kUneven;
  throw py::value_error("remainder must be 'pad', 'drop' or 'uneven', not '" + s + "'");
}

// Field bytes of the batch's readable samples: what pack_into needs.
uint64_t PackedBytes(const Batch& b) {
  uint64_t n = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!b.ok(i)) continue;
    for (size_t j = 0; j < b.num_fields(i); ++j) n += b.field(i, j).size();
  }
  return n;
}

py::dict StatsToPython(const DatasetStats& s) {
  py::dict d;
  d["samples_read"] = s.samples_read;
  d["bytes_read"] = s.bytes_read;
  d["device_bytes"] = s.device_bytes;
  d["page_cache_hits"] = s.page_cache_hits;
  d["corrupt_skipped"] = s.corrupt_skipped;
  return d;
}

py::dict LoaderStatsToPython(const LoaderStats& s) {
  py::dict d;
  d["batches"] = s.batches;
  d["samples"] = s.samples;
  d["bytes"] = s.bytes;
  d["cache_hits"] = s.cache_hits;
  d["cache_misses"] = s.cache_misses;
  uint64_t lookups = s.cache_hits + s.cache_misses;
  d["cache_hit_rate"] = lookups == 0 ? 0.0 : static_cast<double>(s.cache_hits) / lookups;
  d["cache_bytes"] = s.cache_bytes;
  d["wait_s"] = static_cast<double>(s.wait_ns) / 1e9;
  d["corrupt_skipped"] = s.corrupt_skipped;
  return d;
}

OrderOptions OrderFromPython(uint64_t seed, bool shuffle, uint32_t rank, uint32_t world_size,
                             const std::string& remainder, uint32_t locality) {
  OrderOptions o;
  o.seed = seed;
  o.shuffle = shuffle;
  o.rank = rank;
  o.world_size = world_size;
  o.remainder = RemainderFromString(remainder);
  o.locality_shards = locality;
  return o;
}

}  // namespace

void RegisterDataset(py::module_& m) {
  py::class_<DatasetWriter>(m, "DatasetWriter")
      .def(py::init([](const std::string& url, uint64_t shard_bytes, bool append,
                       unsigned shard_writers) {
             DatasetWriterOptions o;
             o.shard_bytes = shard_bytes;
             o.append = append;
             o.shard_writers = shard_writers;
             Result<std::unique_ptr<DatasetWriter>> w = WithoutGil([&] { return DatasetWriter::Create(url, o); });
             return Unwrap(std::move(w), url);
           }),
           py::arg("url"), py::arg("shard_bytes"), py::arg("append"), py::arg("shard_writers"))
      .def("add",
           [](DatasetWriter& w, py::handle key, py::dict fields) {
             std::string k = KeyFromPython(key);
             FieldArgs args;
             ConvertFields(fields, &args);
             Status s;
             {
               py::gil_scoped_release release;
               s = w.Add(k, args.fields);
             }
             ThrowIfError(s, k);
           })
      .def("finish",
           [](DatasetWriter& w) {
             Result<DatasetWriteStats> r = WithoutGil([&] { return w.Finish(); });
             DatasetWriteStats s = Unwrap(std::move(r), "");
             py::dict d;
             d["version"] = s.version;
             d["samples_added"] = s.samples_added;
             d["bytes_added"] = s.bytes_added;
             d["shards_added"] = s.shards_added;
             d["duplicate_keys"] = s.duplicate_keys;
             d["total_samples"] = s.total_samples;
             return d;
           })
      .def_property_readonly("samples_added", &DatasetWriter::samples_added)
      .def_property_readonly("bytes_added", &DatasetWriter::bytes_added);

  py::class_<Batch, std::shared_ptr<Batch>>(m, "Batch")
      .def("__len__", &Batch::size)
      .def(
          "sample",
          [](const std::shared_ptr<Batch>& b, int64_t i, bool as_bytes) {
            return SampleDict(b, CheckIndex(*b, i), as_bytes);
          },
          py::arg("i"), py::arg("as_bytes") = false)
      .def(
          "samples",
          [](const std::shared_ptr<Batch>& b, bool as_bytes) {
            py::list out(b->size());
            for (size_t i = 0; i < b->size(); ++i) out[i] = SampleDict(b, i, as_bytes);
            return out;
          },
          py::arg("as_bytes") = false)
      .def(
          "field",
          [](const std::shared_ptr<Batch>& b, std::string_view name, bool as_bytes) {
            py::list out(b->size());
            for (size_t i = 0; i < b->size(); ++i) {
              std::optional<std::span<const std::byte>> f =
                  b->ok(i) ? b->field(i, name) : std::nullopt;
              out[i] = f ? FieldValue(b, *f, as_bytes) : py::none();
            }
            return out;
          },
          py::arg("name"), py::arg("as_bytes") = false)
      .def("keys",
           [](const Batch& b) {
             py::list out(b.size());
             for (size_t i = 0; i < b.size(); ++i) {
               out[i] = b.ok(i) ? py::object(KeyToPython(b.key(i))) : py::none();
             }
             return out;
           })
      .def("indices",
           [](const Batch& b) {
             py::list out(b.size());
             for (size_t i = 0; i < b.size(); ++i) out[i] = py::int_(b.index(i));
             return out;
           })
      .def("packed_size", &PackedBytes)
      .def(
          "pack_into",
          [](const Batch& b, py::handle buffer) {
            // Copies every field into `buffer` back to back (for handing a batch to another
            // process in one shared-memory block) and returns the layout: per sample None
            // (skipped as corrupt) or (key, index, [(field, offset, length), ...]).
            BufferView view = BufferView::Writable(buffer, "buffer");
            std::span<std::byte> dest = view.span();
            if (PackedBytes(b) > dest.size()) throw py::value_error("buffer too small for the batch");
            {
              py::gil_scoped_release release;
              uint64_t at = 0;
              for (size_t i = 0; i < b.size(); ++i) {
                if (!b.ok(i)) continue;
                for (size_t j = 0; j < b.num_fields(i); ++j) {
                  std::span<const std::byte> f = b.field(i, j);
                  if (!f.empty()) std::memcpy(dest.data() + at, f.data(), f.size());
                  at += f.size();
                }
              }
            }
            py::list layout(b.size());
            uint64_t at = 0;
            for (size_t i = 0; i < b.size(); ++i) {
              if (!b.ok(i)) {
                layout[i] = py::none();
                continue;
              }
              py::list fields(b.num_fields(i));
              for (size_t j = 0; j < b.num_fields(i); ++j) {
                std::string_view name = b.field_name(i, j);
                size_t len = b.field(i, j).size();
                fields[j] = py::make_tuple(py::str(name.data(), name.size()), at, len);
                at += len;
              }
              layout[i] = py::make_tuple(KeyToPython(b.key(i)), b.index(i), fields);
            }
            return layout;
          },
          py::arg("buffer"))
      .def("ok", [](const Batch& b, int64_t i) { return b.ok(CheckIndex(b, i)); })
      .def_property_readonly("nbytes", &Batch::bytes)
      .def_property_readonly("corrupt_count", &Batch::corrupt_count);

  py::class_<Dataset, std::shared_ptr<Dataset>>(m, "Dataset")
      .def(py::init([](const std::string& url, uint64_t version, bool verify, bool skip_corrupt,
                       bool direct_io, unsigned read_threads) {
             DatasetOptions o;
             o.version = version;
             o.verify = verify;
             o.skip_corrupt = skip_corrupt;
             o.direct_io = direct_io;
             o.read_threads = read_threads;
             Result<std::unique_ptr<Dataset>> d = WithoutGil([&] { return Dataset::Open(url, o); });
             return std::shared_ptr<Dataset>(Unwrap(std::move(d), url));
           }),
           py::arg("url"), py::arg("version") = 0, py::arg("verify") = true,
           py::arg("skip_corrupt") = false, py::arg("direct_io") = true,
           py::arg("read_threads") = 2)
      .def("__len__", &Dataset::size)
      .def_property_readonly("version", &Dataset::version)
      .def_property_readonly("total_bytes", &Dataset::total_bytes)
      .def_property_readonly("index_bytes", &Dataset::index_bytes)
      .def_property_readonly("fields", &Dataset::field_names)
      .def_property_readonly("shards",
                             [](const Dataset& d) {
                               py::list out;
                               for (const ShardInfo& s : d.shards()) {
                                 out.append(py::make_tuple(KeyToPython(s.key), s.first_sample,
                                                           s.num_samples, s.size_bytes));
                               }
                               return out;
                             })
      .def("key",
           [](Dataset& d, uint64_t i) {
             Result<std::string> r = WithoutGil([&] { return d.Key(i); });
             return KeyToPython(Unwrap(std::move(r), "", OutOfRangeAs::kIndexError));
           })
      .def("index_of",
           [](Dataset& d, py::handle key) {
             std::string k = KeyFromPython(key);
             Result<uint64_t> r = WithoutGil([&] { return d.IndexOf(k); });
             if (!r.ok() && r.status().code() == StatusCode::kNotFound) {
               throw py::key_error(std::string(r.status().message()));
             }
             return Unwrap(std::move(r), k);
           })
      .def(
          "get_batch",
          [](Dataset& d, py::handle indices) {
            std::vector<uint64_t> idx = IndicesFromPython(indices, d.size());
            Result<std::shared_ptr<Batch>> r = WithoutGil([&] { return d.ReadBatch(idx); });
            return Unwrap(std::move(r), "", OutOfRangeAs::kIndexError);
          },
          py::arg("indices"))
      .def("verify",
           [](Dataset& d) {
             Status s;
             {
               py::gil_scoped_release release;
               s = d.Verify();
             }
             ThrowIfError(s, "");
           })
      .def("stats", [](const Dataset& d) { return StatsToPython(d.stats()); });

  py::class_<Loader>(m, "Loader")
      .def(py::init([](std::shared_ptr<Dataset> ds, uint32_t batch_size, uint64_t seed,
                       bool shuffle, uint32_t rank, uint32_t world_size,
                       const std::string& remainder, uint32_t locality, uint64_t epoch,
                       bool drop_last_batch, uint64_t prefetch_bytes, uint64_t cache_bytes,
                       unsigned io_threads, uint32_t share, uint32_t num_shares) {
             LoaderOptions o;
             o.batch_size = batch_size;
             o.order = OrderFromPython(seed, shuffle, rank, world_size, remainder, locality);
             o.epoch = epoch;
             o.drop_last_batch = drop_last_batch;
             o.prefetch_bytes = prefetch_bytes;
             o.cache_bytes = cache_bytes;
             o.io_threads = io_threads;
             o.share = share;
             o.num_shares = num_shares;
             Result<std::unique_ptr<Loader>> l = WithoutGil([&] { return Loader::Create(std::move(ds), o); });
             return Unwrap(std::move(l), "");
           }),
           py::arg("dataset"), py::arg("batch_size"), py::arg("seed"), py::arg("shuffle"),
           py::arg("rank"), py::arg("world_size"), py::arg("remainder"), py::arg("locality"),
           py::arg("epoch"), py::arg("drop_last_batch"), py::arg("prefetch_bytes"),
           py::arg("cache_bytes"), py::arg("io_threads"), py::arg("share"),
           py::arg("num_shares"))
      .def("next",
           [](Loader& l) -> py::object {
             Result<std::shared_ptr<Batch>> r = WithoutGil([&] { return l.Next(); });
             std::shared_ptr<Batch> b = Unwrap(std::move(r), "");
             if (!b) return py::none();
             return py::cast(std::move(b));
           })
      .def(
          "start_epoch",
          [](Loader& l, uint64_t epoch, uint64_t position) {
            Status s;
            {
              py::gil_scoped_release release;
              s = l.StartEpoch(epoch, position);
            }
            ThrowIfError(s, "");
          },
          py::arg("epoch"), py::arg("position") = 0)
      .def("state",
           [](const Loader& l) {
             LoaderState s = l.state();
             py::dict d;
             d["seed"] = s.seed;
             d["epoch"] = s.epoch;
             d["position"] = s.position;
             d["num_samples"] = s.num_samples;
             d["world_size"] = s.world_size;
             d["rank"] = s.rank;
             return d;
           })
      .def("restore",
           [](Loader& l, py::dict d) {
             LoaderState s;
             s.seed = d["seed"].cast<uint64_t>();
             s.epoch = d["epoch"].cast<uint64_t>();
             s.position = d["position"].cast<uint64_t>();
             s.num_samples = d["num_samples"].cast<uint64_t>();
             s.world_size = d["world_size"].cast<uint32_t>();
             s.rank = d["rank"].cast<uint32_t>();
             Status st;
             {
               py::gil_scoped_release release;
               st = l.Restore(s);
             }
             ThrowIfError(st, "");
           })
      .def_property_readonly("num_batches", &Loader::num_batches)
      .def("stats", [](const Loader& l) { return LoaderStatsToPython(l.stats()); });

  m.def(
      "epoch_size",
      [](uint64_t num_samples, uint32_t rank, uint32_t world_size, const std::string& remainder) {
        OrderOptions o = OrderFromPython(0, false, rank, world_size, remainder, 0);
        return Unwrap(EpochOrder::Create(num_samples, 0, o), "").size();
      },
      py::arg("num_samples"), py::arg("rank"), py::arg("world_size"), py::arg("remainder"),
      "Samples one rank reads per epoch under the remainder rule.");
  m.def(
      "epoch_order",
      [](uint64_t num_samples, uint64_t epoch, uint64_t seed, bool shuffle, uint32_t rank,
         uint32_t world_size, const std::string& remainder, uint32_t locality,
         std::vector<uint64_t> shard_first_samples, uint64_t start, int64_t count) {
        OrderOptions o = OrderFromPython(seed, shuffle, rank, world_size, remainder, locality);
        EpochOrder order =
            Unwrap(EpochOrder::Create(num_samples, epoch, o, shard_first_samples), "");
        uint64_t end = order.size();
        if (count >= 0) end = std::min<uint64_t>(end, start + static_cast<uint64_t>(count));
        py::list out;
        for (uint64_t p = start; p < end; ++p) out.append(order.At(p));
        return out;
      },
      py::arg("num_samples"), py::arg("epoch"), py::arg("seed"), py::arg("shuffle") = true,
      py::arg("rank") = 0, py::arg("world_size") = 1, py::arg("remainder") = "pad",
      py::arg("locality") = 0, py::arg("shard_first_samples") = std::vector<uint64_t>{},
      py::arg("start") = 0, py::arg("count") = -1,
      "The dataset indices of one rank's epoch order, positions [start, start + count).");
}

}  // namespace granary::python
