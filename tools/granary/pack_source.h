// Sources of `granary pack`: what turns a directory tree, WebDataset tar shards or a JSONL file
// into an ordered stream of samples, and the ordered parallel read-ahead (ReadAhead) that runs
// their reading work on worker threads while keeping the output order and memory bounded.
//
//   auto source = OpenPackSource("/data/train", {.format = PackFormat::kAuto});
//   ReadAhead reader(**source, /*workers=*/8, /*budget_bytes=*/256 << 20);
//   PackItem item;
//   while (reader.Pop(&item, 100ms) != ReadAhead::Pop::kEnd) { ... }
//
// A source splits its input into tasks (a batch of samples of a directory, one tar file, a block
// of JSONL lines) in output order; each task emits its items in order. An item is a sample or a
// SourceError: a record that could not be read (unreadable file, truncated tar member, bad JSON
// line), named by path and line or member. The order of items never depends on the number of
// workers.
#ifndef GRANARY_TOOLS_GRANARY_PACK_SOURCE_H_
#define GRANARY_TOOLS_GRANARY_PACK_SOURCE_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "granary/status.h"

namespace granary::cli::pack {

struct PackField {
  std::string name;
  std::string data;
};

struct PackSample {
  std::string key;
  std::vector<PackField> fields;
  // Key plus field data bytes (what the read-ahead budget counts).
  uint64_t bytes() const;
};

// A source record that could not be read. `where` names it: "/src/a/0001.jpg",
// "data.jsonl line 13", "shard-0003.tar member 0042.jpg".
struct SourceError {
  std::string where;
  Status status;
};

using PackItem = std::variant<PackSample, SourceError>;

// Receives one task's items, in order. Thread-compatible: one task uses its sink.
class ItemSink {
 public:
  virtual ~ItemSink() = default;
  // Queues `item`; blocks while the task's queued bytes exceed its share of the read-ahead budget
  // (one item always fits). False once the read-ahead is cancelled: the task should return.
  virtual bool Emit(PackItem item) = 0;
};

// One unit of reading work, run on a worker thread.
using PackTask = std::function<void(ItemSink&)>;

// Not thread-safe: ReadAhead calls NextTask from one thread at a time.
class PackSource {
 public:
  virtual ~PackSource() = default;
  // The next task in output order, or an empty function at the end. May read input (the JSONL
  // source reads the next block of lines here); a failure becomes a task emitting the error.
  virtual PackTask NextTask() = 0;
  // Samples and source bytes the source will produce, when known before reading (directories).
  virtual std::optional<uint64_t> total_samples() const { return std::nullopt; }
  virtual std::optional<uint64_t> total_bytes() const { return std::nullopt; }
  // One line for the user: "directory /data/train: 1281167 samples in 1000 class folders".
  virtual std::string Describe() const = 0;
};

enum class PackFormat { kAuto, kDir, kTar, kJsonl };

struct SourceOptions {
  // kAuto: "-" or *.jsonl[.gz|.zst|.xz|.bz2] is JSONL; *.tar[.gz|...], *.tgz, a brace pattern,
  // or a directory holding only tar files (no subdirectories) is tar; any other directory is a
  // tree of sample files. Default: kAuto.
  PackFormat format = PackFormat::kAuto;
  // Directories only: add field "cls" = index of the parent folder's name in the sorted list of
  // distinct parent folder names. Default: false.
  bool label_from_parent = false;
  // Directories only: a directory the scan skips (the destination, when it lies inside SRC).
  // Default: none.
  std::string exclude_dir;
};

// Opens `src` (a path, "-" for stdin, or a brace pattern). NotFound naming `src` if it does not
// exist; InvalidArgument for an option that does not fit the format. Scans directories up front.
Result<std::unique_ptr<PackSource>> OpenPackSource(const std::string& src,
                                                   const SourceOptions& options);

// Per-format factories (OpenPackSource picks one).
Result<std::unique_ptr<PackSource>> OpenDirSource(const std::string& root, bool label_from_parent,
                                                  const std::string& exclude_dir = "");
Result<std::unique_ptr<PackSource>> OpenTarSource(std::string description,
                                                  std::vector<std::string> paths);
Result<std::unique_ptr<PackSource>> OpenJsonlSource(const std::string& path);

// Expands WebDataset brace patterns: "a-{000..002}.tar" -> a-000.tar a-001.tar a-002.tar (the
// width of the first bound is kept), "{x,y}.tar" -> x.tar y.tar; several braces multiply. Text
// without braces is returned as is. InvalidArgument on an unbalanced brace or a range over
// 10 million items.
Result<std::vector<std::string>> ExpandBraces(std::string_view pattern);

// "512M", "1G", "64MiB", "4096", "1.5g": K/M/G/T with or without "i"/"iB" are powers of 1024;
// "KB", "MB", "GB", "TB" are powers of 1000. InvalidArgument otherwise.
Result<uint64_t> ParseByteSize(std::string_view text);

// InvalidArgument naming the key when the sample breaks the dataset format's limits (key 1-65535
// bytes without NUL; field names 1-255 bytes without '/' or NUL, not "__key__", distinct; data
// < 4 GiB; record < 4 GiB). Checked before DatasetWriter::Add, so a bad source record is a
// SourceError instead of a failed write.
Status ValidateSample(const PackSample& sample);

// Runs a source's tasks on `workers` threads and hands their items out in order. At most
// 2 * workers tasks are in flight; each may queue about budget_bytes / (2 * workers) (plus one
// item), so memory stays near budget_bytes plus one sample per task. Pop is for one consumer
// thread; Cancel may be called from any thread.
class ReadAhead {
 public:
  ReadAhead(PackSource& source, unsigned workers, uint64_t budget_bytes);
  ~ReadAhead();  // cancels and joins the workers
  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;

  enum class Pop { kItem, kEnd, kTimeout };
  // The next item in order (kItem), kEnd after the last one, or kTimeout after `timeout`.
  Pop Next(PackItem* out, std::chrono::milliseconds timeout);
  // Stops the workers at their next Emit; queued items are dropped.
  void Cancel();
  // Bytes queued and not yet handed out.
  uint64_t queued_bytes() const;

 private:
  struct Task;
  class Sink;
  void Work();

  PackSource& source_;
  const size_t max_tasks_;
  const uint64_t task_budget_bytes_;
  std::mutex source_mu_;            // serializes source_.NextTask and the push of its task
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::shared_ptr<Task>> tasks_;  // in output order; front is being handed out
  bool source_done_ = false;
  bool cancelled_ = false;
  uint64_t queued_bytes_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace granary::cli::pack

#endif  // GRANARY_TOOLS_GRANARY_PACK_SOURCE_H_
