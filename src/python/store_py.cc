// granary._core.Store and granary._core.Writer: ObjectStore and ObjectWriter for Python.
//
// Every call that may touch storage runs with the GIL released; Python objects (keys, buffers)
// are converted before and results built after. The pure-Python wrappers in
// python/granary/store.py add documentation, argument checks and torch support.
#include "store_py.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "buffer_py.h"
#include "granary/cache.h"
#include "granary/store.h"
#include "status_py.h"

namespace granary::python {
namespace {

// get() with an explicit length up to this allocates the result directly; larger lengths (and
// length=None) Stat first so a huge `length` never allocates more than the object holds.
constexpr uint64_t kGetDirectAllocBytes = 64u << 20;

// Destroys what `p` owns (which may wait for background I/O), with the GIL released when we
// hold it. `p` is emptied first, under the GIL, so other threads never see it half-reset.
template <typename T>
void ResetWithoutGil(T& p) {
  T owned = std::move(p);
  if (!owned) return;
  if (Py_IsInitialized() && PyGILState_Check()) {
    py::gil_scoped_release release;
    owned.reset();
  } else {
    owned.reset();
  }
}

py::tuple InfoToPython(const ObjectInfo& info) {
  return py::make_tuple(KeyToPython(info.key), info.size_bytes, info.mtime_ns);
}

// Owns an ObjectStore for Python. The store is shared with Writers it created, so closing the
// store (or dropping it) never pulls it from under a writer or a call in progress.
// Thread-safe: Python threads may call any method concurrently (ObjectStore is thread-safe and
// each call copies the shared_ptr while it holds the GIL).
class PyStore {
 public:
  explicit PyStore(std::unique_ptr<ObjectStore> store)
      : store_(std::move(store)), url_(store_->url()) {}
  ~PyStore() { ResetWithoutGil(store_); }

  const std::string& url() const { return url_; }
  bool closed() const { return store_ == nullptr; }
  void Close() { ResetWithoutGil(store_); }

  // The store for one call; ValueError once closed. Needs the GIL.
  std::shared_ptr<ObjectStore> Use() const {
    if (!store_) throw py::value_error("store " + url_ + " is closed");
    return store_;
  }

 private:
  std::shared_ptr<ObjectStore> store_;
  std::string url_;
};

// A streaming upload. Thread-safe: calls from several Python threads are serialized by mu_
// (taken with the GIL released, so a blocked Append never stalls other Python threads).
class PyWriter {
 public:
  PyWriter(std::shared_ptr<ObjectStore> store, std::unique_ptr<ObjectWriter> writer,
           std::string key)
      : store_(std::move(store)), writer_(std::move(writer)), key_(std::move(key)) {}
  ~PyWriter() {
    ResetWithoutGil(writer_);  // an uncommitted writer aborts in its destructor
    ResetWithoutGil(store_);
  }

  const std::string& key() const { return key_; }
  // "open", "committed" or "aborted".
  std::string state() const {
    py::gil_scoped_release release;  // mu_ may be held through a long Append
    std::lock_guard<std::mutex> lock(mu_);
    return state_ == State::kOpen ? "open" : state_ == State::kCommitted ? "committed" : "aborted";
  }
  uint64_t bytes_written() const {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    return writer_ ? writer_->bytes_appended() : 0;
  }

  size_t Write(py::handle data) {
    BufferView view = BufferView::Readable(data, "data");
    Status status;
    State state;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      state = state_;
      if (state == State::kOpen) status = writer_->Append(view.const_span());
    }
    if (state != State::kOpen) ThrowNotOpen("write to", state);
    ThrowIfError(status, key_);
    return view.span().size();
  }

  // Publishes the object; calling it again after success does nothing.
  void Commit() {
    Status status;
    State state;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      if (state_ == State::kOpen) {
        status = writer_->Commit();
        if (status.ok()) state_ = State::kCommitted;
      }
      state = state_;
    }
    if (state == State::kAborted) ThrowNotOpen("commit", state);
    ThrowIfError(status, key_);
  }

  // Discards the upload; does nothing once committed or aborted.
  void Abort() {
    Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      if (state_ != State::kOpen) return;
      state_ = State::kAborted;
      status = writer_->Abort();
    }
    ThrowIfError(status, key_);
  }

 private:
  enum class State { kOpen, kCommitted, kAborted };

  // Like writing to a closed file: ValueError.
  [[noreturn]] void ThrowNotOpen(std::string_view what, State state) const {
    throw py::value_error("cannot " + std::string(what) + " the writer of key " + key_ +
                          ": it is " + (state == State::kCommitted ? "committed" : "aborted"));
  }

  std::shared_ptr<ObjectStore> store_;  // keeps the store alive while the writer exists
  mutable std::mutex mu_;
  std::unique_ptr<ObjectWriter> writer_;  // GUARDED_BY(mu_)
  State state_ = State::kOpen;            // GUARDED_BY(mu_)
  std::string key_;
};

