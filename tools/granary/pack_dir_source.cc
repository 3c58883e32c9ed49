// `granary pack` from a directory tree: files sharing a stem in one directory form a sample.
//
//   SRC/n01/0001.jpg, SRC/n01/0001.cls  ->  key "n01/0001", fields "jpg", "cls"
//
// The field name is everything after the first '.' of the file name (as WebDataset does); the
// key is the directory relative to SRC, '/', and the part before that '.'. Samples are sorted by
// key (bytewise) and fields by name. Hidden entries (names starting with '.') are ignored;
// symbolic links are followed (directories once, so a cycle ends). The tree is scanned up front,
// so the sample count and total bytes are known before reading starts.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "pack_source.h"

namespace granary::cli::pack {
namespace {

// Tasks hold at most this many samples or (scanned) bytes, whichever comes first.
constexpr size_t kTaskSamples = 256;
constexpr uint64_t kTaskBytes = 8ull << 20;

struct FileRef {
  std::string field;
  std::string path;  // as given (SRC joined with the relative path)
  uint64_t size_bytes = 0;
};

struct SampleFiles {
  std::string key;
  std::vector<FileRef> files;  // sorted by field
  std::string label;           // --label-from-parent: the class index, as text
};

// Reads a whole regular file. Opened non-blocking so a FIFO never hangs the reader.
Result<std::string> ReadWholeFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoToStatus(errno, path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return ErrnoToStatus(e, path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError(path + ": not a regular file");
  }
  std::string data;
  data.resize(static_cast<size_t>(st.st_size));
  size_t filled = 0;
  for (;;) {
    if (filled == data.size()) data.resize(std::max<size_t>(4096, data.size() * 2));
    const ssize_t n = ::read(fd, data.data() + filled, data.size() - filled);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      return ErrnoToStatus(e, path);
    }
    if (n == 0) break;
    filled += static_cast<size_t>(n);
  }
  ::close(fd);
  data.resize(filled);
  return data;
}

class DirSource : public PackSource {
 public:
  DirSource(std::string root, std::vector<SampleFiles> samples, std::vector<SourceError> errors,
            uint64_t total_bytes, size_t classes, bool labels)
      : root_(std::move(root)),
        samples_(std::move(samples)),
        errors_(std::move(errors)),
        total_bytes_(total_bytes),
        classes_(classes),
        labels_(labels) {}

  PackTask NextTask() override {
    if (!errors_.empty()) {
      // Problems found by the scan come first, in path order.
      return [errors = std::move(errors_)](ItemSink& sink) mutable {
        for (SourceError& e : errors) {
          if (!sink.Emit(std::move(e))) return;
        }
      };
    }
    if (next_ >= samples_.size()) return {};
    const size_t begin = next_;
    uint64_t bytes = 0;
    while (next_ < samples_.size() && next_ - begin < kTaskSamples && bytes < kTaskBytes) {
      for (const FileRef& f : samples_[next_].files) bytes += f.size_bytes;
      ++next_;
    }
    const size_t end = next_;
    return [this, begin, end](ItemSink& sink) {
      for (size_t i = begin; i < end; ++i) {
        if (!sink.Emit(Read(samples_[i]))) return;
      }
    };
  }

  std::optional<uint64_t> total_samples() const override { return samples_.size(); }
  std::optional<uint64_t> total_bytes() const override { return total_bytes_; }
  std::string Describe() const override {
    std::string out = "directory " + root_ + ": " + std::to_string(samples_.size()) + " samples";
    if (labels_) out += " in " + std::to_string(classes_) + " class folders";
    return out;
  }

 private:
  // The sample, or the error of the first file that could not be read (the sample is dropped:
  // a sample missing a field would be worse than a missing sample).
  static PackItem Read(const SampleFiles& s) {
    PackSample sample;
    sample.key = s.key;
    for (const FileRef& f : s.files) {
      Result<std::string> data = ReadWholeFile(f.path);
      if (!data.ok()) return SourceError{f.path, data.status()};
      sample.fields.push_back({f.field, std::move(data).value()});
    }
    if (!s.label.empty()) sample.fields.push_back({"cls", s.label});
    return sample;
  }

