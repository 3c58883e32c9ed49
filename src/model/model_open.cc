// Model::Open: turns sources (files, directories, index JSONs, store URLs) into one validated
// table of tensors. Every header is read and checked (safetensors_format.h) before anything large
// is allocated; an index JSON must name only files of its own directory and tensors those files
// hold.
#include <sys/stat.h>
#include <fcntl.h>

#include <algorithm>
#include <map>
#include <set>

#include "core/json_fields.h"
#include "model/model_impl.h"

namespace granary::model {
namespace {

constexpr std::string_view kSuffix = ".safetensors";
constexpr std::string_view kIndexSuffix = ".safetensors.index.json";
constexpr std::string_view kDefaultIndex = "model.safetensors.index.json";
// First read of a file: the length and, for most files, the whole header.
constexpr size_t kFirstReadBytes = 64u << 10;

// Where a source's files live, and which of them (or which index) it names.
struct Location {
  std::shared_ptr<ObjectStore> store;
  std::string display;             // directory or store URL, for messages
  std::vector<std::string> keys;   // the safetensors files, when no index
  std::string index_key;           // the index JSON, when there is one
};

std::string Join(std::string_view dir, std::string_view key) {
  if (dir.empty()) return std::string(key);
  std::string out(dir);
  if (!out.ends_with('/')) out += '/';
  out += key;
  return out;
}

Result<std::shared_ptr<ObjectStore>> OpenAt(std::string_view url, const ModelOptions& options) {
  StoreOptions store_options = options.store;
  store_options.create_if_missing = false;
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<ObjectStore> store, OpenStore(url, store_options));
  return std::shared_ptr<ObjectStore>(std::move(store));
}

// A source naming one object: a .safetensors file or an index JSON. `display` names `dir` in
// messages (a store URL without its query, which may hold credentials).
Result<Location> ObjectLocation(std::string_view dir, std::string_view key,
                                const ModelOptions& options, std::string_view display) {
  Location loc;
  GRANARY_ASSIGN_OR_RETURN(loc.store, OpenAt(dir.empty() ? "." : dir, options));
  loc.display = std::string(display);
  if (key.ends_with(".json")) {
    loc.index_key = std::string(key);
  } else {
    loc.keys.emplace_back(key);
  }
  return loc;
}

// A source naming a directory or a store: its index if it has one, else its safetensors files.
Result<Location> DirectoryLocation(std::string_view url, const ModelOptions& options,
                                   std::string_view display) {
  Location loc;
  GRANARY_ASSIGN_OR_RETURN(loc.store, OpenAt(url, options));
  loc.display = std::string(display);
  GRANARY_ASSIGN_OR_RETURN(std::vector<ObjectInfo> objects, loc.store->List(""));
  std::vector<std::string> indexes;
  for (const ObjectInfo& o : objects) {
    if (o.key.find('/') != std::string::npos) continue;  // only the top level, like HF
    if (o.key.ends_with(kIndexSuffix)) indexes.push_back(o.key);
    if (o.key.ends_with(kSuffix)) loc.keys.push_back(o.key);
  }
  if (indexes.size() == 1) {
    loc.index_key = indexes[0];
  } else if (std::find(indexes.begin(), indexes.end(), kDefaultIndex) != indexes.end()) {
    loc.index_key = std::string(kDefaultIndex);
  } else if (indexes.size() > 1) {
    return InvalidArgumentError("model directory " + std::string(display) + " holds " +
                                std::to_string(indexes.size()) +
                                " index files and none is " + std::string(kDefaultIndex) +
                                "; name the index to load");
  }
  if (!loc.index_key.empty()) {
    loc.keys.clear();
  } else if (loc.keys.empty()) {
    return NotFoundError("model directory " + std::string(display) + ": no " +
                         std::string(kSuffix) + " files and no index");
  }
  return loc;
}

Result<Location> Locate(const std::string& source, const ModelOptions& options) {
  if (source.empty()) return InvalidArgumentError("empty model source");
  std::string path;  // local path, when the source is one
  if (source.starts_with("file://")) {
    path = source.substr(std::string_view("file://").size());
    if (path.starts_with("localhost/")) path = path.substr(std::string_view("localhost").size());
  } else if (source.find("://") == std::string::npos) {
    path = source;
  }
  if (path.empty()) {
    // A store URL: an object if the name says so, else a directory-like prefix. A query
    // (s3://b/p/m.safetensors?endpoint=...) configures the store, so it stays with the
    // directory part and is left out of names in messages.
    const size_t query_at = std::min(source.find('?'), source.size());
    const std::string base = source.substr(0, query_at);
    const std::string query = source.substr(query_at);
    if (base.ends_with(kSuffix) || base.ends_with(".json")) {
      size_t slash = base.rfind('/');
      if (slash == std::string::npos || base.find("://") + 2 >= slash) {
        return InvalidArgumentError("model source " + base +
                                    ": a store URL naming a file needs a directory part");
      }
      return ObjectLocation(base.substr(0, slash) + query, base.substr(slash + 1), options,
                            base.substr(0, slash));
    }
    return DirectoryLocation(source, options, base);
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return NotFoundError("model source " + source + ": no such file or directory");
  }
  if (S_ISDIR(st.st_mode)) return DirectoryLocation(path, options, path);
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  if (dir.empty()) dir = "/";
  return ObjectLocation(dir, slash == std::string::npos ? path : path.substr(slash + 1), options,
                        dir);
}

// Reads [offset, offset + dest.size()) of a file; fewer bytes only at its end.
Result<size_t> ReadSome(const FileSource& src, uint64_t offset, std::span<std::byte> dest) {
  if (src.buffered.is_open()) {
    Result<size_t> got = IoEngine::Default().ReadAt(src.buffered, offset, dest);
    if (!got.ok()) return got.status().WithContext(src.name);
    return got;
  }
  Result<size_t> got = src.store->Get(src.key, offset, dest);
  if (!got.ok()) return got.status().WithContext(src.name);
  return got;
}

Result<FileSource> OpenSource(const Location& loc, const std::string& key) {
  FileSource src;
  src.store = loc.store;
  src.key = key;
  src.name = loc.display.empty() ? key : Join(loc.display, key);
  Result<File> buffered = loc.store->OpenLocalFile(key, /*direct_io=*/false);
  if (buffered.ok()) {
    src.buffered = std::move(*buffered);
    // No readahead on this descriptor: reading the header would otherwise pull the first
    // hundreds of KiB of tensors into the page cache, and buffered reads here are large anyway.
    ::posix_fadvise(src.buffered.fd(), 0, 0, POSIX_FADV_RANDOM);
    Result<File> direct = loc.store->OpenLocalFile(key, /*direct_io=*/true);
    if (direct.ok() && (::fcntl(direct->fd(), F_GETFL) & O_DIRECT) != 0) {
      src.direct = std::move(*direct);
    }
  } else if (buffered.status().code() != StatusCode::kUnimplemented) {
    return buffered.status().WithContext("model file " + src.name);
  }
  return src;
}

// The header of one file, validated against the file's size.
Result<SafetensorsHeader> ReadHeader(const FileSource& src, uint64_t* file_size) {
  if (src.buffered.is_open()) {
    GRANARY_ASSIGN_OR_RETURN(*file_size, src.buffered.Size());
  } else {
    GRANARY_ASSIGN_OR_RETURN(ObjectInfo info, src.store->Stat(src.key));
    *file_size = info.size_bytes;
  }
  std::string first(std::min<uint64_t>(kFirstReadBytes, *file_size), '\0');
  GRANARY_ASSIGN_OR_RETURN(size_t got,
                           ReadSome(src, 0, std::as_writable_bytes(std::span(first))));
  if (got < kSafetensorsLengthBytes) {
    return DataLossError(src.name + ": " + std::to_string(*file_size) +
                         " bytes, too short for a safetensors file (the 8-byte header length "
                         "is missing)");
  }
  std::span<const std::byte, 8> length_bytes(
      reinterpret_cast<const std::byte*>(first.data()), 8);
  GRANARY_ASSIGN_OR_RETURN(uint64_t n, ParseHeaderLength(length_bytes, *file_size, src.name));
  std::string json;
  if (kSafetensorsLengthBytes + n <= got) {
    json = first.substr(kSafetensorsLengthBytes, n);
  } else {
    json.resize(n);
    GRANARY_ASSIGN_OR_RETURN(
        size_t got_json,
        ReadSome(src, kSafetensorsLengthBytes, std::as_writable_bytes(std::span(json))));
    if (got_json < n) {
      return DataLossError(src.name + ": file ends inside its " + std::to_string(n) +
                           "-byte header");
    }
  }
  return ParseHeader(json, n, *file_size, src.name);
}

// weight_map of an index JSON, and its "metadata" as compact JSON.
struct Index {
  std::map<std::string, std::string> weight_map;  // tensor -> file key
  std::string metadata;
};

Result<Index> ReadIndex(const Location& loc) {
  const std::string name = Join(loc.display, loc.index_key);
  Result<std::string> body = loc.store->GetAll(loc.index_key);
  if (!body.ok()) return body.status().WithContext("model index " + name);
  json::Json doc = json::Json::parse(*body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return DataLossError("model index " + name + ": not a JSON object");
  }
  auto map = doc.find("weight_map");
  if (map == doc.end() || !map->is_object()) {
    return DataLossError("model index " + name + ": no \"weight_map\" object");
  }
  Index index;
  for (auto it = map->begin(); it != map->end(); ++it) {
    if (!it.value().is_string()) {
      return DataLossError("model index " + name + ": tensor " + it.key() +
                           ": file name is not a string");
    }
    std::string file = it.value().get<std::string>();
    if (Status s = ValidateKey(file); !s.ok() || file.find('/') != std::string::npos) {
      return DataLossError("model index " + name + ": tensor " + it.key() + ": file name \"" +
                           file + "\" is not a file of the index's directory");
    }
    index.weight_map.emplace(it.key(), std::move(file));
  }
  if (index.weight_map.empty()) {
    return DataLossError("model index " + name + ": \"weight_map\" is empty");
  }
  if (auto meta = doc.find("metadata"); meta != doc.end() && !meta->is_null()) {
    GRANARY_ASSIGN_OR_RETURN(index.metadata, json::Dump(*meta, "model index " + name));
  }
  return index;
}

}  // namespace

