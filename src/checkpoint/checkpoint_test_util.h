// Test-only helpers for checkpoint tests: write a whole step (optionally incremental, optionally
// uncommitted) with recognizable bytes, and damage objects. Never include from library code.
#ifndef GRANARY_CHECKPOINT_CHECKPOINT_TEST_UTIL_H_
#define GRANARY_CHECKPOINT_CHECKPOINT_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_writer.h"
#include "granary/store.h"
#include "store/testing/test_util.h"

namespace granary::checkpoint::testing {

struct StepSpec {
  uint64_t step = 0;
  uint32_t world_size = 1;
  // Tensors of every rank: name and size in bytes (dtype uint8, shape {bytes}).
  std::vector<std::pair<std::string, size_t>> tensors;
  // Incremental save: tensors named in `reused` are not written again; their entries (and so
  // their data keys) are copied from (*reuse_from)[rank].
  const std::vector<RankManifest>* reuse_from = nullptr;
  std::set<std::string> reused;
  // false: data files and manifests are written but no COMMIT (a crashed save).
  bool commit = true;
  RankWriterOptions options;
};

// The bytes WriteStep stores for tensor `name` of `rank` at `step`.
inline std::string TensorBytes(uint64_t step, uint32_t rank, std::string_view name, size_t size) {
  uint64_t seed = step * 1000003 + rank;
  for (char ch : name) seed = seed * 131 + static_cast<unsigned char>(ch);
  return granary::testing::Payload(seed, size);
}

// Writes every rank of spec.step and (unless !spec.commit) commits it. Returns the manifests.
inline Result<std::vector<RankManifest>> WriteStep(ObjectStore& store, std::string_view root,
                                                   const StepSpec& spec) {
  std::vector<RankManifest> manifests;
  for (uint32_t rank = 0; rank < spec.world_size; ++rank) {
    GRANARY_ASSIGN_OR_RETURN(auto writer, RankWriter::Create(&store, std::string(root), spec.step,
                                                             rank, spec.world_size, spec.options));
    for (const auto& [name, size] : spec.tensors) {
      if (spec.reuse_from != nullptr && spec.reused.count(name) != 0) {
        const RankManifest& prev = (*spec.reuse_from)[rank];
        bool found = false;
        for (const TensorEntry& e : prev.tensors) {
          if (e.name != name) continue;
          GRANARY_RETURN_IF_ERROR(writer->AddExisting(e));
          found = true;
        }
        if (!found) return NotFoundError("no tensor " + name + " to reuse");
        continue;
      }
      const std::string bytes = TensorBytes(spec.step, rank, name, size);
      TensorData t{name, "uint8", {size}, {}, {}, granary::testing::AsBytes(bytes)};
      GRANARY_RETURN_IF_ERROR(writer->Add(t));
    }
    GRANARY_RETURN_IF_ERROR(
        writer->SetUserMetadata("{\"step\": " + std::to_string(spec.step) + "}"));
    GRANARY_ASSIGN_OR_RETURN(RankManifest m, writer->Finish());
    manifests.push_back(std::move(m));
  }
  if (spec.commit) {
    GRANARY_RETURN_IF_ERROR(CommitStep(store, root, manifests).status());
  } else {
    for (const RankManifest& m : manifests) {
      GRANARY_RETURN_IF_ERROR(WriteManifest(store, root, m).status());
    }
  }
  return manifests;
}

// Replaces `key` with its bytes with byte `offset` flipped (all bits).
inline Status FlipByte(ObjectStore& store, std::string_view key, uint64_t offset) {
  GRANARY_ASSIGN_OR_RETURN(std::string bytes, store.GetAll(key));
  if (offset >= bytes.size()) return OutOfRangeError("FlipByte: offset past the end");
  bytes[offset] = static_cast<char>(~bytes[offset]);
  return store.Put(key, bytes);
}

// Replaces `key` with its first `size` bytes.
inline Status Truncate(ObjectStore& store, std::string_view key, uint64_t size) {
  GRANARY_ASSIGN_OR_RETURN(std::string bytes, store.GetAll(key));
  bytes.resize(std::min<uint64_t>(size, bytes.size()));
  return store.Put(key, bytes);
}

// True if `text` contains `part` (for checking that errors name a key or tensor).
inline bool Contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// Every key under `prefix`, sorted.
inline std::vector<std::string> Keys(ObjectStore& store, std::string_view prefix) {
  std::vector<std::string> out;
  Result<std::vector<ObjectInfo>> all = store.List(prefix);
  if (!all.ok()) return {"<list failed: " + all.status().ToString() + ">"};
  for (const ObjectInfo& o : *all) out.push_back(o.key);
  return out;
}

}  // namespace granary::checkpoint::testing

#endif  // GRANARY_CHECKPOINT_CHECKPOINT_TEST_UTIL_H_
