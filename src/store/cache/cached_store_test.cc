// The node-local cache over an in-process source whose objects have versions (ETags), so every
// rule of granary/cache.h is checked without a server: hits by tier, restarts, damaged pages,
// replaced objects, one fetch per page under concurrency (threads, and processes sharing a
// directory, one of them killed mid-fetch), the byte cap and the free-disk floor,
// and the directory operations. s3_cache_test.cc runs it against RGW.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/cache.h"
#include "store/cache/cached_store.h"
#include "store/memory/memory_store.h"
#include "store/testing/forwarding_store.h"
#include "store/testing/test_util.h"

namespace granary {
namespace {

using testing::AsWritableBytes;
using testing::ForwardingStore;
using testing::Payload;
using testing::ScratchDir;

// A memory store whose objects carry an ETag that changes on every Put, and that counts (and
// can slow down) pinned fetches.
class VersionedSource final : public ForwardingStore, public CacheSource {
 public:
  using ObjectStore::Put;
  VersionedSource() : ForwardingStore(NewMemoryStore()) {}
  std::string url() const override { return "mem://versioned"; }
  Status Put(std::string_view key, std::span<const std::byte> data) override {
    std::lock_guard lock(mu_);
    ++versions_[std::string(key)];
    return ForwardingStore::Put(key, data);
  }

  std::string cache_identity() const override { return "test://versioned"; }
  Result<SourceObject> Head(std::string_view key) override {
    GRANARY_ASSIGN_OR_RETURN(ObjectInfo info, base()->Stat(key));
    std::lock_guard lock(mu_);
    return SourceObject{info.size_bytes, "v" + std::to_string(versions_[std::string(key)])};
  }
  Status ReadPinned(std::span<PinnedRead> reads) override {
    std::this_thread::sleep_for(delay);
    for (PinnedRead& r : reads) {
      fetches.fetch_add(1);
      {
        std::lock_guard lock(mu_);
        if ("v" + std::to_string(versions_[r.key]) != r.etag) {
          r.status = FailedPreconditionError(r.key + " replaced");
          continue;
        }
      }
      Result<size_t> n = base()->Get(r.key, r.offset, r.dest);
      r.status = n.status();
      r.bytes_read = n.ok() ? *n : 0;
      if (shared_bytes != nullptr) shared_bytes->fetch_add(r.bytes_read);
    }
    return Status::OK();
  }

  std::vector<Result<SourceObject>> HeadMany(std::span<const std::string> keys) override {
    head_batches.fetch_add(1);
    return CacheSource::HeadMany(keys);
  }

  std::atomic<int> fetches{0};
  std::atomic<int> head_batches{0};
  std::chrono::milliseconds delay{0};
  std::atomic<uint64_t>* shared_bytes = nullptr;  // bytes fetched, summed over processes

 private:
  std::mutex mu_;
  std::map<std::string, int> versions_;
};

constexpr uint64_t kPage = 64 * 1024;

class CacheTest : public ::testing::Test {
 protected:
  // A cached store over a fresh source (kept in source_).
  std::unique_ptr<ObjectStore> Open(CacheOptions options, VersionedSource** source_out = nullptr) {
    auto source = std::make_unique<VersionedSource>();
    VersionedSource* raw = source.get();
    if (source_out != nullptr) *source_out = raw;
    if (options.page_bytes == (uint64_t{2} << 20)) options.page_bytes = kPage;
    options.min_free_disk_bytes = options.min_free_disk_bytes == (uint64_t{1} << 30)
                                      ? 0
                                      : options.min_free_disk_bytes;
    Result<std::unique_ptr<ObjectStore>> store = NewCachedStore(std::move(source), raw, options);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    return store.ok() ? std::move(*store) : nullptr;
  }
  CacheOptions Disk() {
    CacheOptions o;
    o.dir = dir_.Join("cache");
    return o;
  }
  static std::string Read(ObjectStore& s, const std::string& key, uint64_t off, size_t n) {
    std::string out(n, '\0');
    Result<size_t> got = s.Get(key, off, AsWritableBytes(out));
    EXPECT_TRUE(got.ok()) << got.status().ToString();
    out.resize(got.ok() ? *got : 0);
    return out;
  }

