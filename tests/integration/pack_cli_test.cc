// End to end: `granary pack` run as a real process over directory trees, WebDataset tars and
// JSONL; every packed dataset is read back through Dataset and compared byte for byte. Also the
// error policy, --append, shard rollover, worker-count independence and killed/interrupted packs.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/testing/test_util.h"
#include "granary/dataset.h"
#include "granary/store.h"

namespace granary {
namespace {

using Fields = std::map<std::string, std::string>;
using Samples = std::vector<std::pair<std::string, Fields>>;  // in dataset order

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, std::string_view data) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

bool Contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// A pax tar (what Python's tarfile writes) holding `members` in order.
void WriteTar(const std::string& path, const std::vector<std::pair<std::string, std::string>>& members) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
  for (const auto& [name, data] : members) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(data.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
    archive_write_data(a, data.data(), data.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
}

class PackCliTest : public ::testing::Test {
 protected:
  // Starts the granary binary with `args`; stdin is a pipe (*stdin_fd) or /dev/null, stdout and
  // stderr go to files.
  pid_t Start(const std::vector<std::string>& args, int* stdin_fd = nullptr) {
    int pipe_fds[2] = {-1, -1};
    if (stdin_fd != nullptr && ::pipe(pipe_fds) != 0) return -1;
    std::vector<std::string> copy = args;
    std::string binary = GRANARY_CLI;
    std::vector<char*> argv{binary.data()};
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string out_path = io_.Join("out"), err_path = io_.Join("err");
    const pid_t pid = fork();
    if (pid == 0) {
      const int in = stdin_fd != nullptr ? pipe_fds[0] : ::open("/dev/null", O_RDONLY);
      const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0 || err < 0) _exit(126);
      dup2(in, STDIN_FILENO);
      dup2(out, STDOUT_FILENO);
      dup2(err, STDERR_FILENO);
      if (stdin_fd != nullptr) ::close(pipe_fds[1]);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    if (stdin_fd != nullptr) {
      ::close(pipe_fds[0]);
      *stdin_fd = pipe_fds[1];
    }
    return pid;
  }

  // Waits for `pid`; exit_code is 128 + signal for a killed process.
  CliRun Wait(pid_t pid) {
    CliRun run;
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
      ADD_FAILURE() << "could not run " << GRANARY_CLI;
      return run;
    }
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    run.out = ReadFile(io_.Join("out"));
    run.err = ReadFile(io_.Join("err"));
    return run;
  }

  CliRun Granary(const std::vector<std::string>& args) { return Wait(Start(args)); }

  // Every sample of the newest version at `url`, read through the Dataset API.
  static Samples ReadBack(const std::string& url, uint64_t* version = nullptr,
                          size_t* shards = nullptr) {
    Samples out;
    Result<std::unique_ptr<Dataset>> ds = Dataset::Open(url);
    if (!ds.ok()) {
      ADD_FAILURE() << ds.status().ToString();
      return out;
    }
    if (version != nullptr) *version = (*ds)->version();
    if (shards != nullptr) *shards = (*ds)->shards().size();
    std::vector<uint64_t> indices((*ds)->size());
    for (uint64_t i = 0; i < indices.size(); ++i) indices[i] = i;
    Result<std::shared_ptr<Batch>> batch = (*ds)->ReadBatch(indices);
    if (!batch.ok()) {
      ADD_FAILURE() << batch.status().ToString();
      return out;
    }
    const Batch& b = **batch;
    for (size_t i = 0; i < b.size(); ++i) {
      Fields fields;
      for (size_t j = 0; j < b.num_fields(i); ++j) {
        std::span<const std::byte> data = b.field(i, j);
        fields[std::string(b.field_name(i, j))] =
            std::string(reinterpret_cast<const char*>(data.data()), data.size());
      }
      out.emplace_back(std::string(b.key(i)), std::move(fields));
    }
    return out;
  }

  static bool Published(const std::string& url) {
    Result<std::unique_ptr<ObjectStore>> store = OpenStore(url);
    return store.ok() && ListDatasetVersions(**store, "").ok();
  }

  // True once a finished shard object exists under the local dataset directory `dir`.
  static bool HasShard(const std::string& dir) {
    std::error_code ec;
    for (std::filesystem::recursive_directory_iterator it(dir, ec), end; !ec && it != end;
         it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.starts_with("shard-") && !name.ends_with(".tmp")) return true;
    }
    return false;
  }

