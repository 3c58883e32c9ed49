// granary/model.h: loading and saving model weights stored as Hugging Face safetensors files,
// unconverted, at the storage device's speed whether the files are cold or in the page cache.
//
// A Model is opened from one or more sources: a `.safetensors` file, a directory (its
// `*.safetensors.index.json` when there is exactly one, `model.safetensors.index.json` when there
// are several (InvalidArgument if none of them is), every `*.safetensors` file in it when there is
// no index), a sharded model's index JSON, or a store URL naming any of these. Open reads and validates every
// file's header (see docs/formats/safetensors.md) before any large allocation; a violation is a
// DataLoss naming the file and the tensor.
//
// Reading: Read(sequence) returns a TensorStream that yields the requested tensors in the given
// order, each as soon as its bytes are in memory. Behind it one planner covers all files: the
// tensors are cut into segments of neighbouring tensors of one file, each segment gets its own
// memory that mirrors the file's layout (so a tensor sits at an address congruent to its file
// offset modulo 4 KiB), and segments are read in requests of up to `request_bytes` with
// `io_threads` in flight. Per request, cachestat(2) tells whether the range is in the page cache:
// resident ranges are copied with buffered reads, cold ones read with O_DIRECT straight into the
// tensors' memory. Tensors whose offset is not a multiple of their element size (the format does
// not pad, so one odd-length tensor misaligns everything after it) get their own aligned memory
// and are read through pooled staging blocks, then copied. mmap is not used unless
// ReadOptions::map_resident asks for it.
//
// Memory: a tensor's bytes live in its segment's memory, kept alive by LoadedTensor::owner; a
// segment is freed when every tensor handed out from it is gone. A stream allocates a segment
// only while the segments it has read but not yet handed out fit in `window_bytes` (a segment
// larger than the window is read alone), so a consumer that converts or moves each tensor and
// drops it holds at most the window plus its own results.
//
// Saving: SaveSafetensors writes one file byte-for-byte as the reference writer would lay out
// the same tensors, through an ObjectStore writer (atomic: a crash leaves the previous object or
// nothing).
//
// Thread-safety: a Model is immutable after Open and may be shared; each TensorStream is used by
// one thread at a time. A Model must outlive the streams it returned (they read its files).
#ifndef GRANARY_MODEL_H_
#define GRANARY_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "granary/io.h"
#include "granary/status.h"
#include "granary/store.h"

