// Format detection, brace patterns, sizes, sample validation and the ordered read-ahead of
// `granary pack` (pack_source.h).
#include "pack_source.h"

#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <set>

#include "dataset/dataset_format.h"

namespace granary::cli::pack {

uint64_t PackSample::bytes() const {
  uint64_t total = key.size();
  for (const PackField& f : fields) total += f.data.size();
  return total;
}

// ---------------------------------------------------------------------------------------------
// ReadAhead

struct ReadAhead::Task {
  std::deque<PackItem> items;
  uint64_t bytes = 0;   // of `items`
  bool done = false;    // the task returned; no more items come
};

class ReadAhead::Sink : public ItemSink {
 public:
  Sink(ReadAhead& owner, Task& task) : owner_(owner), task_(task) {}
  bool Emit(PackItem item) override {
    const uint64_t bytes =
        std::holds_alternative<PackSample>(item) ? std::get<PackSample>(item).bytes() : 0;
    std::unique_lock lock(owner_.mu_);
    owner_.changed_.wait(lock, [&] {
      return owner_.cancelled_ || task_.items.empty() ||
             task_.bytes + bytes <= owner_.task_budget_bytes_;
    });
    if (owner_.cancelled_) return false;
    task_.items.push_back(std::move(item));
    task_.bytes += bytes;
    owner_.queued_bytes_ += bytes;
    owner_.changed_.notify_all();
    return true;
  }