std::shared_ptr<PyStore> Open(const std::string& url, std::optional<uint64_t> direct_io_min_bytes,
                              bool create_if_missing, std::optional<std::string> cache_dir,
                              std::optional<uint64_t> cache_bytes,
                              std::optional<uint64_t> ram_cache_bytes) {
  StoreOptions options;
  if (direct_io_min_bytes) options.direct_io_min_bytes = *direct_io_min_bytes;
  options.create_if_missing = create_if_missing;
  if (cache_dir) options.cache.dir = *cache_dir;
  if (cache_bytes) options.cache.disk_bytes = *cache_bytes;
  if (ram_cache_bytes) options.cache.ram_bytes = *ram_cache_bytes;
  Result<std::unique_ptr<ObjectStore>> store = InvalidArgumentError("unset");
  {
    py::gil_scoped_release release;
    store = OpenStore(url, options);
  }
  if (!store.ok()) ThrowStatus(store.status(), url);
  return std::make_shared<PyStore>(std::move(store).value());
}

py::tuple Stat(const PyStore& self, py::handle py_key) {
  const std::string key = KeyFromPython(py_key);
  std::shared_ptr<ObjectStore> store = self.Use();
  Result<ObjectInfo> info = NotFoundError("unset");
  {
    py::gil_scoped_release release;
    info = store->Stat(key);
  }
  if (!info.ok()) ThrowStatus(info.status(), key);
  return InfoToPython(*info);
}

bool Exists(const PyStore& self, py::handle py_key) {
  const std::string key = KeyFromPython(py_key);
  std::shared_ptr<ObjectStore> store = self.Use();
  Result<ObjectInfo> info = NotFoundError("unset");
  {
    py::gil_scoped_release release;
    info = store->Stat(key);
  }
  if (info.ok()) return true;
  if (info.status().code() == StatusCode::kNotFound) return false;
  ThrowStatus(info.status(), key);
}

py::bytes Get(const PyStore& self, py::handle py_key, uint64_t offset,
              std::optional<uint64_t> length) {
  const std::string key = KeyFromPython(py_key);
  std::shared_ptr<ObjectStore> store = self.Use();
  uint64_t size = 0;
  if (length && *length <= kGetDirectAllocBytes) {
    size = *length;
  } else {
    Result<ObjectInfo> info = NotFoundError("unset");
    {
      py::gil_scoped_release release;
      info = store->Stat(key);
    }
    if (!info.ok()) ThrowStatus(info.status(), key);
    size = info->size_bytes > offset ? info->size_bytes - offset : 0;
    if (length) size = std::min(size, *length);
  }
  if (size > static_cast<uint64_t>(PY_SSIZE_T_MAX)) throw py::value_error("length too large");

  // Read straight into the bytes object's storage; nobody else can see it yet.
  PyObject* raw = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
  if (raw == nullptr) throw py::error_already_set();
  py::object bytes = py::reinterpret_steal<py::object>(raw);
  std::span<std::byte> dest(reinterpret_cast<std::byte*>(PyBytes_AS_STRING(raw)),
                            static_cast<size_t>(size));
  Result<size_t> n = size_t{0};
  {
    py::gil_scoped_release release;
    n = store->Get(key, offset, dest);
  }
  if (!n.ok()) ThrowStatus(n.status(), key);
  if (*n < size) {
    // The object ended first (or shrank since Stat): shrink in place, still one copy.
    bytes.release();
    if (_PyBytes_Resize(&raw, static_cast<Py_ssize_t>(*n)) != 0) throw py::error_already_set();
    bytes = py::reinterpret_steal<py::object>(raw);
  }
  return py::reinterpret_steal<py::bytes>(bytes.release());
}

size_t GetInto(const PyStore& self, py::handle py_key, py::handle buffer, uint64_t offset) {
  const std::string key = KeyFromPython(py_key);
  std::shared_ptr<ObjectStore> store = self.Use();
  BufferView view = BufferView::Writable(buffer, "buffer");
  Result<size_t> n = size_t{0};
  {
    py::gil_scoped_release release;
    n = store->Get(key, offset, view.span());
  }
  if (!n.ok()) ThrowStatus(n.status(), key);
  return *n;
}

