// Model::Open and Model::Read: every source form, the cold (O_DIRECT), warm (page cache) and
// staged (misaligned) paths, windows, and every error naming its file and tensor.
#include "granary/model.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "core/testing/test_util.h"
#include "model/safetensors_format.h"

namespace granary {
namespace {

using model::DType;
using model::TensorEntry;
using testing::ScratchDir;

const std::vector<std::pair<std::string, std::string>> kMeta{{"format", "pt"}};

struct Spec {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
};

uint64_t Bytes(const Spec& s) {
  uint64_t n = model::DTypeBits(s.dtype);
  for (uint64_t d : s.shape) n *= d;
  return n / 8;
}

// Writes a safetensors file with the tensors in the given order (no padding between them), so a
// test chooses which tensors end up misaligned. Returns name -> bytes.
std::map<std::string, std::string> WriteFile(const std::string& path, const std::vector<Spec>& specs,
                                             uint32_t seed = 1) {
  std::vector<TensorEntry> entries;
  std::map<std::string, std::string> data;
  std::mt19937_64 rng(seed);
  uint64_t offset = 0;
  std::string body;
  for (const Spec& s : specs) {
    TensorEntry e;
    e.name = s.name;
    e.dtype = s.dtype;
    e.shape = s.shape;
    e.begin = offset;
    e.end = offset + Bytes(s);
    offset = e.end;
    std::string bytes(Bytes(s), '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    body += bytes;
    data[s.name] = std::move(bytes);
    entries.push_back(std::move(e));
  }
  Result<std::string> header = model::EncodeHeader(entries, kMeta);
  EXPECT_TRUE(header.ok()) << header.status().ToString();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << *header << body;
  return data;
}

void Evict(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

void Warm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), {});
}

// Reads `stream` to its end: the first error, or OK if every tensor arrived.
Status Drain(TensorStream& stream) {
  for (;;) {
    Result<std::optional<LoadedTensor>> t = stream.Next();
    if (!t.ok()) return t.status();
    if (!t->has_value()) return Status::OK();
  }
}

std::vector<size_t> All(const Model& m) {
  std::vector<size_t> v(m.tensors().size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = i;
  return v;
}

// Reads `sequence` and checks every tensor's bytes, order and alignment.
ReadStats ReadAndCheck(Model& m, const std::map<std::string, std::string>& want,
                       std::vector<size_t> sequence, const ReadOptions& options = {}) {
  auto stream = m.Read(sequence, options);
  EXPECT_TRUE(stream.ok()) << stream.status().ToString();
  if (!stream.ok()) return {};
  std::vector<LoadedTensor> held;
  for (size_t k = 0;; ++k) {
    Result<std::optional<LoadedTensor>> next = (*stream)->Next();
    EXPECT_TRUE(next.ok()) << next.status().ToString();
    if (!next.ok() || !next->has_value()) {
      EXPECT_EQ(k, sequence.size());
      break;
    }
    LoadedTensor& t = **next;
    EXPECT_EQ(t.index, sequence[k]);
    const ModelTensor& info = m.tensors()[t.index];
    const std::string& expect = want.at(info.name);
    EXPECT_EQ(t.data.size(), expect.size()) << info.name;
    if (!expect.empty()) {
      EXPECT_EQ(std::memcmp(t.data.data(), expect.data(), expect.size()), 0) << info.name;
      const size_t align = info.dtype_bits >= 8 ? std::min<size_t>(info.dtype_bits / 8, 8) : 1;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data.data()) % align, 0u) << info.name;
    }
    // The consumer owns the tensor now: writes must survive later reads of its neighbours.
    if (!t.data.empty()) std::memset(t.data.data(), 0xA5, t.data.size());
    held.push_back(std::move(t));
  }
  for (const LoadedTensor& t : held) {
    for (std::byte b : t.data) {
      if (b != std::byte{0xA5}) {
        ADD_FAILURE() << m.tensors()[t.index].name << " was overwritten after it was handed out";
        break;
      }
    }
  }
  return (*stream)->stats();
}

// An LLM-like file: big BF16 matrices, small norms, an odd-length U8 tensor in the middle that
// misaligns everything after it, a zero-element tensor and a scalar.
std::vector<Spec> LlmLike() {
  return {
      {"embed", DType::kBF16, {300, 1000}},      // 600,000 B
      {"l0.norm", DType::kBF16, {1000}},
      {"l0.q", DType::kBF16, {1000, 700}},       // 1.4 MB
      {"odd", DType::kU8, {4097}},               // misaligns the rest
      {"l1.norm", DType::kBF16, {1000}},
      {"l1.q", DType::kF32, {700, 1000}},        // 2.8 MB
      {"empty", DType::kF32, {0, 5}},
      {"scalar", DType::kI64, {}},
      {"l1.k", DType::kBF16, {333, 1001}},
      {"tail", DType::kF64, {17}},
  };
}

