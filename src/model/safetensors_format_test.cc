#include "model/safetensors_format.h"

#include <cstring>
#include <random>
#include <tuple>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/testing/test_util.h"

namespace granary::model {
namespace {

constexpr std::string_view kFile = "models/llama.safetensors";

// Parses `body` as the whole header of a file whose data buffer has `data_bytes` bytes.
Result<SafetensorsHeader> Parse(std::string_view body, uint64_t data_bytes) {
  return ParseHeader(body, body.size(), kSafetensorsLengthBytes + body.size() + data_bytes, kFile);
}

std::span<const std::byte, 8> First8(const std::string& file) {
  return std::span<const std::byte, 8>(reinterpret_cast<const std::byte*>(file.data()), 8);
}

TensorEntry Tensor(std::string name, DType dtype, std::vector<uint64_t> shape, uint64_t begin,
                   uint64_t end) {
  TensorEntry t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.begin = begin;
  t.end = end;
  return t;
}

TEST(SafetensorsDTypeTest, NamesAndBitsMatchTheReference) {
  const std::vector<std::pair<std::string, size_t>> known = {
      {"BOOL", 8},     {"U8", 8},       {"I8", 8},       {"F8_E5M2", 8}, {"F8_E4M3", 8},
      {"F8_E8M0", 8},  {"I16", 16},     {"U16", 16},     {"F16", 16},    {"BF16", 16},
      {"I32", 32},     {"U32", 32},     {"F32", 32},     {"F64", 64},    {"I64", 64},
      {"U64", 64},     {"C64", 64},     {"F4", 4},       {"F6_E2M3", 6}, {"F6_E3M2", 6}};
  for (const auto& [name, bits] : known) {
    GRANARY_ASSERT_OK_AND_ASSIGN(DType dtype, ParseDType(name));
    EXPECT_EQ(DTypeName(dtype), name);
    EXPECT_EQ(DTypeBits(dtype), bits) << name;
  }
  for (std::string_view bad : {"", "f32", "F128", "float32", "F8_E4M3FN", "PackedU4"}) {
    Result<DType> r = ParseDType(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
}

TEST(SafetensorsHeaderTest, EncodesExactlyWhatTheReferenceWriterWrites) {
  // The reference's own doc example: {"test": I32 [2,2] at [0,16]}, 60 bytes of JSON padded to 64.
  const std::vector<TensorEntry> tensors = {Tensor("test", DType::kI32, {2, 2}, 0, 16)};
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string header, EncodeHeader(tensors, {}));
  const std::string json = R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})";
  ASSERT_EQ(json.size(), 60u);
  std::string expected("\x40\0\0\0\0\0\0\0", 8);
  expected += json + "    ";
  EXPECT_EQ(header, expected);