size_t DTypeAlignment(DType dtype) {
  size_t bits = DTypeBits(dtype);
  if (bits < 8) return 1;
  size_t bytes = bits / 8;
  return std::min<size_t>(bytes, 8);  // C64 too: torch's complex<float> is alignas(8)
}

ModelImpl::ModelImpl(std::vector<ModelFile> files, std::vector<FileSource> sources,
                     std::vector<ModelTensor> tensors, std::vector<DType> dtypes,
                     std::string index_metadata)
    : files_(std::move(files)), sources_(std::move(sources)), tensors_(std::move(tensors)),
      dtypes_(std::move(dtypes)), index_metadata_(std::move(index_metadata)) {
  for (size_t i = 0; i < tensors_.size(); ++i) {
    total_bytes_ += tensors_[i].bytes;
    by_name_.emplace(tensors_[i].name, i);
  }
}

std::optional<size_t> ModelImpl::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

Result<std::unique_ptr<TensorStream>> ModelImpl::Read(std::vector<size_t> sequence,
                                                      const ReadOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  std::vector<bool> seen(tensors_.size());
  for (size_t i : sequence) {
    if (i >= tensors_.size()) {
      return InvalidArgumentError("tensor index " + std::to_string(i) +
                                  " out of range (model has " +
                                  std::to_string(tensors_.size()) + " tensors)");
    }
    if (seen[i]) {
      return InvalidArgumentError("tensor " + tensors_[i].name + " requested twice");
    }
    seen[i] = true;
  }
  return NewTensorStream(*this, std::move(sequence), options);
}

}  // namespace granary::model