  const std::string root_;
  const std::vector<SampleFiles> samples_;
  std::vector<SourceError> errors_;
  const uint64_t total_bytes_;
  const size_t classes_;
  const bool labels_;
  size_t next_ = 0;
};

// Walks `dir` (relative path `rel` under the root), adding files to `by_key` and problems to
// `errors`. `visited` holds (device, inode) of the directories entered, so symlink cycles end.
void Scan(const std::string& dir, const std::string& rel,
          std::map<std::string, SampleFiles>* by_key, std::vector<SourceError>* errors,
          std::set<std::pair<dev_t, ino_t>>* visited) {
  struct stat dir_st;
  if (::stat(dir.c_str(), &dir_st) == 0 && !visited->insert({dir_st.st_dev, dir_st.st_ino}).second) {
    return;
  }
  std::error_code ec;
  std::vector<std::pair<std::string, bool>> entries;  // name, is directory
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.starts_with('.')) continue;
    std::error_code type_ec;
    // Follows symlinks; a dangling link is listed as a file and fails when read.
    const bool is_dir = it->is_directory(type_ec);
    entries.emplace_back(std::move(name), is_dir);
  }
  if (ec) {
    errors->push_back({dir, ErrnoToStatus(ec.value(), "cannot list directory " + dir)});
    return;
  }
  std::sort(entries.begin(), entries.end());
  for (const auto& [name, is_dir] : entries) {
    const std::string path = dir + "/" + name;
    const std::string rel_path = rel.empty() ? name : rel + "/" + name;
    if (is_dir) {
      Scan(path, rel_path, by_key, errors, visited);
      continue;
    }
    const size_t dot = name.find('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == name.size()) {
      errors->push_back(
          {path, InvalidArgumentError(path + ": no extension to name the field (want STEM.EXT)")});
      continue;
    }
    const std::string key = (rel.empty() ? "" : rel + "/") + name.substr(0, dot);
    struct stat st;
    const uint64_t size = ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    SampleFiles& s = (*by_key)[key];
    s.key = key;
    s.files.push_back({name.substr(dot + 1), path, size});
  }
}

}  // namespace

Result<std::unique_ptr<PackSource>> OpenDirSource(const std::string& root_arg,
                                                  bool label_from_parent,
                                                  const std::string& exclude_dir) {
  std::string root = root_arg;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  std::map<std::string, SampleFiles> by_key;
  std::vector<SourceError> errors;
  std::set<std::pair<dev_t, ino_t>> visited;
  struct stat excluded;
  if (!exclude_dir.empty() && ::stat(exclude_dir.c_str(), &excluded) == 0) {
    visited.insert({excluded.st_dev, excluded.st_ino});  // as if entered already
  }
  Scan(root, "", &by_key, &errors, &visited);

  std::vector<SampleFiles> samples;
  samples.reserve(by_key.size());
  uint64_t total_bytes = 0;
  std::map<std::string, size_t> classes;  // name -> index
  if (label_from_parent) {
    for (const auto& [key, s] : by_key) {
      const size_t slash = key.rfind('/');
      if (slash == std::string::npos) continue;
      const size_t parent = key.rfind('/', slash - 1);
      classes.emplace(key.substr(parent == std::string::npos ? 0 : parent + 1,
                                 slash - (parent == std::string::npos ? 0 : parent + 1)),
                      0);
    }
    size_t index = 0;
    for (auto& [name, i] : classes) i = index++;
  }
  for (auto& [key, s] : by_key) {
    std::sort(s.files.begin(), s.files.end(),
              [](const FileRef& a, const FileRef& b) { return a.field < b.field; });
    if (label_from_parent) {
      const size_t slash = key.rfind('/');
      const std::string where = s.files.front().path;
      if (slash == std::string::npos) {
        errors.push_back({where, InvalidArgumentError(
                                     where + ": --label-from-parent: not inside a class folder")});
        continue;
      }
      if (std::any_of(s.files.begin(), s.files.end(),
                      [](const FileRef& f) { return f.field == "cls"; })) {
        errors.push_back({where, InvalidArgumentError(where + ": --label-from-parent: sample '" +
                                                      key + "' already has a .cls file")});
        continue;
      }
      const size_t parent = key.rfind('/', slash - 1);
      const size_t from = parent == std::string::npos ? 0 : parent + 1;
      s.label = std::to_string(classes.at(key.substr(from, slash - from)));
    }
    for (const FileRef& f : s.files) total_bytes += f.size_bytes;
    samples.push_back(std::move(s));
  }
  // Errors in path order, so the report does not depend on when the scan met them.
  std::stable_sort(errors.begin(), errors.end(),
                   [](const SourceError& a, const SourceError& b) { return a.where < b.where; });
  return std::unique_ptr<PackSource>(new DirSource(root, std::move(samples), std::move(errors),
                                                   total_bytes, classes.size(),
                                                   label_from_parent));
}

}  // namespace granary::cli::pack
