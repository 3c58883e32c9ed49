#include "dataset/loader_batches.h"

#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace granary::dataset {
namespace {

// Key, field names and field bytes of one sample in one buffer; spans point into it.
class OwnedSample final : public Batch {
 public:
  explicit OwnedSample(const Batch& src, size_t i) : index_(src.index(i)) {
    size_t total = src.key(i).size();
    const size_t n = src.num_fields(i);
    for (size_t j = 0; j < n; ++j) total += src.field_name(i, j).size() + src.field(i, j).size();
    buffer_ = std::make_unique<std::byte[]>(total);
    size_t at = 0;
    auto put = [&](const void* p, size_t len) {
      if (len > 0) std::memcpy(buffer_.get() + at, p, len);
      std::span<const std::byte> s(buffer_.get() + at, len);
      at += len;
      return s;
    };
    std::string_view key = src.key(i);
    std::span<const std::byte> k = put(key.data(), key.size());
    key_ = std::string_view(reinterpret_cast<const char*>(k.data()), k.size());
    fields_.reserve(n);
    for (size_t j = 0; j < n; ++j) {
      std::string_view name = src.field_name(i, j);
      std::span<const std::byte> nm = put(name.data(), name.size());
      std::span<const std::byte> data = src.field(i, j);
      fields_.push_back({std::string_view(reinterpret_cast<const char*>(nm.data()), nm.size()),
                         put(data.data(), data.size())});
    }
    bytes_ = total;
  }

  size_t size() const override { return 1; }
  uint64_t index(size_t) const override { return index_; }
  bool ok(size_t) const override { return true; }
  std::string_view key(size_t) const override { return key_; }
  size_t num_fields(size_t) const override { return fields_.size(); }
  std::string_view field_name(size_t, size_t j) const override { return fields_[j].first; }
  std::span<const std::byte> field(size_t, size_t j) const override { return fields_[j].second; }
  std::optional<std::span<const std::byte>> field(size_t, std::string_view name) const override {
    for (const auto& f : fields_) {
      if (f.first == name) return f.second;
    }
    return std::nullopt;
  }
  uint64_t corrupt_count() const override { return 0; }
  uint64_t bytes() const override { return bytes_; }

 private:
  uint64_t index_;
  std::unique_ptr<std::byte[]> buffer_;
  std::string_view key_;
  std::vector<std::pair<std::string_view, std::span<const std::byte>>> fields_;
  uint64_t bytes_ = 0;
};

class ComposedBatch final : public Batch {
 public:
  // bytes() counts what the samples hold (key and fields), whatever their source.
  explicit ComposedBatch(std::vector<SampleRef> samples) : samples_(std::move(samples)) {
    for (const SampleRef& s : samples_) {
      if (!s.batch->ok(s.i)) {
        ++corrupt_;
        continue;
      }
      bytes_ += s.batch->key(s.i).size();
      for (size_t j = 0; j < s.batch->num_fields(s.i); ++j) bytes_ += s.batch->field(s.i, j).size();
    }
  }

  size_t size() const override { return samples_.size(); }
  uint64_t index(size_t i) const override { return at(i).index(samples_[i].i); }
  bool ok(size_t i) const override { return at(i).ok(samples_[i].i); }
  std::string_view key(size_t i) const override { return at(i).key(samples_[i].i); }
  size_t num_fields(size_t i) const override { return at(i).num_fields(samples_[i].i); }
  std::string_view field_name(size_t i, size_t j) const override {
    return at(i).field_name(samples_[i].i, j);
  }
  std::span<const std::byte> field(size_t i, size_t j) const override {
    return at(i).field(samples_[i].i, j);
  }
  std::optional<std::span<const std::byte>> field(size_t i, std::string_view name) const override {
    return at(i).field(samples_[i].i, name);
  }
  uint64_t corrupt_count() const override { return corrupt_; }
  uint64_t bytes() const override { return bytes_; }

 private:
  const Batch& at(size_t i) const { return *samples_[i].batch; }
  std::vector<SampleRef> samples_;
  uint64_t corrupt_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace

std::shared_ptr<Batch> CopySample(const Batch& source, size_t i) {
  return std::make_shared<OwnedSample>(source, i);
}

std::shared_ptr<Batch> ComposeBatch(std::vector<SampleRef> samples) {
  return std::make_shared<ComposedBatch>(std::move(samples));
}

}  // namespace granary::dataset
