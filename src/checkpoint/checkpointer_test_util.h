// Test-only helpers for Checkpointer tests: tensors with recognizable bytes, a whole save in one
// call, and a bit-exact load check. Never include from library code.
#ifndef GRANARY_CHECKPOINT_CHECKPOINTER_TEST_UTIL_H_
#define GRANARY_CHECKPOINT_CHECKPOINTER_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_test_util.h"  // FlipByte, Keys, Contains
#include "granary/checkpoint.h"

namespace granary::checkpoint::testing {

struct TestTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<std::byte> bytes;
};

// Fills `out` with bytes that depend on (seed, position) (splitmix64; fast enough for 100s of MiB).
inline void FillBytes(uint64_t seed, std::span<std::byte> out) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  size_t i = 0;
  while (i < out.size()) {
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const size_t n = std::min<size_t>(8, out.size() - i);
    std::memcpy(out.data() + i, &z, n);
    i += n;
  }
}

// A tensor of `dtype` and `shape` whose bytes depend on `seed`.
inline TestTensor MakeTensor(std::string name, std::string dtype, std::vector<uint64_t> shape,
                             uint64_t seed) {
  uint64_t n = *DtypeElementBytes(dtype);
  for (uint64_t d : shape) n *= d;
  TestTensor t{std::move(name), std::move(dtype), std::move(shape), std::vector<std::byte>(n)};
  FillBytes(seed, t.bytes);
  return t;
}

inline std::vector<TensorSpec> SpecsOf(const std::vector<TestTensor>& tensors) {
  std::vector<TensorSpec> specs;
  for (const TestTensor& t : tensors) specs.push_back(TensorSpec{t.name, t.dtype, t.shape, {}, {}});
  return specs;
}

// BeginSave + CopyIn of every tensor + Finish. Does not wait for durability.
inline Result<std::shared_ptr<SaveHandle>> Save(Checkpointer& ckpt, uint64_t step,
                                                const std::vector<TestTensor>& tensors,
                                                std::string metadata = "{}",
                                                std::string save_id = "") {
  GRANARY_ASSIGN_OR_RETURN(std::unique_ptr<SaveSession> session,
                           ckpt.BeginSave(step, SpecsOf(tensors), std::move(metadata),
                                          std::move(save_id)));
  if (!session->skipped()) {
    for (size_t i = 0; i < tensors.size(); ++i) {
      GRANARY_RETURN_IF_ERROR(session->CopyIn(i, tensors[i].bytes));
    }
  }
  return session->Finish();
}

// Save and Wait.
inline Status SaveAndWait(Checkpointer& ckpt, uint64_t step, const std::vector<TestTensor>& tensors,
                          std::string metadata = "{}") {
  GRANARY_ASSIGN_OR_RETURN(std::shared_ptr<SaveHandle> handle,
                           Save(ckpt, step, tensors, std::move(metadata)));
  return handle->Wait();
}

// Loads every tensor of `step` into fresh buffers and compares them with `tensors` bit-exactly.
inline ::testing::AssertionResult LoadsExactly(Checkpointer& ckpt, uint64_t step,
                                               const std::vector<TestTensor>& tensors) {
  std::vector<std::vector<std::byte>> bufs;
  std::vector<LoadTarget> targets;
  bufs.reserve(tensors.size());
  for (const TestTensor& t : tensors) {
    // Poison the destination so an unwritten buffer cannot pass by accident.
    bufs.emplace_back(t.bytes.size(), std::byte{0xA5});
    targets.push_back(LoadTarget{t.name, bufs.back()});
  }
  Status s = ckpt.Load(step, targets);
  if (!s.ok()) return ::testing::AssertionFailure() << "Load(" << step << "): " << s.ToString();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (bufs[i] != tensors[i].bytes) {
      return ::testing::AssertionFailure() << "step " << step << ": tensor " << tensors[i].name
                                           << " loaded different bytes";
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace granary::checkpoint::testing

#endif  // GRANARY_CHECKPOINT_CHECKPOINTER_TEST_UTIL_H_