  // Metadata first, tensors by offset whatever the input order, serde_json escaping.
  const std::vector<TensorEntry> two = {Tensor("b", DType::kU8, {3}, 2, 5),
                                        Tensor("a\"\n\x01", DType::kF16, {1}, 0, 2)};
  const std::vector<std::pair<std::string, std::string>> meta = {{"format", "pt"}};
  GRANARY_ASSERT_OK_AND_ASSIGN(header, EncodeHeader(two, meta));
  EXPECT_EQ(header.substr(8),
            R"({"__metadata__":{"format":"pt"},"a\"\n\u0001":{"dtype":"F16","shape":[1],)"
            R"("data_offsets":[0,2]},"b":{"dtype":"U8","shape":[3],"data_offsets":[2,5]}})"
            "     ");  // 155 bytes of JSON + 5 spaces
  EXPECT_EQ(header.size() % 8, 0u);
}

TEST(SafetensorsHeaderTest, LaysOutLikeTheReferenceWriter) {
  // Widest dtype first (the reference's Dtype order, reversed), then name.
  std::vector<TensorEntry> tensors = {Tensor("b", DType::kU8, {3}, 0, 0),
                                      Tensor("a", DType::kU8, {1}, 0, 0),
                                      Tensor("w", DType::kF16, {2, 2}, 0, 0),
                                      Tensor("x", DType::kU64, {}, 0, 0)};
  GRANARY_ASSERT_OK(LayoutTensors(&tensors));
  std::vector<std::tuple<std::string, uint64_t, uint64_t>> got;
  for (const TensorEntry& t : tensors) got.emplace_back(t.name, t.begin, t.end);
  const std::vector<std::tuple<std::string, uint64_t, uint64_t>> want = {
      {"x", 0, 8}, {"w", 8, 16}, {"a", 16, 17}, {"b", 17, 20}};
  EXPECT_EQ(got, want);
  GRANARY_EXPECT_OK(EncodeHeader(tensors, {}));

  std::vector<TensorEntry> odd = {Tensor("f4", DType::kF4, {3}, 0, 0)};
  EXPECT_EQ(LayoutTensors(&odd).code(), StatusCode::kInvalidArgument);
  std::vector<TensorEntry> huge = {Tensor("big", DType::kF32, {1ULL << 62}, 0, 0)};
  EXPECT_EQ(LayoutTensors(&huge).code(), StatusCode::kInvalidArgument);
}

TEST(SafetensorsHeaderTest, RoundTripsTensorsAndMetadata) {
  std::vector<TensorEntry> tensors = {
      Tensor("model.embed.weight", DType::kBF16, {4, 8}, 0, 64),
      Tensor("scalar", DType::kF64, {}, 64, 72),
      Tensor("empty", DType::kF32, {0, 5}, 72, 72),
      Tensor("packed", DType::kF4, {3, 2}, 72, 75),
      Tensor("six", DType::kF6E2M3, {4}, 75, 78),
      Tensor("naïve ✓", DType::kBool, {2}, 78, 80),
      Tensor("mask", DType::kC64, {1}, 80, 88)};
  const std::vector<std::pair<std::string, std::string>> meta = {{"z", "last"}, {"format", "pt"}};
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string encoded, EncodeHeader(tensors, meta));
  std::string file = encoded + std::string(88, '\0');

  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t n, ParseHeaderLength(First8(file), file.size(), kFile));
  EXPECT_EQ(n, encoded.size() - 8);
  EXPECT_EQ(n % 8, 0u);
  GRANARY_ASSERT_OK_AND_ASSIGN(
      SafetensorsHeader h, ParseHeader(std::string_view(file).substr(8, n), n, file.size(), kFile));
  EXPECT_EQ(h.header_bytes, n);
  EXPECT_EQ(h.data_start, 8 + n);
  ASSERT_EQ(h.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    // "empty" and "packed" both begin at 72; (begin, end) order puts the empty one first.
    EXPECT_EQ(h.tensors[i].name, tensors[i].name);
    EXPECT_EQ(h.tensors[i].dtype, tensors[i].dtype);
    EXPECT_EQ(h.tensors[i].shape, tensors[i].shape);
    EXPECT_EQ(h.tensors[i].begin, tensors[i].begin);
    EXPECT_EQ(h.tensors[i].end, tensors[i].end);
    EXPECT_EQ(h.tensors[i].file_offset(), 8 + n + tensors[i].begin);
  }
  const std::vector<std::pair<std::string, std::string>> sorted = {{"format", "pt"}, {"z", "last"}};
  EXPECT_EQ(h.metadata, sorted);

  // No tensors at all is a valid (empty) file.
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string empty, EncodeHeader({}, {}));
  EXPECT_EQ(empty.substr(8), "{}      ");
  GRANARY_ASSERT_OK(Parse(empty.substr(8), 0));
}

