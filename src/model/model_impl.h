// Internal: the Model behind granary/model.h, shared by model_open.cc (sources, headers, index)
// and model_stream.cc (the read planner and its TensorStream).
#ifndef GRANARY_MODEL_MODEL_IMPL_H_
#define GRANARY_MODEL_MODEL_IMPL_H_

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "granary/io.h"
#include "granary/model.h"
#include "granary/store.h"
#include "model/safetensors_format.h"

namespace granary::model {

// Where one file's bytes come from. A file of a LocalStore has descriptors (buffered, and
// O_DIRECT when the file system supports it); any other store is read with ranged Gets.
struct FileSource {
  std::shared_ptr<ObjectStore> store;
  std::string key;
  std::string name;  // for messages: the path or URL of the file
  File buffered;     // not open for stores without local files
  File direct;       // not open when O_DIRECT is unavailable
};

class ModelImpl final : public Model {
 public:
  ModelImpl(std::vector<ModelFile> files, std::vector<FileSource> sources,
            std::vector<ModelTensor> tensors, std::vector<DType> dtypes,
            std::string index_metadata);

  const std::vector<ModelFile>& files() const override { return files_; }
  const std::vector<ModelTensor>& tensors() const override { return tensors_; }
  std::optional<size_t> Find(std::string_view name) const override;
  const std::string& index_metadata() const override { return index_metadata_; }
  uint64_t total_bytes() const override { return total_bytes_; }
  Result<std::unique_ptr<TensorStream>> Read(std::vector<size_t> sequence,
                                             const ReadOptions& options) override;

  const FileSource& source(uint32_t file) const { return sources_[file]; }
  DType dtype(size_t tensor) const { return dtypes_[tensor]; }

 private:
  std::vector<ModelFile> files_;
  std::vector<FileSource> sources_;
  std::vector<ModelTensor> tensors_;
  std::vector<DType> dtypes_;
  std::string index_metadata_;
  uint64_t total_bytes_ = 0;
  std::unordered_map<std::string_view, size_t> by_name_;  // views into tensors_[i].name
};

// The TensorStream of ModelImpl::Read (model_stream.cc). `model` must outlive the stream.
Result<std::unique_ptr<TensorStream>> NewTensorStream(const ModelImpl& model,
                                                      std::vector<size_t> sequence,
                                                      const ReadOptions& options);

// Element alignment a tensor of `dtype` needs in memory (1 for sub-byte types, at most 8).
size_t DTypeAlignment(DType dtype);

}  // namespace granary::model

#endif  // GRANARY_MODEL_MODEL_IMPL_H_