TEST(ModelTest, OpensOneFileAndListsTensorsInFileOrder) {
  ScratchDir dir("model");
  auto want = WriteFile(dir.Join("m.safetensors"), LlmLike());
  std::vector<std::string> src{dir.Join("m.safetensors")};
  auto m = Model::Open(src);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_EQ((*m)->files().size(), 1u);
  EXPECT_EQ((*m)->files()[0].metadata.size(), 1u);
  ASSERT_EQ((*m)->tensors().size(), 10u);
  EXPECT_EQ((*m)->tensors()[0].name, "embed");
  EXPECT_EQ((*m)->tensors()[3].name, "odd");
  EXPECT_EQ((*m)->tensors()[3].dtype, "U8");
  EXPECT_EQ((*m)->Find("l1.q").value(), 5u);
  EXPECT_FALSE((*m)->Find("nope").has_value());
  uint64_t total = 0;
  for (auto& [n, b] : want) total += b.size();
  EXPECT_EQ((*m)->total_bytes(), total);
}

TEST(ModelTest, ReadsColdWarmAndBufferedIdentically) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  auto want = WriteFile(path, LlmLike());
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  ReadOptions small;
  small.request_bytes = 3 * 4096;  // many pieces, cuts inside tensors
  small.segment_bytes = 1u << 20;
  for (const ReadOptions& options : {ReadOptions{}, small}) {
    Evict(path);
    ReadStats cold = ReadAndCheck(*m, want, All(*m), options);
    EXPECT_GT(cold.direct_bytes, 0u);
    EXPECT_GT(cold.staged_bytes, 0u);  // the misaligned tensors after "odd"
    Warm(path);
    ReadStats warm = ReadAndCheck(*m, want, All(*m), options);
    // Mostly from the page cache (tests running alongside may push a few pages out).
    EXPECT_LT(warm.direct_bytes, m->total_bytes() / 10);
    EXPECT_GT(warm.cached_bytes, m->total_bytes() * 9 / 10);
    ReadOptions buffered = options;
    buffered.direct_io = false;
    Evict(path);
    ReadStats b = ReadAndCheck(*m, want, All(*m), buffered);
    EXPECT_EQ(b.direct_bytes, 0u);
  }
}

TEST(ModelTest, MapResidentMapsWarmAlignedSegmentsCopyOnWrite) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  auto want = WriteFile(path, LlmLike());
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  ReadOptions map;
  map.map_resident = true;
  map.segment_bytes = 1u << 20;  // several segments: the aligned ones before "odd" get mapped
  Warm(path);
  // ReadAndCheck writes into every tensor: private mappings must copy, never touch the file.
  ReadStats s = ReadAndCheck(*m, want, All(*m), map);
  EXPECT_GT(s.mapped_bytes, 0u);
  EXPECT_GT(s.cached_bytes, 0u);  // segments with misaligned tensors are copied
  EXPECT_EQ(s.direct_bytes, 0u);
  ReadAndCheck(*m, want, All(*m));  // the file still holds the original bytes
  // Cold segments are read as usual.
  Evict(path);
  s = ReadAndCheck(*m, want, All(*m), map);
  EXPECT_EQ(s.mapped_bytes, 0u);
  EXPECT_GT(s.direct_bytes, 0u);
}

// Two mirrored runs whose aligned covers share a page around a tiny staged tensor: both reads
// write that page, and neither may overwrite a tensor already handed out (ReadAndCheck writes
// into every tensor it receives). Cold, partly cached, warm, and mapped under a window.
TEST(ModelTest, RunsSharingAnEdgePageAroundAStagedTensor) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  auto want = WriteFile(path, {{"a", DType::kF32, {3000}},   // 12,000 B
                               {"x", DType::kU8, {1}},
                               {"s", DType::kBF16, {1}},     // odd offset: staged
                               {"y", DType::kU8, {1}},       // realigns what follows
                               {"b", DType::kF32, {5000}},
                               {"c", DType::kF64, {9}}});
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  ASSERT_NE(m->tensors()[2].offset % 2, 0u);
  ASSERT_EQ(m->tensors()[4].offset % 4, 0u);
  ReadOptions tiny;
  tiny.request_bytes = 4096;
  for (int mode = 0; mode < 4; ++mode) {
    ReadOptions options = tiny;
    Evict(path);
    if (mode == 1) {  // the first half cached, the rest cold
      int fd = ::open(path.c_str(), O_RDONLY);
      std::string half(12000, '\0');
      ASSERT_EQ(::pread(fd, half.data(), half.size(), 0), 12000);
      ::close(fd);
    }
    if (mode >= 2) Warm(path);
    if (mode == 3) {
      options.map_resident = true;
      options.window_bytes = 16384;
    }
    for (size_t threads : {1u, 8u}) {
      options.io_threads = threads;
      ReadAndCheck(*m, want, All(*m), options);
    }
  }
}