// ops: a sequence of (key, offset, buffer). One native GetMany call for the whole batch; the
// first failed op raises (naming its key), otherwise returns bytes read per op.
py::list GetMany(const PyStore& self, py::sequence py_ops) {
  std::shared_ptr<ObjectStore> store = self.Use();
  const size_t count = py::len(py_ops);
  std::vector<ReadOp> ops(count);
  std::vector<BufferView> views;
  views.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    py::object item = py_ops[i];
    if (!py::isinstance<py::sequence>(item) || py::len(item) != 3) {
      throw py::type_error("get_many: op " + std::to_string(i) +
                           " must be a (key, offset, buffer) tuple");
    }
    py::sequence op = item.cast<py::sequence>();
    ops[i].key = KeyFromPython(op[0]);
    ops[i].offset = op[1].cast<uint64_t>();
    views.push_back(BufferView::Writable(op[2], "buffer"));
    ops[i].dest = views.back().span();
  }
  Status batch;
  {
    py::gil_scoped_release release;
    batch = store->GetMany(ops);
  }
  ThrowIfError(batch, "");
  py::list out(count);
  for (size_t i = 0; i < count; ++i) {
    if (!ops[i].status.ok()) ThrowStatus(ops[i].status, ops[i].key);
    out[i] = py::int_(ops[i].bytes_read);
  }
  return out;
}

void Put(const PyStore& self, py::handle py_key, py::handle data, bool if_absent) {
  const std::string key = KeyFromPython(py_key);
  std::shared_ptr<ObjectStore> store = self.Use();
  BufferView view = BufferView::Readable(data, "data");
  Status status;
  {
    py::gil_scoped_release release;
    status = if_absent ? store->PutIfAbsent(key, view.const_span())
                       : store->Put(key, view.const_span());
  }
  ThrowIfError(status, key);
}

void Delete(const PyStore& self, py::handle py_key) {
  const std::string key = KeyFromPython(py_key);
  std::shared_ptr<ObjectStore> store = self.Use();
  Status status;
  {
    py::gil_scoped_release release;
    status = store->Delete(key);
  }
  ThrowIfError(status, key);
}

py::list List(const PyStore& self, py::handle py_prefix) {
  const std::string prefix = KeyFromPython(py_prefix);
  std::shared_ptr<ObjectStore> store = self.Use();
  Result<std::vector<ObjectInfo>> infos = std::vector<ObjectInfo>{};
  {
    py::gil_scoped_release release;
    infos = store->List(prefix);
  }
  if (!infos.ok()) ThrowStatus(infos.status(), prefix);
  py::list out(infos->size());
  for (size_t i = 0; i < infos->size(); ++i) out[i] = InfoToPython((*infos)[i]);
  return out;
}

// One page: ([(key, size, mtime_ns), ...], next_start_after or None).
py::tuple ListPage(const PyStore& self, py::handle py_prefix, py::handle py_start_after,
                   size_t max_objects) {
  const std::string prefix = KeyFromPython(py_prefix);
  const std::string start_after = KeyFromPython(py_start_after);
  std::shared_ptr<ObjectStore> store = self.Use();
  Result<ObjectPage> page = ObjectPage{};
  {
    py::gil_scoped_release release;
    page = store->ListPage(prefix, start_after, max_objects);
  }
  if (!page.ok()) ThrowStatus(page.status(), prefix);
  py::list objects(page->objects.size());
  for (size_t i = 0; i < page->objects.size(); ++i) objects[i] = InfoToPython(page->objects[i]);
  py::object next = page->next_start_after.empty()
                        ? py::object(py::none())
                        : py::object(KeyToPython(page->next_start_after));
  return py::make_tuple(objects, next);
}

std::unique_ptr<PyWriter> NewWriter(const PyStore& self, py::handle py_key, size_t part_bytes,
                                    size_t max_parts_in_flight) {
  const std::string key = KeyFromPython(py_key);
  std::shared_ptr<ObjectStore> store = self.Use();
  WriterOptions options;
  options.part_bytes = part_bytes;
  options.max_parts_in_flight = max_parts_in_flight;
  Result<std::unique_ptr<ObjectWriter>> writer = InvalidArgumentError("unset");
  {
    py::gil_scoped_release release;
    if (Status s = options.Validate(); !s.ok()) {
      writer = s;
    } else {
      writer = store->NewWriter(key, options);
    }
  }
  if (!writer.ok()) ThrowStatus(writer.status(), key);
  return std::make_unique<PyWriter>(std::move(store), std::move(writer).value(), key);
}

py::dict StatsToPython(const CacheStats& s) {
  py::dict d;
  d["ram_hits"] = s.ram_hits;
  d["ram_hit_bytes"] = s.ram_hit_bytes;
  d["disk_hits"] = s.disk_hits;
  d["disk_hit_bytes"] = s.disk_hit_bytes;
  d["misses"] = s.misses;
  d["miss_bytes"] = s.miss_bytes;
  d["waits"] = s.waits;
  d["evictions"] = s.evictions;
  d["evicted_bytes"] = s.evicted_bytes;
  d["damaged"] = s.damaged;
  d["stale"] = s.stale;
  d["ram_bytes"] = s.ram_bytes;
  d["disk_bytes"] = s.disk_bytes;
  return d;
}