 private:
  ReadAhead& owner_;
  Task& task_;
};

ReadAhead::ReadAhead(PackSource& source, unsigned workers, uint64_t budget_bytes)
    : source_(source),
      max_tasks_(2 * std::max(1u, workers)),
      task_budget_bytes_(std::max<uint64_t>(1, budget_bytes / (2 * std::max(1u, workers)))) {
  // Workers never take SIGINT/SIGTERM: the main thread handles them and a read is not EINTR'd.
  sigset_t blocked, old;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGINT);
  sigaddset(&blocked, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &blocked, &old);
  for (unsigned i = 0; i < std::max(1u, workers); ++i) threads_.emplace_back([this] { Work(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

ReadAhead::~ReadAhead() {
  Cancel();
  for (std::thread& t : threads_) t.join();
}

void ReadAhead::Cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  changed_.notify_all();
}

uint64_t ReadAhead::queued_bytes() const {
  std::lock_guard lock(mu_);
  return queued_bytes_;
}

void ReadAhead::Work() {
  for (;;) {
    std::shared_ptr<Task> task;
    PackTask work;
    {
      // Holding source_mu_ across the wait keeps tasks in the order NextTask made them.
      std::lock_guard source_lock(source_mu_);
      {
        std::unique_lock lock(mu_);
        changed_.wait(lock, [&] {
          return cancelled_ || source_done_ || tasks_.size() < max_tasks_;
        });
        if (cancelled_ || source_done_) return;
      }
      work = source_.NextTask();
      std::lock_guard lock(mu_);
      if (!work) {
        source_done_ = true;
        changed_.notify_all();
        return;
      }
      task = std::make_shared<Task>();
      tasks_.push_back(task);
    }
    Sink sink(*this, *task);
    work(sink);
    std::lock_guard lock(mu_);
    task->done = true;
    changed_.notify_all();
  }
}

ReadAhead::Pop ReadAhead::Next(PackItem* out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    while (!tasks_.empty() && tasks_.front()->items.empty() && tasks_.front()->done) {
      tasks_.pop_front();
      changed_.notify_all();
    }
    if (!tasks_.empty() && !tasks_.front()->items.empty()) {
      Task& front = *tasks_.front();
      *out = std::move(front.items.front());
      front.items.pop_front();
      const uint64_t bytes =
          std::holds_alternative<PackSample>(*out) ? std::get<PackSample>(*out).bytes() : 0;
      front.bytes -= bytes;
      queued_bytes_ -= bytes;
      changed_.notify_all();
      return Pop::kItem;
    }
    if (tasks_.empty() && (source_done_ || cancelled_)) return Pop::kEnd;
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout) return Pop::kTimeout;
  }
}

// ---------------------------------------------------------------------------------------------
// Brace patterns, sizes, validation

Result<std::vector<std::string>> ExpandBraces(std::string_view pattern) {
  const size_t open = pattern.find('{');
  if (open == std::string_view::npos) {
    if (pattern.find('}') != std::string_view::npos) {
      return InvalidArgumentError("unbalanced '}' in pattern '" + std::string(pattern) + "'");
    }
    return std::vector<std::string>{std::string(pattern)};
  }
  const size_t close = pattern.find('}', open);
  if (close == std::string_view::npos) {
    return InvalidArgumentError("unbalanced '{' in pattern '" + std::string(pattern) + "'");
  }
  const std::string_view head = pattern.substr(0, open);
  const std::string_view body = pattern.substr(open + 1, close - open - 1);
  GRANARY_ASSIGN_OR_RETURN(std::vector<std::string> tails, ExpandBraces(pattern.substr(close + 1)));
  std::vector<std::string> choices;
  const size_t dots = body.find("..");
  if (dots != std::string_view::npos) {
    const std::string_view lo_text = body.substr(0, dots), hi_text = body.substr(dots + 2);
    uint64_t lo = 0, hi = 0;
    auto lo_r = std::from_chars(lo_text.data(), lo_text.data() + lo_text.size(), lo);
    auto hi_r = std::from_chars(hi_text.data(), hi_text.data() + hi_text.size(), hi);
    if (lo_text.empty() || hi_text.empty() || lo_r.ec != std::errc() ||
        hi_r.ec != std::errc() || lo_r.ptr != lo_text.data() + lo_text.size() ||
        hi_r.ptr != hi_text.data() + hi_text.size() || lo > hi || hi - lo >= 10'000'000) {
      return InvalidArgumentError("bad range {" + std::string(body) + "} in pattern '" +
                                  std::string(pattern) + "' (expected {LOW..HIGH}, LOW <= HIGH)");
    }
    for (uint64_t i = lo; i <= hi; ++i) {
      std::string digits = std::to_string(i);
      if (digits.size() < lo_text.size()) {
        digits.insert(0, lo_text.size() - digits.size(), '0');
      }
      choices.push_back(std::move(digits));
    }
  } else {
    size_t start = 0;
    for (;;) {
      const size_t comma = body.find(',', start);
      choices.emplace_back(body.substr(start, comma - start));
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
  }
  std::vector<std::string> out;
  out.reserve(choices.size() * tails.size());
  for (const std::string& c : choices) {
    for (const std::string& t : tails) out.push_back(std::string(head) + c + t);
  }
  return out;
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  const auto bad = [&] {
    return InvalidArgumentError("bad size '" + std::string(text) +
                                "' (expected e.g. 512M, 1G, 64MiB or a number of bytes)");
  };
  size_t digits = 0;
  while (digits < text.size() && (std::isdigit(static_cast<unsigned char>(text[digits])) ||
                                  text[digits] == '.')) {
    ++digits;
  }
  double value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + digits, value);
  if (digits == 0 || ec != std::errc() || ptr != text.data() + digits) return bad();
  std::string suffix;
  for (char c : text.substr(digits)) suffix += static_cast<char>(std::toupper(c));
  double scale = 1;
  if (!suffix.empty() && suffix != "B") {
    const size_t power = std::string_view("KMGT").find(suffix[0]);
    if (power == std::string_view::npos) return bad();
    const std::string rest = suffix.substr(1);
    double base = 0;
    if (rest.empty() || rest == "I" || rest == "IB") {
      base = 1024;
    } else if (rest == "B") {
      base = 1000;
    } else {
      return bad();
    }
    scale = std::pow(base, static_cast<double>(power + 1));
  }
  const double bytes = value * scale;
  if (!(bytes >= 1) || bytes > 1e18) return bad();
  return static_cast<uint64_t>(bytes);
}

Status ValidateSample(const PackSample& sample) {
  using namespace granary::dataset;
  const auto bad = [&](std::string why) {
    std::string shown = sample.key.substr(0, 200);
    std::replace(shown.begin(), shown.end(), '\0', '?');
    return InvalidArgumentError("sample '" + shown + "': " + why);
  };
  if (sample.key.empty() || sample.key.size() > kMaxKeyBytes) {
    return bad("key must be 1-" + std::to_string(kMaxKeyBytes) + " bytes");
  }
  if (sample.key.find('\0') != std::string::npos) return bad("key contains a NUL byte");
  if (sample.fields.size() > kMaxFields) return bad("more than 65535 fields");
  uint64_t record = kRecordFixedBytes + sample.key.size();
  std::set<std::string_view> names;
  for (const PackField& f : sample.fields) {
    if (f.name.empty() || f.name.size() > kMaxFieldNameBytes ||
        f.name.find_first_of(std::string_view("/\0", 2)) != std::string::npos) {
      return bad("field name '" + f.name + "' must be 1-255 bytes without '/' or NUL");
    }
    if (f.name == "__key__") return bad("field name '__key__' is reserved");
    if (!names.insert(f.name).second) return bad("field '" + f.name + "' appears twice");
    if (f.data.size() > kMaxRecordBytes) return bad("field '" + f.name + "' is 4 GiB or more");
    record += kRecordFieldEntryBytes + f.data.size();
  }
  if (record > kMaxRecordBytes) return bad("record would be 4 GiB or more");
  return Status::OK();
}

// ---------------------------------------------------------------------------------------------
// Format detection

namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Strips one compression suffix (".gz", ".zst", ...).
std::string_view WithoutCompression(std::string_view name) {
  for (std::string_view c : {".gz", ".zst", ".xz", ".bz2", ".lz4"}) {
    if (EndsWith(name, c)) return name.substr(0, name.size() - c.size());
  }
  return name;
}

bool IsTarName(std::string_view name) {
  return EndsWith(WithoutCompression(name), ".tar") || EndsWith(name, ".tgz");
}

bool IsJsonlName(std::string_view name) {
  return EndsWith(WithoutCompression(name), ".jsonl");
}

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return !b.empty() && ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 &&
         sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// The tar files directly in `dir`, sorted, when it holds nothing else (no subdirectories but
// `exclude_dir`, no other files but hidden ones); nullopt otherwise.
std::optional<std::vector<std::string>> TarShardsIn(const std::string& dir,
                                                    const std::string& exclude_dir) {
  std::error_code ec;
  std::vector<std::string> tars;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.starts_with('.') || SameFile(it->path().string(), exclude_dir)) continue;
    if (it->is_directory(ec) || !IsTarName(name)) return std::nullopt;
    tars.push_back(it->path().string());
  }
  if (ec || tars.empty()) return std::nullopt;
  std::sort(tars.begin(), tars.end());
  return tars;
}

}  // namespace