  ScratchDir dir_{"cache"};
};

TEST_F(CacheTest, SecondReadHitsDiskAndRamTiers) {
  CacheOptions o = Disk();
  o.ram_bytes = 1 << 20;
  VersionedSource* src;
  auto store = Open(o, &src);
  const std::string data = Payload(1, 5 * kPage + 123);
  GRANARY_ASSERT_OK(store->Put("obj", data));
  EXPECT_TRUE(Read(*store, "obj", 1000, 3 * kPage) == data.substr(1000, 3 * kPage));
  CacheStats s = GetCacheStats(*store).value();
  EXPECT_EQ(s.misses, 4u);  // pages 0..3
  EXPECT_EQ(s.miss_bytes, 4 * kPage);
  EXPECT_EQ(src->fetches.load(), 1);  // one run of adjacent pages
  EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  s = GetCacheStats(*store).value();
  EXPECT_EQ(s.misses, 6u);
  EXPECT_EQ(s.ram_hits, 4u);
  EXPECT_EQ(s.ram_hit_bytes, 4 * kPage);
  EXPECT_GT(s.disk_bytes, 5 * kPage);
  // Past the end: 0 bytes; a missing key: NotFound.
  EXPECT_TRUE(Read(*store, "obj", data.size() + 5, 10) == "");
  std::string buf(10, '\0');
  EXPECT_EQ(store->Get("nope", 0, AsWritableBytes(buf)).status().code(), StatusCode::kNotFound);
}

TEST_F(CacheTest, DiskTierSurvivesRestartAndIsSharedByName) {
  const std::string data = Payload(2, 7 * kPage);
  {
    auto store = Open(Disk());
    GRANARY_ASSERT_OK(store->Put("obj", data));
    EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  }
  // A new process (new source with the same identity and the same version "v1").
  VersionedSource* src;
  auto store = Open(Disk(), &src);
  GRANARY_ASSERT_OK(store->Put("obj", data));
  EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  CacheStats s = GetCacheStats(*store).value();
  EXPECT_EQ(s.misses, 0u);
  EXPECT_EQ(s.disk_hits, 7u);
  EXPECT_EQ(src->fetches.load(), 0);
  GRANARY_ASSERT_OK_AND_ASSIGN(CacheDirInfo info, InspectCache(Disk().dir));
  EXPECT_EQ(info.pages, 7u);
  EXPECT_EQ(info.objects, 1u);
  EXPECT_EQ(info.totals.misses, 7u);  // the first handle's counters, persisted at close
}

// Every page file of the cache directory.
std::vector<std::string> PageFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir + "/pages")) {
    if (e.is_regular_file()) out.push_back(e.path().string());
  }
  return out;
}

TEST_F(CacheTest, DamagedPagesAreDroppedNeverServed) {
  const std::string data = Payload(3, 4 * kPage);
  auto store = Open(Disk());
  GRANARY_ASSERT_OK(store->Put("obj", data));
  EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  std::vector<std::string> files = PageFiles(Disk().dir);
  ASSERT_EQ(files.size(), 4u);
  // Flip one data byte of each page file.
  for (const std::string& f : files) {
    const int fd = ::open(f.c_str(), O_RDWR);
    char c;
    ASSERT_EQ(::pread(fd, &c, 1, 4096 + 777), 1);
    c ^= 0x5a;
    ASSERT_EQ(::pwrite(fd, &c, 1, 4096 + 777), 1);
    ::close(fd);
  }
  EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  CacheStats s = GetCacheStats(*store).value();
  EXPECT_EQ(s.damaged, 4u);
  EXPECT_EQ(s.misses, 8u);  // fetched again
  // A truncated page is dropped when a cache opens; verify finds nothing more to remove.
  files = PageFiles(Disk().dir);
  ASSERT_FALSE(files.empty());
  ASSERT_EQ(::truncate(files[0].c_str(), 5000), 0);
  store.reset();
  store = Open(Disk());
  EXPECT_EQ(GetCacheStats(*store).value().damaged, 1u);
  EXPECT_EQ(VerifyCache(Disk().dir).value().removed, 0u);
}