// The cache counters of a store opened with a cache; None without one.
py::object CacheStatsOf(const PyStore& self) {
  std::shared_ptr<ObjectStore> store = self.Use();
  Result<CacheStats> stats = GetCacheStats(*store);
  if (!stats.ok()) return py::none();
  return StatsToPython(*stats);
}

py::dict InspectCacheDir(const std::string& dir) {
  Result<CacheDirInfo> info = NotFoundError("unset");
  {
    py::gil_scoped_release release;
    info = InspectCache(dir);
  }
  if (!info.ok()) ThrowStatus(info.status(), dir);
  py::dict d = StatsToPython(info->totals);
  d["pages"] = info->pages;
  d["bytes"] = info->bytes;
  d["objects"] = info->objects;
  d["free_disk_bytes"] = info->free_disk_bytes;
  return d;
}

uint64_t EvictCacheDir(const std::string& dir, uint64_t keep_bytes) {
  Result<uint64_t> removed = NotFoundError("unset");
  {
    py::gil_scoped_release release;
    removed = EvictCache(dir, keep_bytes);
  }
  if (!removed.ok()) ThrowStatus(removed.status(), dir);
  return *removed;
}

py::dict VerifyCacheDir(const std::string& dir) {
  Result<CacheVerifyReport> report = NotFoundError("unset");
  {
    py::gil_scoped_release release;
    report = VerifyCache(dir);
  }
  if (!report.ok()) ThrowStatus(report.status(), dir);
  py::dict d;
  d["pages"] = report->pages;
  d["bytes"] = report->bytes;
  d["removed"] = report->removed;
  return d;
}

}  // namespace

void RegisterStore(py::module_& m) {
  const WriterOptions writer_defaults;
  const StoreOptions store_defaults;

  py::class_<PyStore, std::shared_ptr<PyStore>>(m, "Store")
      .def_property_readonly("url", &PyStore::url)
      .def_property_readonly("closed", &PyStore::closed)
      .def("close", &PyStore::Close)
      .def("cache_stats", &CacheStatsOf)
      .def("stat", &Stat, py::arg("key"))
      .def("exists", &Exists, py::arg("key"))
      .def("get", &Get, py::arg("key"), py::arg("offset") = 0, py::arg("length") = py::none())
      .def("get_into", &GetInto, py::arg("key"), py::arg("buffer"), py::arg("offset") = 0)
      .def("get_many", &GetMany, py::arg("ops"))
      .def("put", [](const PyStore& s, py::handle k, py::handle d) { Put(s, k, d, false); },
           py::arg("key"), py::arg("data"))
      .def("put_if_absent",
           [](const PyStore& s, py::handle k, py::handle d) { Put(s, k, d, true); },
           py::arg("key"), py::arg("data"))
      .def("delete", &Delete, py::arg("key"))
      .def("list", &List, py::arg("prefix") = "")
      .def("list_page", &ListPage, py::arg("prefix"), py::arg("start_after"),
           py::arg("max_objects"))
      .def("writer", &NewWriter, py::arg("key"), py::arg("part_bytes") = writer_defaults.part_bytes,
           py::arg("max_parts_in_flight") = writer_defaults.max_parts_in_flight);

  py::class_<PyWriter>(m, "Writer")
      .def_property_readonly("key", [](const PyWriter& w) { return KeyToPython(w.key()); })
      .def_property_readonly("state", &PyWriter::state)
      .def_property_readonly("bytes_written", &PyWriter::bytes_written)
      .def("write", &PyWriter::Write, py::arg("data"))
      .def("commit", &PyWriter::Commit)
      .def("abort", &PyWriter::Abort);

  m.def("open", &Open, py::arg("url"), py::arg("direct_io_min_bytes") = py::none(),
        py::arg("create_if_missing") = store_defaults.create_if_missing,
        py::arg("cache_dir") = py::none(), py::arg("cache_bytes") = py::none(),
        py::arg("ram_cache_bytes") = py::none());
  m.def("cache_inspect", &InspectCacheDir, py::arg("dir"));
  m.def("cache_evict", &EvictCacheDir, py::arg("dir"), py::arg("keep_bytes"));
  m.def("cache_verify", &VerifyCacheDir, py::arg("dir"));
  m.attr("DEFAULT_PART_BYTES") = writer_defaults.part_bytes;
  m.attr("DEFAULT_MAX_PARTS_IN_FLIGHT") = writer_defaults.max_parts_in_flight;
  m.attr("DEFAULT_DIRECT_IO_MIN_BYTES") = store_defaults.direct_io_min_bytes;
}

}  // namespace granary::python
