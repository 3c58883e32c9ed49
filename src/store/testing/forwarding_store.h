// ForwardingStore: an ObjectStore that passes every call to another store, for tests that watch
// or break one method of a real store (override that method, call the base's). OpenLocalFile is
// not forwarded, so the wrapper always looks like a store without local files. Test-only.
#ifndef GRANARY_STORE_TESTING_FORWARDING_STORE_H_
#define GRANARY_STORE_TESTING_FORWARDING_STORE_H_

#include <memory>
#include <string>
#include <string_view>

#include "granary/store.h"

namespace granary::testing {

class ForwardingStore : public ObjectStore {
 public:
  // `base` must outlive this store.
  explicit ForwardingStore(ObjectStore* base) : base_(base) {}
  // Owns `base`.
  explicit ForwardingStore(std::unique_ptr<ObjectStore> base)
      : base_(base.get()), owned_(std::move(base)) {}

  std::string url() const override { return base_->url(); }
  Result<ObjectInfo> Stat(std::string_view key) override { return base_->Stat(key); }
  Result<size_t> Get(std::string_view key, uint64_t offset, std::span<std::byte> dest) override {
    return base_->Get(key, offset, dest);
  }
  Status GetMany(std::span<ReadOp> ops) override { return base_->GetMany(ops); }
  Status Put(std::string_view key, std::span<const std::byte> data) override {
    return base_->Put(key, data);
  }
  Status PutIfAbsent(std::string_view key, std::span<const std::byte> data) override {
    return base_->PutIfAbsent(key, data);
  }
  Result<std::unique_ptr<ObjectWriter>> NewWriter(std::string_view key,
                                                  const WriterOptions& options) override {
    return base_->NewWriter(key, options);
  }
  Status Delete(std::string_view key) override { return base_->Delete(key); }
  Result<ObjectPage> ListPage(std::string_view prefix, std::string_view start_after,
                              size_t max_objects) override {
    return base_->ListPage(prefix, start_after, max_objects);
  }

 protected:
  ObjectStore* base() const { return base_; }

 private:
  ObjectStore* base_;
  std::unique_ptr<ObjectStore> owned_;
};

}  // namespace granary::testing

#endif  // GRANARY_STORE_TESTING_FORWARDING_STORE_H_