TEST(ModelTest, MisalignedTensorsGetAlignedMemory) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  auto want = WriteFile(path, LlmLike());
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  Evict(path);
  auto stream = m->Read(All(*m)).value();
  while (auto t = stream->Next().value()) {
    const ModelTensor& info = m->tensors()[t->index];
    if (info.bytes == 0) continue;
    const size_t align = info.dtype_bits >= 8 ? std::min<size_t>(info.dtype_bits / 8, 8) : 1;
    ASSERT_EQ(reinterpret_cast<uintptr_t>(t->data.data()) % align, 0u) << info.name;
    if (info.offset % align == 0) {  // mirrored: congruent to the file offset modulo 4 KiB
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data.data()) % 4096, info.offset % 4096)
          << info.name;
    }
  }
}

TEST(ModelTest, ReadsASubsetInAnyOrder) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  auto want = WriteFile(path, LlmLike());
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  Evict(path);
  ReadAndCheck(*m, want, {8, 0, 5, 3});
  ReadAndCheck(*m, want, {6});
  ReadAndCheck(*m, want, {});
}

TEST(ModelTest, WindowBoundsMemoryAheadOfTheConsumer) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  std::vector<Spec> specs;
  for (int i = 0; i < 40; ++i) {
    specs.push_back({"w" + std::to_string(100 + i), DType::kF32, {256, 256}});  // 256 KiB each
  }
  auto want = WriteFile(path, specs);
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  ReadOptions options;
  options.segment_bytes = 512u << 10;
  options.window_bytes = 1u << 20;
  options.request_bytes = 128u << 10;
  ReadStats s = ReadAndCheck(*m, want, All(*m), options);
  EXPECT_LE(s.peak_window_bytes, (1u << 20) + 2 * 4096);
  EXPECT_GE(s.segments, 20u);
  // A segment larger than the window is read alone.
  options.window_bytes = 1000;
  s = ReadAndCheck(*m, want, All(*m), options);
  EXPECT_LE(s.peak_window_bytes, (512u << 10) + 2 * 4096);
}

TEST(ModelTest, DroppingAStreamEarlyStopsCleanly) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  WriteFile(path, LlmLike());
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  for (int i = 0; i < 20; ++i) {
    auto stream = m->Read(All(*m)).value();
    if (i % 2) ASSERT_TRUE(stream->Next().ok());
  }
}

TEST(ModelTest, ShardedDirectoryWithIndex) {
  ScratchDir dir("model");
  auto a = WriteFile(dir.Join("model-00001-of-00002.safetensors"),
                     {{"a.w", DType::kF16, {64, 64}}, {"a.b", DType::kF16, {64}}}, 1);
  auto b = WriteFile(dir.Join("model-00002-of-00002.safetensors"),
                     {{"b.w", DType::kBF16, {128, 32}}}, 2);
  std::ofstream(dir.Join("model.safetensors.index.json"))
      << R"({"metadata": {"total_size": 16512}, "weight_map": {"a.w": "model-00001-of-00002.safetensors", "a.b": "model-00001-of-00002.safetensors", "b.w": "model-00002-of-00002.safetensors"}})";
  a.insert(b.begin(), b.end());
  for (const std::string& s : {dir.path(), dir.Join("model.safetensors.index.json"),
                               "file://" + dir.path()}) {
    std::vector<std::string> src{s};
    auto m = Model::Open(src);
    ASSERT_TRUE(m.ok()) << s << ": " << m.status().ToString();
    EXPECT_EQ((*m)->files().size(), 2u);
    EXPECT_EQ((*m)->index_metadata(), R"({"total_size":16512})");
    ReadAndCheck(**m, a, All(**m));
  }
  // A list of files works too, and without an index a directory means all its files.
  std::vector<std::string> list{dir.Join("model-00002-of-00002.safetensors"),
                                dir.Join("model-00001-of-00002.safetensors")};
  auto m = Model::Open(list).value();
  EXPECT_EQ(m->tensors()[0].name, "b.w");
  ReadAndCheck(*m, a, All(*m));
  ::unlink(dir.Join("model.safetensors.index.json").c_str());
  std::vector<std::string> d{dir.path()};
  EXPECT_EQ(Model::Open(d).value()->tensors().size(), 3u);
}