TEST_F(CacheTest, ReplacedObjectsAreNeverServedStale) {
  CacheOptions o = Disk();
  o.ram_bytes = 1 << 20;
  ASSERT_EQ(o.revalidate_seconds, 0);  // the default: check the ETag on every read
  VersionedSource* src;
  auto store = Open(o, &src);
  const std::string v1 = Payload(4, 3 * kPage), v2 = Payload(5, 3 * kPage + 10);
  GRANARY_ASSERT_OK(src->Put("obj", v1));  // behind the cache's back
  EXPECT_TRUE(Read(*store, "obj", 0, v1.size()) == v1);
  GRANARY_ASSERT_OK(src->Put("obj", v2));
  EXPECT_TRUE(Read(*store, "obj", 0, v2.size()) == v2);
  EXPECT_EQ(GetCacheStats(*store).value().stale, 1u);

  // Replaced between the HEAD and the fetch (trusted metadata): the pinned fetch fails and the
  // read starts again on the new version, whole.
  o.revalidate_seconds = 3600;
  o.dir = dir_.Join("cache-trusting");
  auto trusting = Open(o, &src);
  GRANARY_ASSERT_OK(src->Put("obj", v1));
  EXPECT_TRUE(Read(*trusting, "obj", 0, kPage) == v1.substr(0, kPage));
  GRANARY_ASSERT_OK(src->Put("obj", v2));
  EXPECT_TRUE(Read(*trusting, "obj", 0, v2.size()) == v2);
}

// A read of many objects asks for all their versions at once (one HeadMany), every time by
// default, and a missing object fails only its own op.
TEST_F(CacheTest, VersionsOfAReadAreAskedForTogether) {
  VersionedSource* src;
  auto store = Open(Disk(), &src);
  std::vector<std::string> keys, payloads;
  for (int k = 0; k < 6; ++k) {
    keys.push_back("shard-" + std::to_string(k));
    payloads.push_back(Payload(20 + k, kPage + 17 * k));
    GRANARY_ASSERT_OK(src->Put(keys.back(), payloads.back()));
  }
  keys.push_back("absent");
  payloads.push_back(std::string(10, '\0'));
  for (int round = 0; round < 2; ++round) {
    std::vector<std::string> out(keys.size());
    std::vector<ReadOp> ops(keys.size());
    for (size_t k = 0; k < keys.size(); ++k) {
      out[k].assign(payloads[k].size(), '\0');
      ops[k].key = keys[k];
      ops[k].offset = 0;
      ops[k].dest = AsWritableBytes(out[k]);
    }
    const int before = src->head_batches.load();
    GRANARY_ASSERT_OK(store->GetMany(ops));
    EXPECT_EQ(src->head_batches.load() - before, 1) << "round " << round;
    for (size_t k = 0; k + 1 < keys.size(); ++k) {
      GRANARY_EXPECT_OK(ops[k].status);
      EXPECT_TRUE(out[k] == payloads[k]) << keys[k];
    }
    EXPECT_EQ(ops.back().status.code(), StatusCode::kNotFound) << ops.back().status.ToString();
  }
}

TEST_F(CacheTest, ConcurrentReadersShareOneFetchPerPage) {
  VersionedSource* src;
  auto store = Open(Disk(), &src);
  const std::string data = Payload(6, 2 * kPage);
  GRANARY_ASSERT_OK(store->Put("obj", data));
  std::string warm(1, '\0');
  GRANARY_ASSERT_OK(store->Stat("obj").status());
  src->delay = std::chrono::milliseconds(200);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      if (!(Read(*store, "obj", 0, data.size()) == data)) bad.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(src->fetches.load(), 1);
  CacheStats s = GetCacheStats(*store).value();
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.waits + s.disk_hits / 2, 14u) << "7 readers x 2 pages waited or hit";
}