  // Starts a JSONL pack from a pipe into `dst` (64 KiB shards), feeds it until the first shard
  // is written, and returns its pid with the pipe still open (the pack waits for more input).
  pid_t StartStalledPack(const std::string& dst, int* stdin_fd) {
    const pid_t pid = Start({"pack", "-", dst, "--shard-size", "64K", "--quiet"}, stdin_fd);
    std::string line = "{\"text\": \"" + std::string(1000, 'x') + "\"}\n";
    for (int i = 0; i < 3000 && !HasShard(dst); ++i) {
      for (int j = 0; j < 10; ++j) {
        if (::write(*stdin_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
          ADD_FAILURE() << "pack died early";
          return pid;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_TRUE(HasShard(dst)) << "no shard written";
    return pid;
  }

  testing::ScratchDir dir_{"pack-cli"};
  testing::ScratchDir io_{"pack-cli-io"};
};

TEST_F(PackCliTest, DirectoryTreeWithParentLabelsReadsBackByteExact) {
  std::mt19937_64 rng(1);
  const std::string src = dir_.Join("train");
  Samples expected;
  const std::vector<std::string> classes = {"n01440764", "n01443537", "n09999999"};
  for (size_t c = 0; c < classes.size(); ++c) {
    for (int i = 0; i < 5; ++i) {
      char stem[16];
      std::snprintf(stem, sizeof(stem), "img_%04d", i);
      const std::string jpeg = RandomBytes(rng, 1000 + rng() % 50'000);
      WriteFile(src + "/" + classes[c] + "/" + stem + ".JPEG", jpeg);
      Fields fields{{"JPEG", jpeg}, {"cls", std::to_string(c)}};
      if (i == 2) {
        WriteFile(src + "/" + classes[c] + "/" + stem + ".meta.json", "{\"i\":2}");
        fields["meta.json"] = "{\"i\":2}";
      }
      expected.emplace_back(classes[c] + "/" + stem, fields);
    }
  }
  const std::string dst = dir_.Join("ds");
  CliRun r = Granary({"pack", src, dst, "--label-from-parent"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "packed 15 samples")) << r.out;
  EXPECT_TRUE(Contains(r.out, "published version 1")) << r.out;
  EXPECT_TRUE(Contains(r.out, "0 unreadable record(s) skipped")) << r.out;
  EXPECT_EQ(ReadBack("file://" + dst), expected);
}

TEST_F(PackCliTest, WebDatasetTarShardsByPatternAndDirectory) {
  std::mt19937_64 rng(2);
  Samples expected;
  std::filesystem::create_directories(dir_.Join("tars"));
  for (int shard = 0; shard < 3; ++shard) {
    std::vector<std::pair<std::string, std::string>> members;
    for (int i = 0; i < 4; ++i) {
      const std::string key = "s" + std::to_string(shard) + "/" + std::to_string(1000 + i);
      const std::string img = RandomBytes(rng, 20'000), cls = std::to_string(i % 2);
      members.push_back({key + ".jpg", img});
      members.push_back({key + ".cls", cls});
      expected.emplace_back(key, Fields{{"jpg", img}, {"cls", cls}});
    }
    char name[64];
    std::snprintf(name, sizeof(name), "tars/shards-%06d.tar", shard);
    WriteTar(dir_.Join(name), members);
  }
  CliRun r = Granary({"pack", dir_.Join("tars/shards-{000000..000002}.tar"), dir_.Join("a")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadBack(dir_.Join("a")), expected);
  r = Granary({"pack", dir_.Join("tars"), dir_.Join("b"), "--workers", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadBack(dir_.Join("b")), expected);
}

TEST_F(PackCliTest, JsonlKeysValuesAndMalformedLineSkipOrStop) {
  WriteFile(dir_.Join("d.jsonl"),
            "{\"__key__\": \"a\", \"text\": \"caf\\u00e9\", \"score\": 0.5}\n"
            "{\"key\": \"b\", \"tokens\": [1, 2, 3], \"meta\": {\"x\": null}}\n"
            "\n"
            "{\"text\": \"no key\"}\n"
            "{\"text\": broken}\n"
            "{\"text\": \"last\", \"key\": 7}\n");
  const Samples expected = {
      {"a", {{"text", "caf\xc3\xa9"}, {"score", "0.5"}}},
      {"b", {{"tokens", "[1,2,3]"}, {"meta", "{\"x\":null}"}}},
      {"000000000003", {{"text", "no key"}}},
      {"000000000005", {{"text", "last"}, {"key", "7"}}},
  };
  CliRun r = Granary({"pack", dir_.Join("d.jsonl"), dir_.Join("skip")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err, dir_.Join("d.jsonl") + " line 5")) << r.err;
  EXPECT_TRUE(Contains(r.out, "1 unreadable record(s) skipped")) << r.out;
  EXPECT_EQ(ReadBack(dir_.Join("skip")), expected);

  r = Granary({"pack", dir_.Join("d.jsonl"), dir_.Join("stop"), "--on-error", "stop"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "line 5") && Contains(r.err, "nothing published")) << r.err;
  EXPECT_FALSE(Published(dir_.Join("stop")));
}

TEST_F(PackCliTest, UnreadableFilesAreSkippedOrStopThePack) {
  // As root nothing is unreadable by permission: use a FIFO and a dangling symlink instead.
  const std::string src = dir_.Join("src");
  WriteFile(src + "/0001.txt", "one");
  WriteFile(src + "/0002.txt", "two");
  ASSERT_EQ(::mkfifo((src + "/0002.bin").c_str(), 0644), 0);
  ASSERT_EQ(::symlink("/nonexistent/vanished", (src + "/0003.txt").c_str()), 0);
  WriteFile(src + "/0004.txt", "four");
  CliRun r = Granary({"pack", src, dir_.Join("skip")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err, src + "/0002.bin: not a regular file")) << r.err;
  EXPECT_TRUE(Contains(r.err, src + "/0003.txt") && Contains(r.err, "NotFound")) << r.err;
  EXPECT_TRUE(Contains(r.out, "2 unreadable record(s) skipped")) << r.out;
  EXPECT_EQ(ReadBack(dir_.Join("skip")),
            (Samples{{"0001", {{"txt", "one"}}}, {"0004", {{"txt", "four"}}}}));

  r = Granary({"pack", src, dir_.Join("stop"), "--on-error=stop"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "0002.bin") && Contains(r.err, "nothing published")) << r.err;
  EXPECT_FALSE(Published(dir_.Join("stop")));
}

TEST_F(PackCliTest, ExistingDatasetNeedsAppendWhichKeepsOldSamples) {
  WriteFile(dir_.Join("one/a.txt"), "A");
  WriteFile(dir_.Join("two/b.txt"), "B");
  const std::string dst = "file://" + dir_.Join("ds");
  ASSERT_EQ(Granary({"pack", dir_.Join("one"), dst}).exit_code, 0);
  CliRun r = Granary({"pack", dir_.Join("two"), dst});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "AlreadyExists") && Contains(r.err, "--append")) << r.err;
  r = Granary({"pack", dir_.Join("two"), dst, "--append"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "published version 2")) << r.out;
  uint64_t version = 0;
  EXPECT_EQ(ReadBack(dst, &version), (Samples{{"a", {{"txt", "A"}}}, {"b", {{"txt", "B"}}}}));
  EXPECT_EQ(version, 2u);
}

TEST_F(PackCliTest, ShardRolloverAndWorkerCountDoNotChangeTheDataset) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 300; ++i) {
    WriteFile(dir_.Join("src/d" + std::to_string(i % 4) + "/" + std::to_string(i) + ".bin"),
              RandomBytes(rng, rng() % 8000));
  }
  CliRun r = Granary({"pack", dir_.Join("src"), dir_.Join("w1"), "--workers", "1",
                      "--shard-size", "64K"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Granary({"pack", dir_.Join("src"), dir_.Join("w4"), "--workers=4", "--shard-size=64KiB"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t shards = 0;
  const Samples one = ReadBack(dir_.Join("w1"), nullptr, &shards);
  EXPECT_GT(shards, 5u);
  ASSERT_EQ(one.size(), 300u);
  EXPECT_EQ(ReadBack(dir_.Join("w4")), one);
}

TEST_F(PackCliTest, KilledPackPublishesNothingAndTheNextPackSucceeds) {
  const std::string dst = dir_.Join("ds");
  int stdin_fd = -1;
  const pid_t pid = StartStalledPack(dst, &stdin_fd);
  ::kill(pid, SIGKILL);
  CliRun r = Wait(pid);
  ::close(stdin_fd);
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
  EXPECT_FALSE(Published(dst));
  WriteFile(dir_.Join("small.jsonl"), "{\"a\": \"1\"}\n");
  r = Granary({"pack", dir_.Join("small.jsonl"), dst});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(ReadBack(dst), (Samples{{"000000000000", {{"a", "1"}}}}));
}

TEST_F(PackCliTest, InterruptedPackStopsCleanlyWithNothingPublished) {
  for (int signo : {SIGINT, SIGTERM}) {
    const std::string dst = dir_.Join("ds" + std::to_string(signo));
    int stdin_fd = -1;
    const pid_t pid = StartStalledPack(dst, &stdin_fd);
    ::kill(pid, signo);
    CliRun r = Wait(pid);
    ::close(stdin_fd);
    EXPECT_EQ(r.exit_code, 128 + signo);
    EXPECT_TRUE(Contains(r.err, "interrupted") && Contains(r.err, "nothing published")) << r.err;
    EXPECT_FALSE(Published(dst));
  }
}

TEST_F(PackCliTest, DestinationInsideTheSourceIsNotPacked) {
  WriteFile(dir_.Join("src/a.txt"), "A");
  // The second pack appends to a dataset whose objects lie inside SRC: they are not samples.
  for (int round = 0; round < 2; ++round) {
    CliRun r = Granary({"pack", dir_.Join("src"), dir_.Join("src/ds"), "--append"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(Contains(r.out, "0 unreadable record(s) skipped")) << r.out;
  }
  EXPECT_EQ(ReadBack(dir_.Join("src/ds")), (Samples{{"a", {{"txt", "A"}}}, {"a", {{"txt", "A"}}}}));
}

TEST_F(PackCliTest, EmptyOrMissingSourceAndUsageErrors) {
  std::filesystem::create_directories(dir_.Join("empty"));
  CliRun r = Granary({"pack", dir_.Join("empty"), dir_.Join("ds")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "no samples")) << r.err;
  EXPECT_FALSE(Published(dir_.Join("ds")));
  r = Granary({"pack", dir_.Join("nope"), dir_.Join("ds2")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, dir_.Join("nope"))) << r.err;
  EXPECT_EQ(Granary({"pack", dir_.Join("empty")}).exit_code, 2);
  EXPECT_EQ(Granary({"pack", "a", "b", "--shard-size", "lots"}).exit_code, 2);
  EXPECT_EQ(Granary({"pack", "a", "b", "--on-error", "ignore"}).exit_code, 2);
  r = Granary({"pack", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(r.out.starts_with("usage: granary pack SRC DST")) << r.out;
  r = Granary({"--help"});
  EXPECT_TRUE(Contains(r.out, "  pack ")) << r.out;
}

}  // namespace
}  // namespace granary
