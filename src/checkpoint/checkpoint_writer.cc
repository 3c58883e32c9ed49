#include "checkpoint/checkpoint_writer.h"

#include <algorithm>

#include "core/checksum.h"

namespace granary::checkpoint {

Status RankWriterOptions::Validate() const {
  if (data_file_bytes < 1) return InvalidArgumentError("RankWriterOptions: data_file_bytes must be >= 1");
  if (chunk_bytes < 1 || chunk_bytes > kMaxChunkBytes) {
    return InvalidArgumentError("RankWriterOptions: chunk_bytes must be in [1, 4 MiB]");
  }
  return writer.Validate();
}

RankWriter::RankWriter(ObjectStore* store, std::string root, const RankWriterOptions& options)
    : store_(store), root_(std::move(root)), options_(options) {}

RankWriter::~RankWriter() {
  if (file_) file_->Abort().IgnoreError();  // unfinished save: leave nothing visible
}

Result<std::unique_ptr<RankWriter>> RankWriter::Create(ObjectStore* store, std::string root,
                                                       uint64_t step, uint32_t rank,
                                                       uint32_t world_size,
                                                       const RankWriterOptions& options) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<RankWriter> w(new RankWriter(store, std::move(root), options));
  w->manifest_.step = step;
  w->manifest_.rank = rank;
  w->manifest_.world_size = world_size;
  w->manifest_.chunk_bytes = options.chunk_bytes;
  GRANARY_RETURN_IF_ERROR(ValidateManifest(w->manifest_, "RankWriter"));
  return w;
}

Status RankWriter::Fail(Status s) {
  if (status_.ok()) status_ = s;
  if (file_) file_->Abort().IgnoreError();  // already failing; the first error is what matters
  file_.reset();
  return status_;
}

Status RankWriter::OpenNextFile() {
  if (file_) {
    Status s = file_->Commit();
    if (!s.ok()) return Fail(s.WithContext("data file " + JoinKey(root_, file_key_)));
    file_.reset();
  }
  if (next_file_index_ > kMaxDataFilesPerRank) return Fail(ResourceExhaustedError("too many data files"));
  file_key_ = DataKey(manifest_.step, manifest_.rank, next_file_index_++);
  Result<std::unique_ptr<ObjectWriter>> w = store_->NewWriter(JoinKey(root_, file_key_), options_.writer);
  if (!w.ok()) return Fail(w.status().WithContext("data file " + JoinKey(root_, file_key_)));
  file_ = std::move(w).value();
  return Status::OK();
}

Status RankWriter::Pad(uint64_t alignment) {
  static const std::byte kZeros[kLargeAlignBytes] = {};
  const uint64_t pad = (alignment - file_->bytes_appended() % alignment) % alignment;
  Status s = file_->Append(std::span(kZeros, pad));
  return s.ok() ? s : Fail(s.WithContext("data file " + JoinKey(root_, file_key_)));
}

Status RankWriter::BeginTensor(const TensorData& t, uint64_t length) {
  GRANARY_RETURN_IF_ERROR(status_);
  if (finished_) return FailedPreconditionError("RankWriter: BeginTensor after Finish");
  if (open_tensor_) return FailedPreconditionError("RankWriter: tensor \"" + open_tensor_->name + "\" not ended");
  TensorEntry e;
  e.name = t.name;
  e.dtype = t.dtype;
  e.shape = t.shape;
  e.global_shape = t.global_shape;
  e.global_offset = t.global_offset;
  e.length = length;
  if (names_.contains(t.name)) return InvalidArgumentError("tensor \"" + t.name + "\" added twice");
  // Validate the entry (shape vs length, dtype, name) before touching the data file.
  e.chunk_crc32c.resize((e.length + options_.chunk_bytes - 1) / options_.chunk_bytes);
  RankManifest probe;
  probe.step = manifest_.step;
  probe.rank = manifest_.rank;
  probe.world_size = manifest_.world_size;
  probe.chunk_bytes = manifest_.chunk_bytes;
  probe.tensors.push_back(e);
  probe.tensors.back().key = DataKey(manifest_.step, manifest_.rank, 0);
  GRANARY_RETURN_IF_ERROR(ValidateManifest(probe, "RankWriter"));
  if (!file_ || file_->bytes_appended() >= options_.data_file_bytes) {
    GRANARY_RETURN_IF_ERROR(OpenNextFile());
  }
  const bool large = e.length >= options_.align_threshold_bytes;
  if (e.length > 0) GRANARY_RETURN_IF_ERROR(Pad(large ? kLargeAlignBytes : kSmallAlignBytes));
  e.key = file_key_;
  e.offset = file_->bytes_appended();
  open_tensor_ = std::move(e);
  open_appended_ = 0;
  return Status::OK();
}

Status RankWriter::AppendBorrowed(std::span<const std::byte> piece, std::function<void()> release) {
  if (!status_.ok() || !open_tensor_) {
    if (release) release();
    GRANARY_RETURN_IF_ERROR(status_);
    return FailedPreconditionError("RankWriter: AppendBorrowed outside BeginTensor/EndTensor");
  }
  if (open_appended_ + piece.size() > open_tensor_->length) {
    if (release) release();
    return Fail(InvalidArgumentError("tensor \"" + open_tensor_->name + "\": more bytes than its shape holds"));
  }
  open_appended_ += piece.size();
  // An empty release means "copy now": Add's bytes are only valid during the call.
  Status s = release ? file_->AppendBorrowed(piece, std::move(release)) : file_->Append(piece);
  if (!s.ok()) {
    return Fail(s.WithContext("tensor \"" + open_tensor_->name + "\" in data file " + JoinKey(root_, file_key_)));
  }
  return Status::OK();
}

