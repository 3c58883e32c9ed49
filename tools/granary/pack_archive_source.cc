// `granary pack` from WebDataset tar shards and from JSONL, both read with libarchive (which
// also undoes gzip, zstd, xz, bzip2 and lz4 compression).
//
// Tar: members are grouped the WebDataset way: consecutive regular files whose names share the
// part up to the first '.' of the base name form one sample; that part (with its directory) is
// the key and the rest of the base name is the field ("a/0001.seg.png" -> key "a/0001", field
// "seg.png"). A leading "./" is dropped; names without a '.', non-regular members and WebDataset
// metadata ("__index__"-style names) are skipped. One task per tar file.
//
// JSONL: one JSON object per line. The key is the string member "__key__", else the string
// member "key", else the 0-based line number as 12 digits ("000000000042"); every other member is
// a field: a JSON string as its UTF-8 bytes, any other value as its compact JSON text. Blank lines
// are skipped (they still count as lines). Blocks of ~4 MiB of lines are parsed in parallel.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <nlohmann/json.hpp>
#include <utility>

#include "pack_source.h"

namespace granary::cli::pack {
namespace {

constexpr size_t kArchiveBlockBytes = 1 << 20;
constexpr size_t kJsonlBlockBytes = 4 << 20;

// Owns a libarchive reader.
struct ArchiveCloser {
  void operator()(archive* a) const { archive_read_free(a); }
};
using ArchivePtr = std::unique_ptr<archive, ArchiveCloser>;

std::string ArchiveError(archive* a) {
  const char* text = archive_error_string(a);
  return text != nullptr ? text : "unknown libarchive error";
}

// Opens `path` ("-" is stdin) for reading tar members (raw = false) or one raw byte stream.
Result<ArchivePtr> OpenArchive(const std::string& path, bool raw) {
  ArchivePtr a(archive_read_new());
  if (!a) return InternalError("libarchive: out of memory");
  archive_read_support_filter_all(a.get());
  if (raw) {
    archive_read_support_format_raw(a.get());
    archive_read_support_format_empty(a.get());
  } else {
    archive_read_support_format_tar(a.get());
    archive_read_support_format_empty(a.get());
  }
  const int rc = path == "-" ? archive_read_open_fd(a.get(), STDIN_FILENO, kArchiveBlockBytes)
                             : archive_read_open_filename(a.get(), path.c_str(), kArchiveBlockBytes);
  if (rc != ARCHIVE_OK) {
    const int e = archive_errno(a.get());
    const std::string text = ArchiveError(a.get());
    if (e == ENOENT || e == EACCES || e == EPERM) return ErrnoToStatus(e, path);
    return DataLossError(path + ": " + text);
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Tar

// Reads one tar file, emitting its samples in member order. A damaged member ends the file:
// the sample it belongs to is reported as an error and the rest of the file is skipped.
void ReadTar(const std::string& path, ItemSink& sink) {
  Result<ArchivePtr> opened = OpenArchive(path, /*raw=*/false);
  if (!opened.ok()) {
    sink.Emit(SourceError{path, opened.status()});
    return;
  }
  archive* a = opened->get();
  std::optional<PackSample> current;
  std::string duplicate;  // a field seen twice in `current` (the sample is then reported)
  const auto flush = [&]() -> bool {
    if (!current) return true;
    PackItem item;
    if (!duplicate.empty()) {
      item = SourceError{path + " member " + current->key + "." + duplicate,
                         InvalidArgumentError(path + ": sample '" + current->key + "' has field '" +
                                              duplicate + "' twice")};
    } else {
      item = std::move(*current);
    }
    current.reset();
    duplicate.clear();
    return sink.Emit(std::move(item));
  };
  archive_entry* entry = nullptr;
  std::string last_member;
  for (;;) {
    const int rc = archive_read_next_header(a, &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc < ARCHIVE_WARN) {
      const std::string where = path + (last_member.empty() ? "" : " after member " + last_member);
      current.reset();
      sink.Emit(SourceError{where, DataLossError(where + ": " + ArchiveError(a) +
                                                  " (rest of the file skipped)")});
      return;
    }
    const char* raw_name = archive_entry_pathname(entry);
    std::string name = raw_name != nullptr ? raw_name : "";
    last_member = name;
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    while (name.starts_with("./")) name.erase(0, 2);
    const size_t slash = name.rfind('/');
    const size_t base = slash == std::string::npos ? 0 : slash + 1;
    if (name.compare(base, 2, "__") == 0 && name.ends_with("__")) continue;  // WebDataset meta
    const size_t dot = name.find('.', base);
    if (dot == std::string::npos || dot == base) continue;
    std::string key = name.substr(0, dot), field = name.substr(dot + 1);
    // A new key completes the previous sample before this member is read (and can fail).
    if (current && current->key != key && !flush()) return;

    std::string data;
    if (archive_entry_size_is_set(entry)) data.reserve(archive_entry_size(entry));
    char buffer[64 << 10];
    for (;;) {
      const la_ssize_t n = archive_read_data(a, buffer, sizeof(buffer));
      if (n == 0) break;
      if (n < 0) {
        const std::string where = path + " member " + name;
        sink.Emit(SourceError{where, DataLossError(where + ": " + ArchiveError(a) +
                                                    " (rest of the file skipped)")});
        return;
      }
      data.append(buffer, static_cast<size_t>(n));
    }
    if (!current) {
      current.emplace();
      current->key = std::move(key);
    }
    for (const PackField& f : current->fields) {
      if (f.name == field) duplicate = field;
    }
    current->fields.push_back({std::move(field), std::move(data)});
  }
  if (!flush()) return;
}

class TarSource : public PackSource {
 public:
  TarSource(std::string description, std::vector<std::string> paths)
      : description_(std::move(description)), paths_(std::move(paths)) {}
  PackTask NextTask() override {
    if (next_ >= paths_.size()) return {};
    return [path = paths_[next_++]](ItemSink& sink) { ReadTarGuarded(path, sink); };
  }
  std::string Describe() const override {
    return description_ + ": " + std::to_string(paths_.size()) + " tar file" +
           (paths_.size() == 1 ? "" : "s");
  }

 private:
  // ReadTar, wrapped so an exception from a library (bad_alloc) ends as an error, not a crash.
  static void ReadTarGuarded(const std::string& path, ItemSink& sink) {
    try {
      ReadTar(path, sink);
    } catch (const std::exception& e) {
      sink.Emit(SourceError{path, InternalError(path + ": " + e.what())});
    }
  }
  const std::string description_;
  const std::vector<std::string> paths_;
  size_t next_ = 0;
};

// ---------------------------------------------------------------------------------------------
// JSONL

// Parses `block` (whole lines; the first is line `first_line`, 0-based) into items.
void ParseJsonlBlock(const std::string& path, const std::string& block, uint64_t first_line,
                     ItemSink& sink) {
  using Json = nlohmann::json;
  uint64_t line_no = first_line;
  size_t start = 0;
  while (start < block.size()) {
    size_t end = block.find('\n', start);
    if (end == std::string::npos) end = block.size();
    std::string_view line(block.data() + start, end - start);
    start = end + 1;
    const uint64_t this_line = line_no++;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = path + " line " + std::to_string(this_line + 1);
    const auto fail = [&](const std::string& why) {
      return sink.Emit(SourceError{where, InvalidArgumentError(where + ": " + why)});
    };
    Json doc = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) {
      if (!fail("malformed JSON")) return;
      continue;
    }
    if (!doc.is_object()) {
      if (!fail("not a JSON object")) return;
      continue;
    }
    PackSample sample;
    std::string key_member;
    if (auto it = doc.find("__key__"); it != doc.end()) {
      if (!it->is_string()) {
        if (!fail("\"__key__\" is not a string")) return;
        continue;
      }
      key_member = "__key__";
    } else if (auto k = doc.find("key"); k != doc.end() && k->is_string()) {
      key_member = "key";
    }
    if (!key_member.empty()) {
      sample.key = doc[key_member].get<std::string>();
    } else {
      char digits[24];
      std::snprintf(digits, sizeof(digits), "%012llu", static_cast<unsigned long long>(this_line));
      sample.key = digits;
    }
    for (auto& [name, value] : doc.items()) {
      if (name == key_member) continue;
      sample.fields.push_back(
          {name, value.is_string() ? value.get<std::string>()
                                   : value.dump(-1, ' ', false, Json::error_handler_t::replace)});
    }
    if (!sink.Emit(std::move(sample))) return;
  }
}

class JsonlSource : public PackSource {
 public:
  JsonlSource(std::string path, ArchivePtr archive)
      : path_(std::move(path)), display_(path_ == "-" ? "stdin" : path_),
        archive_(std::move(archive)) {}

  PackTask NextTask() override {
    if (done_ || !archive_) return {};
    // Read until the block holds kJsonlBlockBytes and ends at a line end (or the input ends).
    std::string block = std::move(carry_);
    carry_.clear();
    size_t cut = std::string::npos;
    while (cut == std::string::npos) {
      const size_t old = block.size();
      block.resize(old + kArchiveBlockBytes);
      const la_ssize_t n = archive_read_data(archive_.get(), block.data() + old, kArchiveBlockBytes);
      if (n < 0) {
        done_ = true;
        const std::string where = display_ + " after line " + std::to_string(next_line_);
        Status error = DataLossError(where + ": " + ArchiveError(archive_.get()));
        return [where, error](ItemSink& sink) {
          sink.Emit(SourceError{where, error});
        };
      }
      block.resize(old + static_cast<size_t>(n));
      if (n == 0) {
        done_ = true;
        cut = block.size();
      } else if (block.size() >= kJsonlBlockBytes) {
        const size_t nl = block.rfind('\n');
        if (nl != std::string::npos) cut = nl + 1;
      }
    }
    carry_ = block.substr(cut);
    block.resize(cut);
    if (block.empty()) return {};
    const uint64_t first_line = next_line_;
    next_line_ += std::count(block.begin(), block.end(), '\n');
    if (!block.empty() && block.back() != '\n') ++next_line_;
    return [this, first_line, block = std::move(block)](ItemSink& sink) {
      try {
        ParseJsonlBlock(display_, block, first_line, sink);
      } catch (const std::exception& e) {
        const std::string where = display_ + " line " + std::to_string(first_line + 1);
        sink.Emit(SourceError{where, InternalError(where + ": " + e.what())});
      }
    };
  }
  std::string Describe() const override { return "JSONL " + display_; }

 private:
  const std::string path_, display_;
  ArchivePtr archive_;
  std::string carry_;       // bytes after the last line end of the previous block
  uint64_t next_line_ = 0;  // 0-based number of the next block's first line
  bool done_ = false;
};

}  // namespace

Result<std::unique_ptr<PackSource>> OpenTarSource(std::string description,
                                                  std::vector<std::string> paths) {
  if (paths.empty()) return InvalidArgumentError("no tar files in " + description);
  return std::unique_ptr<PackSource>(new TarSource(std::move(description), std::move(paths)));
}

Result<std::unique_ptr<PackSource>> OpenJsonlSource(const std::string& path) {
  GRANARY_ASSIGN_OR_RETURN(ArchivePtr a, OpenArchive(path, /*raw=*/true));
  archive_entry* entry = nullptr;
  const int rc = archive_read_next_header(a.get(), &entry);
  if (rc == ARCHIVE_EOF) {
    // Empty input: a source with no lines (the caller reports "no samples").
    return std::unique_ptr<PackSource>(new JsonlSource(path, nullptr));
  }
  if (rc < ARCHIVE_WARN) return DataLossError(path + ": " + ArchiveError(a.get()));
  return std::unique_ptr<PackSource>(new JsonlSource(path, std::move(a)));
}

}  // namespace granary::cli::pack