TEST(ModelTest, BadIndexesAreDataLossNamingTheIndex) {
  ScratchDir dir("model");
  WriteFile(dir.Join("m1.safetensors"), {{"x", DType::kF32, {4}}});
  const std::string index = dir.Join("model.safetensors.index.json");
  std::vector<std::string> src{dir.path()};
  struct Case {
    std::string body, expect;
  };
  for (const Case& c : std::vector<Case>{
           {"not json", "not a JSON object"},
           {R"({"metadata": {}})", "no \"weight_map\""},
           {R"({"weight_map": {"x": "../m1.safetensors"}})", "not a file of the index's"},
           {R"({"weight_map": {"x": "m2.safetensors"}})", "names file m2.safetensors"},
           {R"({"weight_map": {"y": "m1.safetensors"}})", "tensor y: not in file m1"},
           {R"({"weight_map": {"x": 3}})", "tensor x: file name is not a string"},
       }) {
    std::ofstream(index, std::ios::trunc) << c.body;
    auto m = Model::Open(src);
    ASSERT_FALSE(m.ok()) << c.body;
    EXPECT_EQ(m.status().code(), StatusCode::kDataLoss) << m.status().ToString();
    EXPECT_NE(m.status().message().find(c.expect), std::string::npos) << m.status().ToString();
    EXPECT_NE(m.status().message().find("model.safetensors.index.json"), std::string::npos);
  }
}

TEST(ModelTest, SourceErrors) {
  ScratchDir dir("model");
  std::vector<std::string> missing{dir.Join("nope.safetensors")};
  EXPECT_EQ(Model::Open(missing).status().code(), StatusCode::kNotFound);
  std::vector<std::string> empty_dir{dir.path()};
  EXPECT_EQ(Model::Open(empty_dir).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Model::Open({}).status().code(), StatusCode::kInvalidArgument);
  WriteFile(dir.Join("a.safetensors"), {{"x", DType::kF32, {4}}});
  WriteFile(dir.Join("b.safetensors"), {{"x", DType::kF32, {4}}});
  std::vector<std::string> dup{dir.Join("a.safetensors"), dir.Join("b.safetensors")};
  Status s = Model::Open(dup).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("a.safetensors"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("b.safetensors"), std::string::npos) << s.ToString();
  // Garbage and truncated headers name the file.
  std::ofstream(dir.Join("bad.safetensors")) << "garbage!garbage!";
  std::vector<std::string> bad{dir.Join("bad.safetensors")};
  s = Model::Open(bad).status();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("bad.safetensors"), std::string::npos) << s.ToString();
  std::ofstream(dir.Join("short.safetensors")) << "abc";
  std::vector<std::string> short_file{dir.Join("short.safetensors")};
  EXPECT_EQ(Model::Open(short_file).status().code(), StatusCode::kDataLoss);
  // Indices out of range or repeated.
  std::vector<std::string> a{dir.Join("a.safetensors")};
  auto m = Model::Open(a).value();
  EXPECT_EQ(m->Read({1}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m->Read({0, 0}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ModelTest, FileTruncatedAfterOpenIsDataLossNamingTheTensor) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  WriteFile(path, LlmLike());
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  const ModelTensor& victim = m->tensors()[5];  // l1.q, misaligned (staged)
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(victim.offset + 100)), 0);
  for (bool cold : {true, false}) {
    if (cold) Evict(path); else Warm(path);
    auto stream = m->Read(All(*m)).value();
    const Status error = Drain(*stream);  // OK would mean the truncated file read to the end
    EXPECT_EQ(error.code(), StatusCode::kDataLoss) << error.ToString();
    EXPECT_NE(error.message().find("m.safetensors"), std::string::npos) << error.ToString();
    // Reads run in parallel: the first failure names l1.q or a tensor after it.
    bool named = false;
    for (size_t i = 5; i < m->tensors().size(); ++i) {
      named |= error.message().find("tensor " + m->tensors()[i].name + ":") != std::string::npos;
    }
    EXPECT_TRUE(named) << error.ToString();
    // The error sticks.
    EXPECT_FALSE(stream->Next().ok());
  }
}