Result<std::unique_ptr<PackSource>> OpenPackSource(const std::string& src,
                                                   const SourceOptions& options) {
  PackFormat format = options.format;
  const bool pattern = src.find('{') != std::string::npos;
  struct stat st;
  const bool exists = src == "-" || ::stat(src.c_str(), &st) == 0;
  if (!exists && !pattern) {
    return ErrnoToStatus(errno, "SRC " + src).WithContext("cannot read the source");
  }
  const bool is_dir = src != "-" && exists && S_ISDIR(st.st_mode);
  std::optional<std::vector<std::string>> shards;
  if (format == PackFormat::kAuto) {
    if (src == "-" || (!is_dir && IsJsonlName(src))) {
      format = PackFormat::kJsonl;
    } else if (pattern || (!is_dir && IsTarName(src))) {
      format = PackFormat::kTar;
    } else if (is_dir && (shards = TarShardsIn(src, options.exclude_dir))) {
      format = PackFormat::kTar;
    } else if (is_dir) {
      format = PackFormat::kDir;
    } else {
      return InvalidArgumentError("cannot tell the format of '" + src +
                                  "' (not a directory, *.tar or *.jsonl); pass --format");
    }
  }
  if (options.label_from_parent && format != PackFormat::kDir) {
    return InvalidArgumentError("--label-from-parent needs a directory tree source, and '" + src +
                                "' is read as " +
                                (format == PackFormat::kTar ? "tar shards" : "JSONL"));
  }
  switch (format) {
    case PackFormat::kDir:
      if (!is_dir) return InvalidArgumentError("--format dir: '" + src + "' is not a directory");
      return OpenDirSource(src, options.label_from_parent, options.exclude_dir);
    case PackFormat::kJsonl:
      if (is_dir) return InvalidArgumentError("--format jsonl: '" + src + "' is a directory");
      return OpenJsonlSource(src);
    case PackFormat::kTar:
    case PackFormat::kAuto:
      break;
  }
  if (is_dir && !shards) {
    shards = TarShardsIn(src, options.exclude_dir);
    if (!shards) return InvalidArgumentError("no tar files directly in directory '" + src + "'");
  }
  if (shards) {
    std::string what = "tar shards in " + src;
    return OpenTarSource(std::move(what), std::move(*shards));
  }
  if (src == "-") return InvalidArgumentError("--format tar: cannot read stdin; name the files");
  GRANARY_ASSIGN_OR_RETURN(std::vector<std::string> paths, ExpandBraces(src));
  return OpenTarSource(paths.size() == 1 ? "tar " + src : "tar pattern " + src, std::move(paths));
}

}  // namespace granary::cli::pack
