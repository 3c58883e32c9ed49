// granary/dataset.h: packed training datasets of many small samples, read at device speed in a
// true global shuffle that is known in advance.
//
// A dataset lives under a prefix of any ObjectStore, in the format of docs/formats/dataset.md:
//
//   * Samples are a key plus named fields ({"jpg": bytes, "cls": "3"}), packed as records into
//     immutable shards (default 512 MiB). Every record carries a crc32c, checked when it is read.
//   * The index costs 8 bytes per sample and is memory-mapped where the store is a local
//     directory, so every process on the node shares one copy in the page cache. Opening a
//     dataset reads O(shards) metadata: no listing of samples, no per-sample stat.
//   * A version is published by one create-only manifest put after its shards and index are
//     durable. Appending writes new shards plus a new manifest; readers pinned to an older version
//     are unaffected, and an interrupted write leaves no version behind.
//   * Epoch orders are stateless bijective permutations of [0, N) keyed by (seed, epoch)
//     (EpochOrder), split exactly across ranks and workers, so reads can run ahead of use and a
//     resume position is a handful of integers.
//
//   auto w = DatasetWriter::Create(store, "datasets/imgs");   // or Create(url)
//   w->Add("0001", {{"jpg", jpg_bytes}, {"cls", "3"}});
//   w->Finish();                                              // publishes version 1
//   auto ds = Dataset::Open(store, "datasets/imgs");
//   std::shared_ptr<Batch> b = ds->ReadBatch(indices);       // all reads in flight together
//   b->field(0, "jpg");                                       // span into the batch's memory
//
// Thread safety: Dataset and Loader methods are thread-safe; a DatasetWriter belongs to one
// thread; a Batch is immutable once returned.
#ifndef GRANARY_DATASET_H_
#define GRANARY_DATASET_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "granary/status.h"
#include "granary/store.h"

namespace granary {

// ---------------------------------------------------------------------------------------------
// Writing

// One field of a sample being added.
struct FieldData {
  std::string_view name;              // 1-255 bytes, no '/' or NUL; "__key__" is reserved
  std::span<const std::byte> data;    // at most 4 GiB - 1
  FieldData(std::string_view n, std::span<const std::byte> d) : name(n), data(d) {}
  FieldData(std::string_view n, std::string_view d)
      : name(n), data(std::as_bytes(std::span(d.data(), d.size()))) {}
};

struct DatasetWriterOptions {
  // A shard is closed once it holds at least this many bytes (a single larger sample makes a
  // larger shard). Default: 512 MiB.
  uint64_t shard_bytes = 512ull << 20;
  // What Create does when the prefix already holds a dataset: append a new version that contains
  // every sample of the newest version followed by the new ones (true), or fail with
  // AlreadyExists (false). Default: false.
  bool append = false;
  // Shards written concurrently in the background; memory is about shard_writers * 2 * part
  // size plus 16 bytes per sample for the key table. Default: 2.
  unsigned shard_writers = 2;
  Status Validate() const;
};

// What a finished write produced.
struct DatasetWriteStats {
  uint64_t version = 0;          // the version Finish published
  uint64_t samples_added = 0;    // by this writer
  uint64_t bytes_added = 0;      // record bytes by this writer
  uint64_t shards_added = 0;
  uint64_t duplicate_keys = 0;   // keys this writer added more than once (all are kept)
  uint64_t total_samples = 0;    // in the published version
};

// Packs samples into shards and publishes a new dataset version at Finish. Not thread-safe.
// Destroying a writer without Finish (or the process dying) publishes nothing; its shard objects
// are left as garbage that the next writer of the prefix removes.
class DatasetWriter {
 public:
  static Result<std::unique_ptr<DatasetWriter>> Create(std::shared_ptr<ObjectStore> store,
                                                       std::string_view prefix,
                                                       const DatasetWriterOptions& options = {});
  // The dataset at the root of the store `url` names (OpenStore), prefix "".
  static Result<std::unique_ptr<DatasetWriter>> Create(std::string_view url,
                                                       const DatasetWriterOptions& options = {});
  virtual ~DatasetWriter() = default;

