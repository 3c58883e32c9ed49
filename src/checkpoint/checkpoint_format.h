// Constants of the checkpoint format; docs/formats/checkpoint.md is the spec. One comment per
// field. Changing any value here changes the on-disk format and needs a new kFormatVersion.
#ifndef GRANARY_CHECKPOINT_CHECKPOINT_FORMAT_H_
#define GRANARY_CHECKPOINT_CHECKPOINT_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace granary::checkpoint {

// ---- Object keys, relative to the checkpoint root prefix ("runs/exp1" or "") ----
// Step directory: "step-" + step as 12 zero-padded decimal digits ("step-000000000100"), so
// keys sort by step. Steps above 999999999999 are rejected.
inline constexpr std::string_view kStepPrefix = "step-";
inline constexpr int kStepDigits = 12;
inline constexpr uint64_t kMaxStep = 999'999'999'999ULL;
// Rank part of a file name: "rank-" + rank as 5 zero-padded digits ("rank-00003").
inline constexpr std::string_view kRankPrefix = "rank-";
inline constexpr int kRankDigits = 5;
// Most ranks a checkpoint may have (world_size <= kMaxWorldSize).
inline constexpr uint32_t kMaxWorldSize = 99'999;
// Data file: "<step dir>/rank-RRRRR.data-NNNNN", NNNNN = file index within the rank.
inline constexpr std::string_view kDataInfix = ".data-";
inline constexpr int kDataIndexDigits = 5;
inline constexpr uint32_t kMaxDataFilesPerRank = 99'999;
// Per-rank manifest: "<step dir>/rank-RRRRR.manifest".
inline constexpr std::string_view kManifestSuffix = ".manifest";
// Commit marker: "<step dir>/COMMIT", published last with PutIfAbsent.
inline constexpr std::string_view kCommitName = "COMMIT";
// Optional hint naming the newest committed step: "<root>/latest", written with Put.
inline constexpr std::string_view kLatestName = "latest";

// ---- Envelope shared by manifest, COMMIT and latest objects ----
//   [0, 8)          magic (8 ASCII bytes, differs per object kind)
//   [8, 12)         format version, u32 little-endian
//   [12, 20)        body length in bytes, u64 little-endian; must equal object size - 24
//   [20, 20+n)      body: UTF-8 JSON object
//   [20+n, 24+n)    crc32c of bytes [0, 20+n), u32 little-endian
inline constexpr std::string_view kManifestMagic = "GRNCKMAN";
inline constexpr std::string_view kCommitMagic = "GRNCKCMT";
inline constexpr std::string_view kLatestMagic = "GRNCKLST";
inline constexpr size_t kMagicBytes = 8;
inline constexpr size_t kEnvelopeHeaderBytes = 20;
inline constexpr size_t kEnvelopeTrailerBytes = 4;
// The only format version this build writes and reads.
inline constexpr uint32_t kFormatVersion = 1;
// Largest body a reader accepts (a manifest of ~1M tensors); guards allocations on garbage.
inline constexpr uint64_t kMaxBodyBytes = 1ULL << 30;

// ---- Data file layout ----
// Tensors of at least kAlignThresholdBytes start at a multiple of kLargeAlignBytes within their
// data file, so O_DIRECT restores can read straight into aligned destination memory.
inline constexpr uint64_t kLargeAlignBytes = 4096;
// Default size from which a tensor counts as large (writer option; readers do not depend on it).
inline constexpr uint64_t kDefaultAlignThresholdBytes = 64 * 1024;
// Smaller tensors are packed at multiples of kSmallAlignBytes (every dtype's natural alignment).
inline constexpr uint64_t kSmallAlignBytes = 64;
// Padding between tensors is zero bytes and covered by no checksum.
// Checksum chunk: every tensor's bytes are split into chunks of `chunk_bytes` (the last one
// shorter), each with its own crc32c. Readers accept 1 <= chunk_bytes <= kMaxChunkBytes.
inline constexpr uint64_t kMaxChunkBytes = 4ULL << 20;
// What the writer uses.
inline constexpr uint64_t kDefaultChunkBytes = 4ULL << 20;
// A data file is closed and the next one begun once it holds at least this many bytes (writer
// option). Tensors never span data files.
inline constexpr uint64_t kDefaultDataFileBytes = 1ULL << 30;

}  // namespace granary::checkpoint

#endif  // GRANARY_CHECKPOINT_CHECKPOINT_FORMAT_H_