// Processes sharing a cache directory (DataLoader workers) fetch each page once between them;
// a process killed while it fetches leaves nothing that blocks or misleads the others.
TEST_F(CacheTest, ProcessesSharingADirectoryFetchEachPageOnce) {
  auto* fetched = static_cast<std::atomic<uint64_t>*>(::mmap(
      nullptr, sizeof(std::atomic<uint64_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
      -1, 0));
  ASSERT_NE(fetched, MAP_FAILED);
  new (fetched) std::atomic<uint64_t>(0);
  const std::string data = Payload(7, 8 * kPage + 99);
  // A process with its own handle over its own copy of the source (same ETags): reads the
  // object and exits 0 if the bytes are right.
  auto reader = [&](int delay_ms) {
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    VersionedSource* src;
    auto store = Open(Disk(), &src);
    int code = 3;
    if (store != nullptr && src->Put("obj", data).ok()) {
      src->shared_bytes = fetched;
      src->delay = std::chrono::milliseconds(delay_ms);
      std::string got(data.size(), '\0');
      Result<size_t> n = store->Get("obj", 0, AsWritableBytes(got));
      code = n.ok() && *n == data.size() && got == data ? 0 : 1;
    }
    ::_exit(code);
  };
  auto exit_code = [](pid_t pid) {
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
  };

  std::vector<pid_t> pids;
  for (int i = 0; i < 4; ++i) pids.push_back(reader(300));
  for (pid_t pid : pids) EXPECT_EQ(exit_code(pid), 0);
  EXPECT_EQ(fetched->load(), data.size()) << "4 processes fetched the pages more than once";

  // Killed while holding the page locks: the next reader takes them over and fetches.
  GRANARY_ASSERT_OK(EvictCache(Disk().dir, 0).status());
  fetched->store(0);
  const pid_t doomed = reader(60'000);
  const std::string locks = Disk().dir + "/locks";
  for (int i = 0; i < 500 && (!std::filesystem::exists(locks) ||
                              std::filesystem::is_empty(locks));
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(std::filesystem::is_empty(locks)) << "the first reader never locked its pages";
  const pid_t waiter = reader(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(::kill(doomed, SIGKILL), 0);
  EXPECT_EQ(exit_code(doomed), 100 + SIGKILL);
  EXPECT_EQ(exit_code(waiter), 0);
  EXPECT_EQ(fetched->load(), data.size());
  ::munmap(fetched, sizeof(std::atomic<uint64_t>));
}

// A page lock that cannot be taken (its directory is gone) costs at worst a duplicate fetch
// between processes: the read still fetches, serves and stores the pages.
TEST_F(CacheTest, PagesAreFetchedWhenTheirLockCannotBeTaken) {
  VersionedSource* src;
  auto store = Open(Disk(), &src);
  const std::string data = Payload(9, 3 * kPage);
  GRANARY_ASSERT_OK(src->Put("obj", data));
  std::filesystem::remove_all(Disk().dir + "/locks");
  std::ofstream(Disk().dir + "/locks") << "not a directory";
  EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  CacheStats s = GetCacheStats(*store).value();
  EXPECT_EQ(s.misses, 3u);
  EXPECT_EQ(s.disk_hits, 3u);
}

TEST_F(CacheTest, ByteCapAndFreeDiskFloorEvict) {
  CacheOptions o = Disk();
  o.disk_bytes = 5 * (kPage + 4096);
  auto store = Open(o);
  const std::string data = Payload(7, 20 * kPage);
  GRANARY_ASSERT_OK(store->Put("obj", data));
  EXPECT_TRUE(Read(*store, "obj", 0, data.size()) == data);
  CacheStats s = GetCacheStats(*store).value();
  EXPECT_LE(s.disk_bytes, o.disk_bytes);
  EXPECT_EQ(s.evictions, 15u);
  EXPECT_LE(PageFiles(o.dir).size(), 5u);
  // A floor above the free space: nothing stays, reads still work.
  CacheOptions floor = Disk();
  floor.dir = dir_.Join("cache2");
  floor.min_free_disk_bytes = uint64_t{1} << 60;
  auto starved = Open(floor);
  GRANARY_ASSERT_OK(starved->Put("obj", data));
  EXPECT_TRUE(Read(*starved, "obj", 0, data.size()) == data);
  EXPECT_TRUE(PageFiles(floor.dir).empty());
  // evict and verify on the directory.
  GRANARY_ASSERT_OK_AND_ASSIGN(uint64_t removed, EvictCache(o.dir, 0));
  EXPECT_GT(removed, 0u);
  EXPECT_EQ(InspectCache(o.dir).value().pages, 0u);
}

TEST(CacheOptionsTest, SizesQueryAndEnvironment) {
  EXPECT_EQ(ParseByteSize("200G").value(), uint64_t{200} << 30);
  EXPECT_EQ(ParseByteSize("1.5k").value(), 1536u);
  EXPECT_EQ(ParseByteSize("64MiB").value(), uint64_t{64} << 20);
  EXPECT_EQ(ParseByteSize("12345").value(), 12345u);
  EXPECT_EQ(ParseByteSize("lots").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseByteSize("5X").status().code(), StatusCode::kInvalidArgument);
  std::vector<std::pair<std::string, std::string>> q = {
      {"endpoint", "http://x"}, {"cache_dir", "%2Ftmp%2Fc"}, {"ram_cache_bytes", "1G"}};
  GRANARY_ASSERT_OK_AND_ASSIGN(CacheOptions o, ResolveCacheOptions({}, &q));
  EXPECT_EQ(o.dir, "/tmp/c");
  EXPECT_EQ(o.ram_bytes, uint64_t{1} << 30);
  ASSERT_EQ(q.size(), 1u);  // cache keys removed, the rest kept
  EXPECT_EQ(q[0].first, "endpoint");
  ::setenv("GRANARY_CACHE_DIR", "/env/dir", 1);
  std::vector<std::pair<std::string, std::string>> none;
  EXPECT_EQ(ResolveCacheOptions({}, &none).value().dir, "/env/dir");
  CacheOptions api;
  api.dir = "/api";
  EXPECT_EQ(ResolveCacheOptions(api, &none).value().dir, "/api");
  ::unsetenv("GRANARY_CACHE_DIR");
  std::vector<std::pair<std::string, std::string>> bad = {{"cache_page_bytes", "1000"}};
  EXPECT_EQ(ResolveCacheOptions({}, &bad).status().code(), StatusCode::kInvalidArgument);
  // The config file's [cache] section is the lowest layer.
  ScratchDir dir("cachecfg");
  {
    std::ofstream f(dir.Join("config"));
    f << "[other]\ndir = /no\n[cache]\ndir = /from/file\nbytes = 2G\nram_bytes = 3M\n";
  }
  ::setenv("GRANARY_CONFIG", dir.Join("config").c_str(), 1);
  GRANARY_ASSERT_OK_AND_ASSIGN(CacheOptions from_file, ResolveCacheOptions({}, &none));
  EXPECT_EQ(from_file.dir, "/from/file");
  EXPECT_EQ(from_file.disk_bytes, uint64_t{2} << 30);
  EXPECT_EQ(from_file.ram_bytes, uint64_t{3} << 20);
  ::setenv("GRANARY_CACHE_DIR", "/env/dir", 1);
  EXPECT_EQ(ResolveCacheOptions({}, &none).value().dir, "/env/dir");
  ::unsetenv("GRANARY_CACHE_DIR");
  ::setenv("GRANARY_CONFIG", dir.Join("missing").c_str(), 1);
  EXPECT_EQ(ResolveCacheOptions({}, &none).status().code(), StatusCode::kNotFound);
  ::unsetenv("GRANARY_CONFIG");
  std::unique_ptr<ObjectStore> plain = NewMemoryStore();
  EXPECT_EQ(GetCacheStats(*plain).status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace granary