  // Adds one sample. `key` is 1-65535 bytes, no NUL. A sample has 0-65535 fields with distinct
  // names. InvalidArgument naming the key on a bad key or field; errors from background shard
  // writes surface here or at Finish, after which every call returns the same error.
  virtual Status Add(std::string_view key, std::span<const FieldData> fields) = 0;
  Status Add(std::string_view key, std::initializer_list<FieldData> fields) {
    return Add(key, std::span<const FieldData>(fields.begin(), fields.size()));
  }
  // Makes all shards and the index durable, then publishes the version. An empty write (no
  // samples added) publishes nothing and returns FailedPrecondition.
  virtual Result<DatasetWriteStats> Finish() = 0;
  // Samples added so far.
  virtual uint64_t samples_added() const = 0;
  virtual uint64_t bytes_added() const = 0;
};

// ---------------------------------------------------------------------------------------------
// Reading

struct DatasetOptions {
  // Version to open; 0 opens the newest. Default: 0.
  uint64_t version = 0;
  // Check each record's crc32c as it is read. Default: true.
  bool verify = true;
  // A corrupt or truncated record: false fails the read with DataLoss naming shard and sample;
  // true returns the sample as missing (Batch::ok(i) == false) and counts it. Default: false.
  bool skip_corrupt = false;
  // Use O_DIRECT for reads the page cache does not hold (local stores). Resident data is always
  // copied from the page cache. Default: true.
  bool direct_io = true;
  // Native threads a ReadBatch call splits its reads over. Default: 2.
  unsigned read_threads = 2;
  Status Validate() const;
};

// Where one sample's record lives.
struct SampleLocation {
  uint32_t shard = 0;         // position in the version's shard list
  uint64_t offset = 0;        // byte offset of the record in the shard object
  uint64_t length = 0;        // record bytes
};

struct ShardInfo {
  std::string key;            // object key inside the store
  uint64_t first_sample = 0;  // global index of its first sample
  uint64_t num_samples = 0;
  uint64_t size_bytes = 0;    // object size
};

// Samples read together, held in one buffer. Field spans point into it and stay valid while
// the Batch lives (share it with whoever views them).
class Batch {
 public:
  virtual ~Batch() = default;
  virtual size_t size() const = 0;
  virtual uint64_t index(size_t i) const = 0;   // dataset index of the i-th sample
  // False when the sample was corrupt and skipped (DatasetOptions::skip_corrupt); such a sample
  // has no key and no fields.
  virtual bool ok(size_t i) const = 0;
  virtual std::string_view key(size_t i) const = 0;
  virtual size_t num_fields(size_t i) const = 0;
  virtual std::string_view field_name(size_t i, size_t j) const = 0;
  virtual std::span<const std::byte> field(size_t i, size_t j) const = 0;
  // The named field, or nullopt if the sample lacks it.
  virtual std::optional<std::span<const std::byte>> field(size_t i, std::string_view name) const = 0;
  // Samples skipped as corrupt in this batch.
  virtual uint64_t corrupt_count() const = 0;
  // Record bytes held.
  virtual uint64_t bytes() const = 0;
};

// Read statistics since Open (all threads, all batches).
struct DatasetStats {
  uint64_t samples_read = 0;
  uint64_t bytes_read = 0;          // record bytes delivered
  uint64_t device_bytes = 0;        // bytes transferred from storage (incl. alignment padding)
  uint64_t page_cache_hits = 0;     // samples copied from the page cache
  uint64_t corrupt_skipped = 0;
};

// An open, immutable dataset version.
class Dataset {
 public:
  static Result<std::unique_ptr<Dataset>> Open(std::shared_ptr<ObjectStore> store,
                                               std::string_view prefix,
                                               const DatasetOptions& options = {});
  // The dataset at the root of the store `url` names (OpenStore), prefix "".
  static Result<std::unique_ptr<Dataset>> Open(std::string_view url,
                                               const DatasetOptions& options = {});
  virtual ~Dataset() = default;