Status RankWriter::EndTensor(std::vector<uint32_t> chunk_crc32c, Hash128 xxh3) {
  GRANARY_RETURN_IF_ERROR(status_);
  if (!open_tensor_) return FailedPreconditionError("RankWriter: EndTensor without BeginTensor");
  TensorEntry e = std::move(*open_tensor_);
  open_tensor_.reset();
  if (open_appended_ != e.length || chunk_crc32c.size() != e.chunk_crc32c.size()) {
    return Fail(InvalidArgumentError("tensor \"" + e.name + "\": " + std::to_string(open_appended_) +
                                     " bytes or checksums staged, shape needs " + std::to_string(e.length)));
  }
  e.chunk_crc32c = std::move(chunk_crc32c);
  e.xxh3 = xxh3;
  names_.insert(e.name);
  manifest_.tensors.push_back(std::move(e));
  return Status::OK();
}

Status RankWriter::Add(const TensorData& t) {
  GRANARY_RETURN_IF_ERROR(BeginTensor(t, t.bytes.size()));
  std::vector<uint32_t> crcs;
  Xxh3_128Hasher hasher;
  for (uint64_t pos = 0; pos < t.bytes.size(); pos += options_.chunk_bytes) {
    std::span<const std::byte> chunk =
        t.bytes.subspan(pos, std::min<uint64_t>(options_.chunk_bytes, t.bytes.size() - pos));
    crcs.push_back(Crc32c(chunk.data(), chunk.size()));
    hasher.Update(chunk.data(), chunk.size());
    GRANARY_RETURN_IF_ERROR(AppendBorrowed(chunk, nullptr));  // copied, see AppendBorrowed
  }
  return EndTensor(std::move(crcs), hasher.Digest());
}

Status RankWriter::AddExisting(const TensorEntry& entry) {
  GRANARY_RETURN_IF_ERROR(status_);
  if (finished_) return FailedPreconditionError("RankWriter: AddExisting after Finish");
  if (names_.contains(entry.name)) return InvalidArgumentError("tensor \"" + entry.name + "\" added twice");
  RankManifest probe = manifest_;
  probe.tensors = {entry};
  GRANARY_RETURN_IF_ERROR(ValidateManifest(probe, "RankWriter"));
  names_.insert(entry.name);
  manifest_.tensors.push_back(entry);
  return Status::OK();
}

Status RankWriter::SetUserMetadata(std::string json_object) {
  RankManifest probe = manifest_;
  probe.tensors.clear();
  probe.user_metadata_json = json_object;
  GRANARY_RETURN_IF_ERROR(ValidateManifest(probe, "RankWriter user metadata"));
  manifest_.user_metadata_json = std::move(json_object);
  return Status::OK();
}

Result<RankManifest> RankWriter::Finish() {
  GRANARY_RETURN_IF_ERROR(status_);
  if (finished_) return FailedPreconditionError("RankWriter: Finish called twice");
  if (file_) {
    Status s = file_->Commit();
    if (!s.ok()) return Fail(s.WithContext("data file " + JoinKey(root_, file_key_)));
    file_.reset();
  }
  finished_ = true;
  return manifest_;
}

Result<ManifestRef> WriteManifest(ObjectStore& store, std::string_view root,
                                  const RankManifest& manifest) {
  GRANARY_ASSIGN_OR_RETURN(std::string bytes, EncodeManifest(manifest));
  ManifestRef ref;
  ref.rank = manifest.rank;
  ref.key = ManifestKey(manifest.step, manifest.rank);
  ref.length = bytes.size();
  ref.crc32c = Crc32c(bytes);
  GRANARY_RETURN_IF_ERROR(store.Put(JoinKey(root, ref.key), bytes));
  return ref;
}

Status PublishCommit(ObjectStore& store, std::string_view root, uint64_t step,
                     uint32_t world_size, std::vector<ManifestRef> refs) {
  std::sort(refs.begin(), refs.end(),
            [](const ManifestRef& a, const ManifestRef& b) { return a.rank < b.rank; });
  CommitRecord record{step, world_size, std::move(refs)};
  GRANARY_ASSIGN_OR_RETURN(std::string bytes, EncodeCommit(record));
  const std::string key = JoinKey(root, CommitKey(step));
  Status s = store.PutIfAbsent(key, bytes);
  if (s.code() == StatusCode::kAlreadyExists) {
    return AlreadyExistsError("step " + std::to_string(step) + " is already committed (" + key + ")");
  }
  return s;
}

Result<CommitRecord> CommitStep(ObjectStore& store, std::string_view root,
                                std::span<const RankManifest> manifests) {
  if (manifests.empty()) return InvalidArgumentError("CommitStep: no manifests");
  CommitRecord record{manifests[0].step, manifests[0].world_size, {}};
  for (const RankManifest& m : manifests) {
    if (m.step != record.step || m.world_size != record.world_size) {
      return InvalidArgumentError("CommitStep: manifests of different steps or world sizes");
    }
    GRANARY_ASSIGN_OR_RETURN(ManifestRef ref, WriteManifest(store, root, m));
    record.manifests.push_back(std::move(ref));
  }
  GRANARY_RETURN_IF_ERROR(PublishCommit(store, root, record.step, record.world_size, record.manifests));
  std::sort(record.manifests.begin(), record.manifests.end(),
            [](const ManifestRef& a, const ManifestRef& b) { return a.rank < b.rank; });
  return record;
}

Status WriteLatest(ObjectStore& store, std::string_view root, uint64_t step) {
  return store.Put(JoinKey(root, kLatestName), EncodeLatest(step));
}

}  // namespace granary::checkpoint
