// Crash safety of LocalStore with real processes: a writer process overwriting one key with
// large objects (Put and Writer) is killed with SIGKILL at random moments; afterwards the key
// must hold one complete, checksum-valid value at least as new as the last reported commit,
// nothing partial may be listed, and the dead writer's temp files are removed at the next open.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include "core/testing/test_util.h"
#include "crash_payload.h"
#include "granary/store.h"
#include "store/local/local_store.h"

namespace granary {
namespace {

struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;  // the child's stdout
};

Child SpawnWriter(const std::string& root, const std::string& key, uint64_t first_sequence) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return {};
  const std::string sequence = std::to_string(first_sequence);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    execl(GRANARY_CRASH_WRITER, GRANARY_CRASH_WRITER, root.c_str(), key.c_str(),
          sequence.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  return {pid, fdopen(fds[0], "r")};
}

uint64_t SequenceOf(const std::string& value) {
  uint64_t sequence = 0;
  std::memcpy(&sequence, value.data() + 12, 8);
  return sequence;
}

TEST(StoreCrashTest, KilledWriterLeavesOneCompleteValue) {
  testing::ScratchDir dir("crash");
  const std::string root = dir.Join("root");
  const std::string key = "ckpt/latest.bin";
  {
    Result<std::unique_ptr<ObjectStore>> store = NewLocalStore(root, StoreOptions{});
    GRANARY_ASSERT_OK(store);
    GRANARY_ASSERT_OK((*store)->Put(key, testing::MakeCrashPayload(0, 5000)));
  }
  std::mt19937 rng(std::random_device{}());
  int rounds_with_leftovers = 0;
  constexpr int kRounds = 6;
  for (int round = 1; round <= kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const uint64_t first_sequence = round * 1000000ull;
    Child child = SpawnWriter(root, key, first_sequence);
    ASSERT_GT(child.pid, 0);
    ASSERT_NE(child.out, nullptr);
    // Let it commit a few values, then kill it at a random moment of the next ones.
    const int wanted = 1 + static_cast<int>(rng() % 3);
    uint64_t last_committed = 0;
    char line[128];
    for (int seen = 0; seen < wanted; ++seen) {
      ASSERT_NE(fgets(line, sizeof(line), child.out), nullptr) << "writer died early";
      unsigned long long sequence = 0;
      ASSERT_EQ(sscanf(line, "committed %llu", &sequence), 1) << line;
      last_committed = sequence;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 250));
    ASSERT_EQ(kill(child.pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(child.pid, &status, 0), child.pid);
    // Commits reported before the kill must be visible too.
    while (fgets(line, sizeof(line), child.out) != nullptr) {
      unsigned long long sequence = 0;
      if (sscanf(line, "committed %llu", &sequence) == 1) last_committed = sequence;
    }
    fclose(child.out);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "writer exited on its own with status " << status;

    const std::string dead_prefix = std::to_string(child.pid) + "-";
    auto leftovers = [&] {
      int n = 0;
      for (const auto& entry : std::filesystem::directory_iterator(root + "/.granary/tmp")) {
        if (entry.path().filename().string().starts_with(dead_prefix)) ++n;
      }
      return n;
    };
    if (leftovers() > 0) ++rounds_with_leftovers;

    Result<std::unique_ptr<ObjectStore>> store = NewLocalStore(root, StoreOptions{});
    GRANARY_ASSERT_OK(store);
    EXPECT_EQ(leftovers(), 0) << "temp files of dead pid " << child.pid << " survived the open";
    Result<std::string> value = (*store)->GetAll(key);
    GRANARY_ASSERT_OK(value);
    std::string why;
    ASSERT_TRUE(testing::CheckCrashPayload(*value, &why)) << why;
    EXPECT_GE(SequenceOf(*value), last_committed);
    EXPECT_LT(SequenceOf(*value), first_sequence + 1000000);
    Result<std::vector<ObjectInfo>> all = (*store)->List("");
    GRANARY_ASSERT_OK(all);
    ASSERT_EQ(all->size(), 1u);
    EXPECT_EQ((*all)[0].key, key);
    EXPECT_EQ((*all)[0].size_bytes, value->size());
  }
  // Informational: how often the kill landed while a temp file existed.
  std::printf("kills that left temp files behind: %d of %d\n", rounds_with_leftovers, kRounds);
}

}  // namespace
}  // namespace granary