namespace granary {

// One safetensors file of a model.
struct ModelFile {
  // A local file's path ("/models/x/model-00001-of-00002.safetensors", file:// sources too);
  // otherwise the store URL and key ("mem://m/model.safetensors").
  std::string url;
  uint64_t size_bytes = 0;  // of the whole file
  uint64_t data_start = 0;  // offset of the data buffer (8 + header length)
  // The header's "__metadata__", sorted by key.
  std::vector<std::pair<std::string, std::string>> metadata;
};

// One tensor of a model.
struct ModelTensor {
  std::string name;
  std::string dtype;            // as spelled in the file: "BF16", "F32", "F8_E4M3", ...
  size_t dtype_bits = 0;        // bits per element (4 for F4)
  std::vector<uint64_t> shape;
  uint64_t bytes = 0;
  uint32_t file = 0;            // index into Model::files()
  uint64_t offset = 0;          // absolute offset of the first byte in the file
};

struct ModelOptions {
  // Store options for sources given as URLs or paths (LocalStore O_DIRECT threshold, ...).
  StoreOptions store;
  Status Validate() const { return store.Validate(); }
};

struct ReadOptions {
  // Largest single read. Default: 8 MiB.
  size_t request_bytes = 8u << 20;
  // Reads in flight (one thread each; they mostly wait on the device). Default: 8.
  size_t io_threads = 8;
  // Bytes of segments read ahead of the consumer (see the header comment); 0 = no bound (what a
  // load of the whole model wants). Default: 0.
  uint64_t window_bytes = 0;
  // Largest segment: neighbouring tensors of one file share memory up to this size (a larger
  // tensor is a segment of its own); with a window, at most window_bytes / 4. Default: 64 MiB.
  uint64_t segment_bytes = 64u << 20;
  // Read cold ranges of local files with O_DIRECT. false: buffered reads only. Default: true.
  bool direct_io = true;
  // Map segments that are wholly in the page cache instead of copying them: mmap(MAP_PRIVATE |
  // MAP_POPULATE) of the file range, so warm loads cost no copy and no new memory, and processes
  // loading the same model share one copy. Tensors stay writable (copy on write). Trade-offs:
  // their pages belong to the page cache, so under memory pressure the kernel may drop them and
  // read them back on the next touch (the page faults this loader otherwise never depends on),
  // and a file truncated in place while mapped raises SIGBUS on access (replacing it by rename is
  // safe). Segments holding misaligned tensors, cold segments and non-local stores are read as
  // usual. Default: false.
  bool map_resident = false;
  // The engine for local reads; nullptr = IoEngine::Default(). Must outlive the stream.
  IoEngine* engine = nullptr;
  Status Validate() const;
};

// One tensor handed out by a TensorStream. `data` stays valid while `owner` (or a copy) lives.
struct LoadedTensor {
  size_t index = 0;  // into Model::tensors()
  std::span<std::byte> data;
  std::shared_ptr<void> owner;
};

struct ReadStats {
  uint64_t bytes = 0;            // tensor bytes handed out or read so far
  uint64_t cached_bytes = 0;     // copied from the page cache (buffered reads)
  uint64_t direct_bytes = 0;     // read from the device with O_DIRECT (incl. edge blocks)
  uint64_t staged_bytes = 0;     // cold bytes of misaligned tensors, copied from staging blocks
  uint64_t store_bytes = 0;      // read with ranged Gets from a store without local files
  uint64_t mapped_bytes = 0;     // mapped from the page cache (ReadOptions::map_resident)
  uint64_t requests = 0;
  uint64_t segments = 0;
  uint64_t peak_window_bytes = 0;  // most segment bytes held at once by the stream
};

class TensorStream {
 public:
  // Stops outstanding reads (waits for those already issued) and frees what was not handed out.
  virtual ~TensorStream() = default;
  // The next tensor of the sequence, blocking until its bytes are in memory; nullopt after the
  // last. Errors name the file and the tensor (DataLoss when a file is shorter than its header
  // said, the I/O error otherwise); after an error every later call returns it.
  virtual Result<std::optional<LoadedTensor>> Next() = 0;
  virtual ReadStats stats() const = 0;
};

class Model {
 public:
  // Opens and validates every file of `sources` (see the header comment). NotFound for a missing
  // source or a directory without safetensors files; DataLoss naming the file (and tensor) for a
  // damaged header or index, or an index naming a tensor that its file lacks; InvalidArgument
  // naming both files when two files hold the same tensor name.
  static Result<std::unique_ptr<Model>> Open(std::span<const std::string> sources,
                                             const ModelOptions& options = {});
  virtual ~Model() = default;

  virtual const std::vector<ModelFile>& files() const = 0;
  // Every tensor, in file order: by file, then by offset.
  virtual const std::vector<ModelTensor>& tensors() const = 0;
  // The index of the tensor called `name`, nullopt if there is none.
  virtual std::optional<size_t> Find(std::string_view name) const = 0;
  // The "metadata" object of the index JSON, if the model came with one (e.g. total_size), as
  // compact JSON text; empty otherwise.
  virtual const std::string& index_metadata() const = 0;
  // Sum of the bytes of every tensor.
  virtual uint64_t total_bytes() const = 0;

  // Starts reading the tensors `sequence` lists (indices into tensors(), each at most once),
  // yielded in that order. InvalidArgument for an index out of range or repeated.
  virtual Result<std::unique_ptr<TensorStream>> Read(std::vector<size_t> sequence,
                                                     const ReadOptions& options = {}) = 0;
};

// A tensor to save: `data` holds product(shape) * bits / 8 bytes in row-major order.
struct TensorToSave {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<uint64_t> shape;
  std::span<const std::byte> data;
};

// Writes one safetensors file under `key` of `store`: tensors laid out as the reference writer
// lays them out (widest dtype first, then by name), header byte-identical to its output.
// InvalidArgument naming the tensor for an unknown dtype, a size that disagrees with the shape,
// or a repeated name; the store's error naming the key otherwise. The object appears atomically
// on success and not at all on failure.
Status SaveSafetensors(ObjectStore& store, std::string_view key,
                       std::span<const TensorToSave> tensors,
                       std::span<const std::pair<std::string, std::string>> metadata);

}  // namespace granary

#endif  // GRANARY_MODEL_H_
