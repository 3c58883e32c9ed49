// SaveSafetensors: the reference writer's layout and header, streamed through an ObjectWriter.
#include <map>

#include "model/safetensors_format.h"
#include "granary/model.h"

namespace granary {

Status SaveSafetensors(ObjectStore& store, std::string_view key,
                       std::span<const TensorToSave> tensors,
                       std::span<const std::pair<std::string, std::string>> metadata) {
  using namespace model;
  std::vector<TensorEntry> entries;
  entries.reserve(tensors.size());
  std::map<std::string_view, std::span<const std::byte>> data;
  for (const TensorToSave& t : tensors) {
    if (!data.emplace(t.name, t.data).second) {
      return InvalidArgumentError("tensor " + t.name + " given twice");
    }
    Result<DType> dtype = ParseDType(t.dtype);
    if (!dtype.ok()) return dtype.status().WithContext("tensor " + t.name);
    TensorEntry e;
    e.name = t.name;
    e.dtype = *dtype;
    e.shape = t.shape;
    entries.push_back(std::move(e));
  }
  GRANARY_RETURN_IF_ERROR(LayoutTensors(&entries));
  for (const TensorEntry& e : entries) {
    const size_t given = data[e.name].size();
    if (given != e.bytes()) {
      return InvalidArgumentError("tensor " + e.name + ": " + std::to_string(given) +
                                  " bytes given, its dtype and shape need " +
                                  std::to_string(e.bytes()));
    }
  }
  GRANARY_ASSIGN_OR_RETURN(std::string header, EncodeHeader(entries, metadata));
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<ObjectWriter> writer, store.NewWriter(key));
  GRANARY_RETURN_IF_ERROR(writer->Append(std::as_bytes(std::span(header))));
  for (const TensorEntry& e : entries) {
    GRANARY_RETURN_IF_ERROR(writer->Append(data[e.name]));
  }
  return writer->Commit();
}

}  // namespace granary