  virtual uint64_t size() const = 0;
  virtual uint64_t version() const = 0;
  virtual uint64_t total_bytes() const = 0;                         // all record bytes
  virtual const std::vector<std::string>& field_names() const = 0;  // every field ever used
  virtual const std::vector<ShardInfo>& shards() const = 0;
  // Bytes of index memory mapped (or held, for stores without local files).
  virtual uint64_t index_bytes() const = 0;

  // OutOfRange for index >= size(); DataLoss naming the index object if its entries are not
  // monotonic there.
  virtual Result<SampleLocation> Locate(uint64_t index) const = 0;
  // The key of a sample (reads the record header).
  virtual Result<std::string> Key(uint64_t index) = 0;
  // The lowest index whose key equals `key`; NotFound naming the key otherwise.
  virtual Result<uint64_t> IndexOf(std::string_view key) = 0;
  // Reads the samples at `indices` (any order, repeats allowed) with all reads in flight
  // together; the batch keeps the given order. OutOfRange for a bad index before any I/O;
  // DataLoss naming shard and sample on a corrupt record unless skip_corrupt.
  virtual Result<std::shared_ptr<Batch>> ReadBatch(std::span<const uint64_t> indices) = 0;
  // Re-reads every record and the index; DataLoss naming the first damaged object.
  virtual Status Verify() = 0;
  virtual DatasetStats stats() const = 0;
};

// Every published version of the dataset under a prefix, oldest first (NotFound if none).
Result<std::vector<uint64_t>> ListDatasetVersions(ObjectStore& store, std::string_view prefix);

// ---------------------------------------------------------------------------------------------
// Order

// What to do with the samples that do not divide evenly among ranks.
enum class Remainder {
  kPad,     // every rank gets ceil(N / world) samples; the last ranks repeat samples from the
            // start of the epoch's order (as torch's DistributedSampler does)
  kDrop,    // every rank gets floor(N / world); the last N % world of the order are skipped
  kUneven,  // each sample exactly once; the first N % world ranks get one more
};

struct OrderOptions {
  uint64_t seed = 0;
  bool shuffle = true;           // false: index order (still split across ranks)
  uint32_t rank = 0;
  uint32_t world_size = 1;
  Remainder remainder = Remainder::kPad;
  // 0: a global shuffle over all samples. k > 0: shards are grouped into windows of k
  // consecutive shards (in a shuffled shard order); windows are visited in shuffled order and
  // samples are shuffled within their window, so reads cluster in k shards at a time.
  uint32_t locality_shards = 0;
  Status Validate() const;
};

// The order of one rank's samples in an epoch: a stateless function of (seed, epoch), computed
// in O(1) time and memory per position. Thread-safe (immutable).
class EpochOrder {
 public:
  // `shard_first_samples` is needed only for locality_shards > 0: the first index of each shard,
  // ascending, starting at 0.
  static Result<EpochOrder> Create(uint64_t num_samples, uint64_t epoch,
                                   const OrderOptions& options,
                                   std::span<const uint64_t> shard_first_samples = {});
  // Samples this rank reads in the epoch.
  uint64_t size() const { return rank_size_; }
  // The dataset index at position `pos` (< size()) of this rank's sequence.
  uint64_t At(uint64_t pos) const;
  // Where sample `index` falls in the whole epoch (all ranks): the global position, for
  // next-epoch cache priorities. Inverse of the global permutation.
  uint64_t GlobalPosition(uint64_t index) const;
  // The rank reading global position `global_pos`, and that position within its sequence; nullopt
  // if the position is dropped (Remainder::kDrop).
  std::optional<std::pair<uint32_t, uint64_t>> Owner(uint64_t global_pos) const;
  uint64_t num_samples() const { return n_; }
  uint64_t epoch() const { return epoch_; }
  const OrderOptions& options() const { return options_; }