namespace granary {

Status ReadOptions::Validate() const {
  if (request_bytes < kDirectIoAlignment || request_bytes % kDirectIoAlignment != 0) {
    return InvalidArgumentError("ReadOptions.request_bytes must be a positive multiple of 4096");
  }
  if (io_threads == 0 || io_threads > 256) {
    return InvalidArgumentError("ReadOptions.io_threads must be in [1, 256]");
  }
  if (segment_bytes == 0) return InvalidArgumentError("ReadOptions.segment_bytes must be > 0");
  return Status::OK();
}

Result<std::unique_ptr<Model>> Model::Open(std::span<const std::string> sources,
                                           const ModelOptions& options) {
  using namespace model;
  GRANARY_RETURN_IF_ERROR(options.Validate());
  if (sources.empty()) return InvalidArgumentError("no model sources given");
  std::vector<ModelFile> files;
  std::vector<FileSource> file_sources;
  std::vector<ModelTensor> tensors;
  std::vector<DType> dtypes;
  std::map<std::string, uint32_t, std::less<>> owner;  // tensor name -> file
  std::string index_metadata;
  for (const std::string& source : sources) {
    GRANARY_ASSIGN_OR_RETURN(Location loc, Locate(source, options));
    Index index;
    std::vector<std::string> keys = loc.keys;
    if (!loc.index_key.empty()) {
      GRANARY_ASSIGN_OR_RETURN(index, ReadIndex(loc));
      std::set<std::string> unique;
      for (const auto& [tensor, file] : index.weight_map) unique.insert(file);
      keys.assign(unique.begin(), unique.end());
      if (index_metadata.empty()) index_metadata = index.metadata;
    }
    std::sort(keys.begin(), keys.end());
    const uint32_t first_file = static_cast<uint32_t>(files.size());
    for (const std::string& key : keys) {
      auto missing = [&](const Status& s) {
        if (s.code() != StatusCode::kNotFound || loc.index_key.empty()) return s;
        return DataLossError("model index " + Join(loc.display, loc.index_key) +
                             " names file " + key + ", which is missing");
      };
      Result<FileSource> opened = OpenSource(loc, key);
      if (!opened.ok()) return missing(opened.status());
      FileSource src = std::move(*opened);
      uint64_t size = 0;
      Result<SafetensorsHeader> header = ReadHeader(src, &size);
      if (!header.ok()) return missing(header.status());
      const uint32_t file = static_cast<uint32_t>(files.size());
      ModelFile mf;
      mf.url = src.name;
      mf.size_bytes = size;
      mf.data_start = header->data_start;
      mf.metadata = header->metadata;
      for (TensorEntry& e : header->tensors) {
        auto [it, inserted] = owner.emplace(e.name, file);
        if (!inserted) {
          return InvalidArgumentError("tensor " + e.name + " is in both " +
                                      files[it->second].url + " and " + src.name);
        }
        ModelTensor t;
        t.name = std::move(e.name);
        t.dtype = std::string(DTypeName(e.dtype));
        t.dtype_bits = DTypeBits(e.dtype);
        t.shape = std::move(e.shape);
        t.bytes = e.bytes();
        t.file = file;
        t.offset = e.file_offset();
        tensors.push_back(std::move(t));
        dtypes.push_back(e.dtype);
      }
      files.push_back(std::move(mf));
      file_sources.push_back(std::move(src));
    }
    for (const auto& [tensor, key] : index.weight_map) {
      auto it = owner.find(tensor);
      if (it == owner.end() || it->second < first_file ||
          file_sources[it->second].key != key) {
        return DataLossError("model index " + Join(loc.display, loc.index_key) + ": tensor " +
                             tensor + ": not in file " + key);
      }
    }
  }
  return std::unique_ptr<Model>(new ModelImpl(std::move(files), std::move(file_sources),
                                              std::move(tensors), std::move(dtypes),
                                              std::move(index_metadata)));
}

}  // namespace granary