// Fails the n-th request with EIO; otherwise forwards to the default engine.
class FailingEngine final : public IoEngine {
 public:
  explicit FailingEngine(int fail_at) : fail_at_(fail_at) {}
  std::string_view name() const override { return "failing"; }
  unsigned queue_depth() const override { return 32; }
  Status Run(std::span<IoRequest> requests) override {
    for (IoRequest& r : requests) {
      if (++count_ == fail_at_) {
        r.result = -EIO;
        continue;
      }
      GRANARY_RETURN_IF_ERROR(IoEngine::Default().Run({&r, 1}));
    }
    return Status::OK();
  }

 private:
  const int fail_at_;
  std::atomic<int> count_{0};
};

TEST(ModelTest, DeviceErrorsNameFileAndTensor) {
  ScratchDir dir("model");
  const std::string path = dir.Join("m.safetensors");
  WriteFile(path, LlmLike());
  std::vector<std::string> src{path};
  auto m = Model::Open(src).value();
  for (int fail_at = 1; fail_at <= 4; ++fail_at) {
    FailingEngine engine(fail_at);
    ReadOptions options;
    options.engine = &engine;
    options.io_threads = 1;
    Evict(path);
    auto stream = m->Read(All(*m), options).value();
    const Status error = Drain(*stream);
    EXPECT_EQ(error.sys_errno(), EIO) << error.ToString();
    EXPECT_NE(error.message().find("m.safetensors: tensor "), std::string::npos)
        << error.ToString();
  }
}

TEST(ModelTest, ReadsThroughAStoreWithoutLocalFiles) {
  auto store = OpenStore("mem://model-test-store").value();
  std::vector<std::string> names{"b", "a", "c"};
  std::vector<std::vector<float>> values{{1, 2, 3}, {4}, {}};
  std::vector<TensorToSave> tensors;
  for (size_t i = 0; i < names.size(); ++i) {
    tensors.push_back({names[i], "F32", {values[i].size()},
                       std::as_bytes(std::span(values[i]))});
  }
  ASSERT_TRUE(SaveSafetensors(*store, "model.safetensors", tensors, {}).ok());
  std::vector<std::string> src{"mem://model-test-store"};
  auto m = Model::Open(src);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  std::map<std::string, std::string> want;
  for (size_t i = 0; i < names.size(); ++i) {
    want[names[i]] = std::string(reinterpret_cast<const char*>(values[i].data()),
                                 values[i].size() * 4);
  }
  ReadStats s = ReadAndCheck(**m, want, All(**m));
  EXPECT_EQ(s.store_bytes, 16u);
}

TEST(ModelTest, SaveLaysOutLikeTheReferenceAndRejectsBadInput) {
  ScratchDir dir("model");
  auto store = OpenStore(dir.path()).value();
  std::vector<uint16_t> half(6, 0x3c00);
  std::vector<double> wide{1.5, 2.5};
  std::vector<uint8_t> odd{1, 2, 3};
  std::vector<TensorToSave> tensors{
      {"h", "F16", {2, 3}, std::as_bytes(std::span(half))},
      {"odd", "U8", {3}, std::as_bytes(std::span(odd))},
      {"w", "F64", {2}, std::as_bytes(std::span(wide))},
  };
  ASSERT_TRUE(SaveSafetensors(*store, "m.safetensors", tensors, kMeta).ok());
  std::vector<std::string> src{dir.Join("m.safetensors")};
  auto m = Model::Open(src).value();
  ASSERT_EQ(m->tensors().size(), 3u);
  EXPECT_EQ(m->tensors()[0].name, "w");  // widest dtype first
  EXPECT_EQ(m->tensors()[1].name, "h");
  EXPECT_EQ(m->tensors()[2].name, "odd");
  tensors[0].shape = {7};
  Status s = SaveSafetensors(*store, "bad.safetensors", tensors, {});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor h"), std::string::npos) << s.ToString();
  EXPECT_EQ(store->Stat("bad.safetensors").status().code(), StatusCode::kNotFound);
  tensors[0].shape = {2, 3};
  tensors[1].name = "h";
  EXPECT_EQ(SaveSafetensors(*store, "bad.safetensors", tensors, {}).code(),
            StatusCode::kInvalidArgument);
  tensors[1] = {"q", "Q9", {3}, std::as_bytes(std::span(odd))};
  EXPECT_EQ(SaveSafetensors(*store, "bad.safetensors", tensors, {}).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace granary