TEST(SafetensorsHeaderTest, AcceptsWhatTheReferenceAccepts) {
  const std::string nested = std::string(125, '[') + std::string(125, ']');
  const std::vector<std::string> kAccepted = {
      // 127 nested containers: serde_json's recursion limit is 128.
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":)" + nested + "}}",
      // Unknown fields inside an entry are ignored (serde default).
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"future":{"x":[1]}}})",
      // Leading whitespace and newlines (the reference does not require '{' first).
      "\n {\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}\t\r\n   ",
      // null metadata is Option::None.
      R"({"__metadata__":null,"a":{"dtype":"U8","shape":[2],"data_offsets":[0, 2]}})",
      // Floats in unknown fields are fine while finite.
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":1.5e300}})",
      // Entries in any order; metadata anywhere.
      R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"__metadata__":{},)"
      R"("a":{"data_offsets":[0,1],"shape":[1],"dtype":"U8"}})",
  };
  for (const std::string& body : kAccepted) GRANARY_EXPECT_OK(Parse(body, 2)) << body;
}

TEST(SafetensorsHeaderTest, RejectsBadLengths) {
  auto length = [](uint64_t n, uint64_t file_size) {
    std::string first(8, '\0');
    std::memcpy(first.data(), &n, 8);
    return ParseHeaderLength(First8(first), file_size, kFile);
  };
  GRANARY_EXPECT_OK(length(kMaxSafetensorsHeaderBytes, 8 + kMaxSafetensorsHeaderBytes));
  GRANARY_EXPECT_OK(length(16, 24));
  for (auto [n, size] : std::vector<std::pair<uint64_t, uint64_t>>{
           {0, 100}, {kMaxSafetensorsHeaderBytes + 1, UINT64_MAX}, {17, 24}, {UINT64_MAX, 7},
           {UINT64_MAX, UINT64_MAX}, {UINT64_MAX - 7, UINT64_MAX}, {8, 4}}) {
    Result<uint64_t> r = length(n, size);
    ASSERT_FALSE(r.ok()) << n << " " << size;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(kFile), std::string::npos) << r.status().message();
  }
  // ParseHeader re-checks, so a caller skipping ParseHeaderLength is still safe.
  EXPECT_EQ(ParseHeader("{}", 2, 9, kFile).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseHeader("{}", 3, 100, kFile).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseHeader("", 0, 100, kFile).status().code(), StatusCode::kDataLoss);
}

struct BadCase {
  std::string body;
  uint64_t data_bytes;
  StatusCode code;
  std::string tensor;  // must appear in the message ("" when no tensor is involved)
  std::string reason;  // a fragment of the message
};