  // Implementation detail (public so tests can check it directly): a keyed bijection of
  // [0, n), a Feistel network over the smallest power of 2 >= n with cycle walking.
  struct Permutation {
    static constexpr int kRounds = 6;
    uint64_t n = 0;               // domain [0, n)
    uint32_t left_bits = 0;       // Feistel halves: floor(b/2) and ceil(b/2) bits, 2^b >= n;
    uint32_t right_bits = 0;      // both 0 for n <= 1 (the identity)
    uint64_t keys[kRounds] = {};  // round keys from (seed, epoch, salt)
    static Permutation Make(uint64_t n, uint64_t seed, uint64_t epoch, uint64_t salt);
    uint64_t Forward(uint64_t x) const;  // x < n
    uint64_t Inverse(uint64_t y) const;  // y < n
  };

 private:
  struct Locality;  // shard windows (epoch_order.cc); shared because it is immutable
  uint64_t GlobalAt(uint64_t order_pos) const;
  uint64_t n_ = 0;
  uint64_t epoch_ = 0;
  uint64_t rank_size_ = 0;
  uint64_t used_ = 0;  // global positions used (n, padded total, or dropped total)
  OrderOptions options_;
  Permutation perm_;                          // global shuffle (locality_shards == 0)
  std::shared_ptr<const Locality> locality_;  // null unless locality_shards > 0 and shuffle
};

// ---------------------------------------------------------------------------------------------
// Loading

struct LoaderOptions {
  uint32_t batch_size = 256;
  OrderOptions order;
  uint64_t epoch = 0;
  // Drop a last batch smaller than batch_size. Default: false.
  bool drop_last_batch = false;
  // Bytes of samples read ahead of the consumer (plus the batch being handed over).
  // Default: 256 MiB.
  uint64_t prefetch_bytes = 256ull << 20;
  // RAM kept for samples this rank needs soonest in the next epoch's order (evicting those
  // needed last); 0: off. Default: 0.
  uint64_t cache_bytes = 0;
  // Threads issuing reads. Default: 2.
  unsigned io_threads = 2;
  // Split of this loader's batches among `num_shares` consumers (DataLoader worker processes):
  // this loader produces batches b with b % num_shares == share. Default: 0 of 1.
  uint32_t share = 0;
  uint32_t num_shares = 1;
  Status Validate() const;
};

// Resume state: the position in this rank's sequence. Independent of worker count and of
// prefetching (counts what the consumer received).
struct LoaderState {
  uint64_t seed = 0;
  uint64_t epoch = 0;
  uint64_t position = 0;      // samples of this rank's epoch sequence consumed
  uint64_t num_samples = 0;   // dataset size, checked on restore
  uint32_t world_size = 1;
  uint32_t rank = 0;
};

struct LoaderStats {
  uint64_t batches = 0;
  uint64_t samples = 0;
  uint64_t bytes = 0;
  uint64_t cache_hits = 0;        // samples served from the next-epoch cache
  uint64_t cache_misses = 0;
  uint64_t cache_bytes = 0;       // currently held
  uint64_t wait_ns = 0;           // time Next() spent waiting for reads
  uint64_t corrupt_skipped = 0;
};

// Reads batches ahead along the known epoch order with native threads. Next() hands them out in
// order; memory in flight stays under prefetch_bytes. Moving to the next epoch keeps the cache.
// Thread-safe, though one consumer is the normal use.
class Loader {
 public:
  static Result<std::unique_ptr<Loader>> Create(std::shared_ptr<Dataset> dataset,
                                                const LoaderOptions& options);
  virtual ~Loader() = default;
  // The next batch of the current epoch, or nullptr at its end (call StartEpoch to go on).
  // Errors of the read (DataLoss, ...) surface here, for the batch they belong to.
  virtual Result<std::shared_ptr<Batch>> Next() = 0;
  // Restarts at `position` of `epoch` (cancelling read-ahead), e.g. for the next epoch.
  virtual Status StartEpoch(uint64_t epoch, uint64_t position = 0) = 0;
  virtual LoaderState state() const = 0;
  // Continues exactly after the last consumed sample of `state`. InvalidArgument if the state
  // belongs to a different dataset size, seed or world size.
  virtual Status Restore(const LoaderState& state) = 0;
  // Batches in the current epoch for this loader (its share).
  virtual uint64_t num_batches() const = 0;
  virtual LoaderStats stats() const = 0;
};

}  // namespace granary

#endif  // GRANARY_DATASET_H_
