// The header of a Hugging Face safetensors file, parsed, validated and encoded.
//
// Layout: 8 bytes little-endian u64 N (header_bytes), N bytes of UTF-8 JSON (padded with trailing
// spaces), then the data buffer. The JSON maps each tensor name to
// {"dtype": "F32", "shape": [2, 2], "data_offsets": [begin, end]} (offsets into the data buffer,
// end exclusive) and may hold one "__metadata__" object of string -> string.
//
// Acceptance mirrors the reference Rust crate (huggingface/safetensors, tensor.rs read_metadata and
// Metadata::validate): header at most 100'000'000 bytes, the tensors sorted by offsets must tile
// the data buffer exactly (first begins at 0, each begins where the previous ends, the last ends
// at the end of the file), and each tensor's byte size must equal product(shape) * bits / 8.
// Deliberate differences, all stricter on files the reference writer never produces:
//   - duplicate keys (tensor names, or fields inside one tensor) are DataLoss; the reference keeps
//     the last duplicate tensor silently;
//   - an empty tensor name is DataLoss; the reference accepts it;
//   - "dtype" must be a string; serde would also take the enum as {"F32": null}.
// Like the reference, unknown extra fields inside a tensor entry are ignored (forward
// compatibility), "__metadata__": null means no metadata, "-0" is not an integer (serde_json
// reads it as a float) and JSON nested 128 deep is refused (serde_json's recursion limit).
//
// Pure functions; thread-safe.
#ifndef GRANARY_MODEL_SAFETENSORS_FORMAT_H_
#define GRANARY_MODEL_SAFETENSORS_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "granary/status.h"

namespace granary::model {

// Bytes of the little-endian header length that starts every file.
inline constexpr uint64_t kSafetensorsLengthBytes = 8;
// Largest header the reference implementation reads (its MAX_HEADER_SIZE); larger is rejected
// before anything is allocated.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
// The reference writer pads the JSON with spaces so the data buffer starts 8-byte aligned.
inline constexpr uint64_t kSafetensorsHeaderAlignment = 8;
// The reserved top-level key holding free-form string metadata.
inline constexpr std::string_view kSafetensorsMetadataKey = "__metadata__";

// Element types, in the reference crate's declaration order (its writer lays tensors out by
// descending position in this order, i.e. by descending alignment, then by name).
enum class DType {
  kBool,
  kF4,       // float4 e2m1, packed two per byte
  kF6E2M3,   // float6, packed four per three bytes
  kF6E3M2,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kF8E8M0,
  kF8E4M3Fnuz,  // AMD's variants (no infinities, one NaN); placed as safetensors 0.8 places them
  kF8E5M2Fnuz,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kC64,  // complex64: two F32
  kF64,
  kI64,
  kU64,
};

// The dtype spelled as in the file ("F32", "BF16", "F8_E4M3", ...). InvalidArgument naming the
// string for anything else (a dtype added after this build, or garbage).
Result<DType> ParseDType(std::string_view name);
// The spelling of `dtype` in the file.
std::string_view DTypeName(DType dtype);
// Bits per element (4 for F4, 6 for F6_*, 64 for C64, ...).
size_t DTypeBits(DType dtype);

// One tensor of the header.
struct TensorEntry {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<uint64_t> shape;
  // [begin, end) relative to the start of the data buffer.
  uint64_t begin = 0;
  uint64_t end = 0;
  // Absolute offset of the data buffer in the file; set by ParseHeader, ignored by EncodeHeader.
  uint64_t data_start = 0;

  uint64_t bytes() const { return end - begin; }
  // Absolute [file_offset(), file_end()) of this tensor's bytes in the file.
  uint64_t file_offset() const { return data_start + begin; }
  uint64_t file_end() const { return data_start + end; }
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;  // N: the JSON's bytes including padding
  uint64_t data_start = 0;    // 8 + N
  std::vector<TensorEntry> tensors;  // sorted by (begin, end), then name
  std::vector<std::pair<std::string, std::string>> metadata;  // sorted by key
};

// N from the first 8 bytes of `file` (named in errors) of `file_size` bytes. DataLoss when N is 0,
// above kMaxSafetensorsHeaderBytes, or 8 + N exceeds file_size. Call before reading the header so
// a corrupt length never drives an allocation.
Result<uint64_t> ParseHeaderLength(std::span<const std::byte, 8> first8, uint64_t file_size,
                                   std::string_view file);

// Parses and validates the N = `header_bytes` bytes of JSON (`json.size()` must equal N) of
// `file` (named in errors) of `file_size` bytes. DataLoss naming the file and, where there is one,
// the tensor, for: bad length, invalid UTF-8/JSON, a non-object root or entry, missing or mistyped
// fields, negative or non-integer shape/offsets, begin > end, end beyond the data buffer, a size
// that disagrees with shape and dtype (overflow-checked), overlaps, gaps, a buffer not covered to
// its end, duplicate or empty names, non-string metadata values. InvalidArgument for a dtype this
// build does not know (most likely a newer writer rather than damage).
Result<SafetensorsHeader> ParseHeader(std::string_view json, uint64_t header_bytes,
                                      uint64_t file_size, std::string_view file);

// Assigns begin/end to `tensors` as the reference writer lays them out: by descending dtype in
// the enum order above (widest alignment first), then by name bytewise, packed from offset 0.
// Reorders `tensors` into that order. InvalidArgument naming the tensor when its size overflows
// or is not a whole number of bytes.
Status LayoutTensors(std::vector<TensorEntry>* tensors);

// The 8-byte length followed by the JSON header, byte-for-byte what the reference writer emits
// for the same layout: compact JSON, "__metadata__" first (omitted when `metadata` is empty), then
// the tensors by offset with fields in the order dtype, shape, data_offsets; spaces pad the JSON
// to a multiple of 8. The tensors' offsets are the caller's; they must tile [0, data bytes) as
// ParseHeader requires. InvalidArgument (naming the tensor) when the result would not parse, a
// string is not valid UTF-8, a metadata key repeats, or the header exceeds the size limit.
Result<std::string> EncodeHeader(std::span<const TensorEntry> tensors,
                                 std::span<const std::pair<std::string, std::string>> metadata);

}  // namespace granary::model

#endif  // GRANARY_MODEL_SAFETENSORS_FORMAT_H_