TEST(SafetensorsHeaderTest, EveryViolationIsNamed) {
  const std::string u8x2 = R"({"dtype":"U8","shape":[2],"data_offsets":[0,2]})";
  const std::vector<BadCase> cases = {
      {"", 0, StatusCode::kDataLoss, "", "header length 0"},
      {std::string("{\"a\":\0", 6), 0, StatusCode::kDataLoss, "", "NUL byte at 5"},
      {std::string(200, '[') + std::string(200, ']'), 0, StatusCode::kDataLoss, "", "JSON"},
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":)" + std::string(126, '[') +
           std::string(126, ']') + "}}",
       2, StatusCode::kDataLoss, "", "nested deeper than 127"},
      {"\xEF\xBB\xBF{}", 0, StatusCode::kDataLoss, "", "byte order mark"},
      // Out of f64's range: serde_json and nlohmann both refuse it.
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"x":-1e400}})", 2,
       StatusCode::kDataLoss, "", "JSON"},
      {"[1,2]", 0, StatusCode::kDataLoss, "", "not a JSON object"},
      {"{\"a\":1", 0, StatusCode::kDataLoss, "", "JSON"},
      {"{} x", 0, StatusCode::kDataLoss, "", "JSON"},
      {std::string("{}\0\0\0", 5), 0, StatusCode::kDataLoss, "", "JSON"},
      {"{\"\xff\":1}", 0, StatusCode::kDataLoss, "", "UTF-8"},
      {R"({"a":[1]})", 2, StatusCode::kDataLoss, "a", "not a JSON object"},
      {R"({"w":{"shape":[2],"data_offsets":[0,2]}})", 2, StatusCode::kDataLoss, "w", "dtype"},
      {R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,2]}})", 2, StatusCode::kDataLoss, "w",
       "dtype"},
      {R"({"w":{"dtype":"F128","shape":[2],"data_offsets":[0,2]}})", 2,
       StatusCode::kInvalidArgument, "w", "unknown dtype \"F128\""},
      {R"({"w":{"dtype":"U8","data_offsets":[0,2]}})", 2, StatusCode::kDataLoss, "w", "shape"},
      {R"({"w":{"dtype":"U8","shape":2,"data_offsets":[0,2]}})", 2, StatusCode::kDataLoss, "w",
       "shape"},
      {R"({"w":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}})", 2, StatusCode::kDataLoss, "w",
       "-2"},
      // serde_json reads "-0" as a float, which is not a usize.
      {R"({"w":{"dtype":"U8","shape":[-0,2],"data_offsets":[0,0]}})", 0, StatusCode::kDataLoss,
       "w", "not a non-negative integer"},
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[-0,2]}})", 2, StatusCode::kDataLoss, "w",
       "data_offsets"},
      {R"({"w":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}})", 2, StatusCode::kDataLoss, "w",
       "shape"},
      {R"({"w":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,2]}})", 2,
       StatusCode::kDataLoss, "w", "shape"},
      {R"({"w":{"dtype":"U8","shape":[2]}})", 2, StatusCode::kDataLoss, "w", "data_offsets"},
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0]}})", 2, StatusCode::kDataLoss, "w",
       "data_offsets"},
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2,4]}})", 4, StatusCode::kDataLoss, "w",
       "data_offsets"},
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[-1,2]}})", 2, StatusCode::kDataLoss, "w",
       "data_offsets"},
      {R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[2,0]}})", 2, StatusCode::kDataLoss, "w",
       "end before"},
      {R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 1, StatusCode::kDataLoss, "w",
       "past the data buffer"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4, StatusCode::kDataLoss, "w",
       "need 8"},
      {R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", 1, StatusCode::kDataLoss, "w",
       "whole number of bytes"},
      {R"({"w":{"dtype":"U64","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0,
       StatusCode::kDataLoss, "w", "overflow"},
      {R"({"w":{"dtype":"U64","shape":[2305843009213693952],"data_offsets":[0,0]}})", 0,
       StatusCode::kDataLoss, "w", "overflow"},
      // Tiling: overlap, gap at the start, gap between, tail after the last tensor.
      {R"({"a":)" + u8x2 + R"(,"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", 3,
       StatusCode::kDataLoss, "b", "overlaps"},
      {R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", 3, StatusCode::kDataLoss, "a",
       "gap"},
      {R"({"a":)" + u8x2 + R"(,"b":{"dtype":"U8","shape":[1],"data_offsets":[3,4]}})", 4,
       StatusCode::kDataLoss, "b", "gap"},
      {R"({"a":)" + u8x2 + "}", 5, StatusCode::kDataLoss, "a", "cover 2 bytes"},
      // Names.
      {R"({"a":)" + u8x2 + R"(,"a":)" + u8x2 + "}", 2, StatusCode::kDataLoss, "a", "twice"},
      {R"({"w":{"dtype":"U8","dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 2,
       StatusCode::kDataLoss, "w", "\"dtype\" appears twice"},
      {R"({"":)" + u8x2 + "}", 2, StatusCode::kDataLoss, "", "empty tensor name"},
      // Metadata.
      {R"({"__metadata__":{"k":1}})", 0, StatusCode::kDataLoss, "k", "not a string"},
      {R"({"__metadata__":["k"]})", 0, StatusCode::kDataLoss, "", "__metadata__"},
  };
  for (const BadCase& c : cases) {
    Result<SafetensorsHeader> r = Parse(c.body, c.data_bytes);
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), c.code) << c.body << " -> " << r.status().message();
    const std::string& m = r.status().message();
    EXPECT_NE(m.find(kFile), std::string::npos) << m;
    if (!c.tensor.empty()) {
      EXPECT_NE(m.find("\"" + c.tensor + "\""), std::string::npos) << m;
    }
    EXPECT_NE(m.find(c.reason), std::string::npos) << c.body << " -> " << m;
  }
}

