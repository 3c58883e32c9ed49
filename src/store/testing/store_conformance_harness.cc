// Conformance harnesses for the LocalStore and MemoryStore drivers.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/testing/test_util.h"
#include "store/local/local_store.h"
#include "store/memory/memory_store.h"
#include "store/testing/store_conformance.h"

namespace granary::testing {
namespace {

class LocalHarness final : public StoreHarness {
 public:
  static Result<std::unique_ptr<StoreHarness>> Make() {
    auto harness = std::make_unique<LocalHarness>();
    GRANARY_ASSIGN_OR_RETURN(harness->store_, NewLocalStore(harness->root(), StoreOptions{}));
    return std::unique_ptr<StoreHarness>(std::move(harness));
  }

  ObjectStore& store() override { return *store_; }

  std::vector<std::string> StrayEntries() override {
    namespace fs = std::filesystem;
    std::vector<std::string> out;
    std::error_code ec;
    // Next to the root: nothing.
    for (const auto& entry : fs::directory_iterator(dir_.path(), ec)) {
      if (entry.path().filename() != "root") out.push_back(entry.path().string());
    }
    // Under .granary: the format file and an empty tmp directory.
    for (const auto& entry : fs::directory_iterator(root() + "/.granary", ec)) {
      std::string name = entry.path().filename().string();
      if (name != "tmp" && name != "format") out.push_back(entry.path().string());
    }
    for (const auto& entry : fs::directory_iterator(root() + "/.granary/tmp", ec)) {
      out.push_back(entry.path().string());
    }
    return out;
  }

 private:
  std::string root() const { return dir_.Join("root"); }

  ScratchDir dir_{"conformance"};
  std::unique_ptr<ObjectStore> store_;
};

class MemoryHarness final : public StoreHarness {
 public:
  ObjectStore& store() override { return *store_; }

 private:
  std::unique_ptr<ObjectStore> store_ = NewMemoryStore();
};

}  // namespace

ConformanceParam LocalStoreConformanceParam() {
  return {"Local", [] { return LocalHarness::Make(); }};
}

ConformanceParam MemoryStoreConformanceParam() {
  return {"Memory", []() -> Result<std::unique_ptr<StoreHarness>> {
            return std::unique_ptr<StoreHarness>(std::make_unique<MemoryHarness>());
          }};
}

}  // namespace granary::testing