TEST(SafetensorsHeaderTest, EncoderRejectsWhatCannotBeRead) {
  using Meta = std::vector<std::pair<std::string, std::string>>;
  auto code = [](std::vector<TensorEntry> t, Meta m = {}) {
    return EncodeHeader(t, m).status().code();
  };
  EXPECT_EQ(code({Tensor("a", DType::kU8, {2}, 0, 2), Tensor("b", DType::kU8, {2}, 3, 5)}),
            StatusCode::kInvalidArgument);  // gap
  EXPECT_EQ(code({Tensor("a", DType::kU8, {2}, 0, 3)}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({Tensor("a", DType::kU8, {2}, 0, 2), Tensor("a", DType::kU8, {2}, 2, 4)}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({Tensor("bad\xff", DType::kU8, {2}, 0, 2)}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({Tensor("__metadata__", DType::kU8, {2}, 0, 2)}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({}, Meta{{"k", "1"}, {"k", "2"}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({}, Meta{{"k", "\xc3"}}), StatusCode::kInvalidArgument);
  Result<std::string> r = EncodeHeader(std::vector{Tensor("layer.0", DType::kF32, {2}, 0, 4)}, {});
  EXPECT_NE(r.status().message().find("\"layer.0\""), std::string::npos) << r.status().message();
}

// Random damage to a valid file never crashes (run under ASan) and never yields a header whose
// tensors fall outside the file.
TEST(SafetensorsHeaderTest, RandomByteFlipsNeverCrash) {
  std::vector<TensorEntry> tensors;
  uint64_t offset = 0;
  for (int i = 0; i < 12; ++i) {
    const uint64_t bytes = 4 * (i + 1);
    tensors.push_back(Tensor("layers." + std::to_string(i) + ".w", DType::kF32, {uint64_t(i + 1)},
                             offset, offset + bytes));
    offset += bytes;
  }
  const std::vector<std::pair<std::string, std::string>> meta = {{"format", "pt"}};
  GRANARY_ASSERT_OK_AND_ASSIGN(std::string encoded, EncodeHeader(tensors, meta));
  const std::string file = encoded + std::string(offset, '\0');

  std::mt19937_64 rng(12345);
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string bad = file;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      // Mostly damage the length and JSON, where the parser lives.
      const size_t pos = rng() % encoded.size();
      // A third bit flips, a third JSON punctuation and digits (to reach deeper parser paths),
      // a third any byte.
      constexpr std::string_view kJsonBytes = "{}[],:\"-0123456789e. \\u";
      switch (rng() % 3) {
        case 0: bad[pos] = static_cast<char>(bad[pos] ^ (1 << (rng() % 8))); break;
        case 1: bad[pos] = kJsonBytes[rng() % kJsonBytes.size()]; break;
        default: bad[pos] = static_cast<char>(rng()); break;
      }
    }
    Result<uint64_t> n = ParseHeaderLength(First8(bad), bad.size(), kFile);
    if (!n.ok()) continue;
    Result<SafetensorsHeader> h =
        ParseHeader(std::string_view(bad).substr(8, *n), *n, bad.size(), kFile);
    if (!h.ok()) {
      EXPECT_NE(h.status().message().find(kFile), std::string::npos);
      continue;
    }
    ++accepted;
    uint64_t next = h->data_start;
    for (const TensorEntry& t : h->tensors) {
      EXPECT_EQ(t.file_offset(), next);
      EXPECT_LE(t.begin, t.end);
      next = t.file_end();
    }
    EXPECT_EQ(next, bad.size());
  }
  EXPECT_LT(accepted, 20000);  // the damage was noticed at least sometimes
}

}  // namespace
}  // namespace granary::model
