// End to end: `granary ckpt ls|show|verify|rm|gc` run as a real process over a checkpoint
// directory built with RankWriter + CommitStep; checks outputs and exit codes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint_manifest.h"
#include "checkpoint/checkpoint_reader.h"
#include "checkpoint/checkpoint_test_util.h"
#include "core/testing/test_util.h"
#include "granary/store.h"

namespace granary::checkpoint {
namespace {

using testing::Contains;

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class CkptCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GRANARY_ASSERT_OK_AND_ASSIGN(store_, OpenStore(ckpt_dir_.path()));
    // Steps 10, 20, 30 (30 reuses "embed" from 20, which wrote it again) and a crashed 25.
    testing::StepSpec spec;
    spec.tensors = {{"embed", 100'000}, {"layer.0.weight", 50'000}, {"bias", 40}};
    std::vector<RankManifest> previous;
    for (uint64_t step : {10, 20, 30}) {
      spec.step = step;
      if (step == 30) {
        spec.reuse_from = &previous;
        spec.reused = {"embed"};
      }
      GRANARY_ASSERT_OK_AND_ASSIGN(previous, testing::WriteStep(*store_, "", spec));
      if (step == 20) {
        testing::StepSpec crashed;
        crashed.step = 25;
        crashed.tensors = {{"embed", 10}};
        crashed.commit = false;
        GRANARY_ASSERT_OK(testing::WriteStep(*store_, "", crashed).status());
      }
    }
    step30_ = previous[0];
  }

  // Runs the granary binary with `args`; stdout and stderr go to files (no pipe deadlocks).
  CliRun Granary(const std::vector<std::string>& args) {
    const std::string out_path = io_dir_.Join("out"), err_path = io_dir_.Join("err");
    std::vector<char*> argv;
    std::string binary = GRANARY_CLI;
    argv.push_back(binary.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
      const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out < 0 || err < 0) _exit(126);
      dup2(out, STDOUT_FILENO);
      dup2(err, STDERR_FILENO);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    CliRun run;
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
      ADD_FAILURE() << "could not run " << binary;
      return run;
    }
    run.exit_code = WEXITSTATUS(status);
    run.out = ReadFile(out_path);
    run.err = ReadFile(err_path);
    return run;
  }

  // Lines of `text` that start with `prefix`.
  static std::vector<std::string> LinesStartingWith(const std::string& text,
                                                    const std::string& prefix) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind(prefix, 0) == 0) out.push_back(line);
    }
    return out;
  }

  granary::testing::ScratchDir ckpt_dir_{"ckpt-cli"};
  granary::testing::ScratchDir io_dir_{"ckpt-cli-io"};
  std::unique_ptr<ObjectStore> store_;
  RankManifest step30_;
};

TEST_F(CkptCliTest, LsListsCommittedStepsAndMarksTheNewest) {
  CliRun r = Granary({"ckpt", "ls", ckpt_dir_.path()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(LinesStartingWith(r.out, "10 ").size(), 1u) << r.out;
  EXPECT_EQ(LinesStartingWith(r.out, "20 ").size(), 1u) << r.out;
  EXPECT_TRUE(LinesStartingWith(r.out, "25 ").empty()) << r.out;  // never committed
  ASSERT_EQ(LinesStartingWith(r.out, "30 ").size(), 1u) << r.out;
  EXPECT_TRUE(LinesStartingWith(r.out, "30 ")[0].ends_with("*")) << r.out;
  EXPECT_FALSE(LinesStartingWith(r.out, "20 ")[0].ends_with("*")) << r.out;

  r = Granary({"ckpt", "ls", "file://" + ckpt_dir_.path(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> lines;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_EQ(lines[2]["step"], 30);
  EXPECT_EQ(lines[2]["newest"], true);
  EXPECT_EQ(lines[2]["tensors"], 3);
  EXPECT_EQ(lines[2]["bytes"], 150'040);
  EXPECT_EQ(lines[2]["written_bytes"], 50'040);  // "embed" is step 20's bytes
  EXPECT_EQ(lines[1]["written_bytes"], 150'040);
}

TEST_F(CkptCliTest, ShowPrintsTheTensorsOfTheNewestStep) {
  CliRun r = Granary({"ckpt", "show", ckpt_dir_.path()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "step:          30")) << r.out;
  EXPECT_TRUE(Contains(r.out, "{\"step\":30}")) << r.out;  // user metadata
  ASSERT_EQ(LinesStartingWith(r.out, "0     embed").size(), 1u) << r.out;
  EXPECT_TRUE(Contains(LinesStartingWith(r.out, "0     embed")[0], "yes (step 20)")) << r.out;
  EXPECT_TRUE(Contains(LinesStartingWith(r.out, "0     bias")[0], " no")) << r.out;

  r = Granary({"ckpt", "show", ckpt_dir_.path(), "10"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "step:          10")) << r.out;
  r = Granary({"ckpt", "show", ckpt_dir_.path(), "25"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "NotFound")) << r.err;
}

TEST_F(CkptCliTest, VerifyFailsNamingTheDamagedTensorAndFile) {
  CliRun r = Granary({"ckpt", "verify", ckpt_dir_.path(), "--all"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(LinesStartingWith(r.out, "step ").size(), 3u) << r.out;
  EXPECT_TRUE(Contains(r.out, "step 30: OK")) << r.out;

  const TensorEntry& layer = step30_.tensors[1];
  ASSERT_EQ(layer.name, "layer.0.weight");
  GRANARY_ASSERT_OK(testing::FlipByte(*store_, layer.key, layer.offset + 777));
  r = Granary({"ckpt", "verify", ckpt_dir_.path()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.out, "DAMAGED rank 0 tensor \"layer.0.weight\" in " + layer.key)) << r.out;
  EXPECT_TRUE(Contains(r.err, "granary: ckpt verify") && Contains(r.err, "DataLoss") &&
              Contains(r.err, "layer.0.weight"))
      << r.err;
  // Step 10 is intact.
  r = Granary({"ckpt", "verify", ckpt_dir_.path(), "10"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

TEST_F(CkptCliTest, GcRemovesOldStepsAndCrashedLeftovers) {
  CliRun r = Granary({"ckpt", "gc", ckpt_dir_.path(), "--keep-last", "1", "--dry-run"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "would remove step 10")) << r.out;
  EXPECT_EQ(*ListCommittedSteps(*store_, ""), (std::vector<uint64_t>{10, 20, 30}));

  r = Granary({"ckpt", "gc", ckpt_dir_.path(), "--keep-last=1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "removed step 10\nremoved step 20\n")) << r.out;
  EXPECT_TRUE(Contains(r.out, "removed uncommitted step 25")) << r.out;
  EXPECT_TRUE(Contains(r.out, "kept steps: 30")) << r.out;
  EXPECT_EQ(*ListCommittedSteps(*store_, ""), (std::vector<uint64_t>{30}));
  // Step 30 still reads: step 20's data file it references survived.
  r = Granary({"ckpt", "verify", ckpt_dir_.path()});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  r = Granary({"ckpt", "ls", ckpt_dir_.path()});
  EXPECT_TRUE(LinesStartingWith(r.out, "10 ").empty()) << r.out;
  EXPECT_EQ(LinesStartingWith(r.out, "30 ").size(), 1u) << r.out;
}

TEST_F(CkptCliTest, RmRefusesTheNewestStepWithoutForce) {
  CliRun r = Granary({"ckpt", "rm", ckpt_dir_.path(), "30"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Contains(r.err, "FailedPrecondition") && Contains(r.err, "--force")) << r.err;
  EXPECT_EQ(*ListCommittedSteps(*store_, ""), (std::vector<uint64_t>{10, 20, 30}));

  r = Granary({"ckpt", "rm", ckpt_dir_.path(), "10"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(*ListCommittedSteps(*store_, ""), (std::vector<uint64_t>{20, 30}));
  r = Granary({"ckpt", "rm", ckpt_dir_.path(), "30", "--force"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(*ListCommittedSteps(*store_, ""), (std::vector<uint64_t>{20}));
}

TEST_F(CkptCliTest, UsageErrorsExitTwo) {
  EXPECT_EQ(Granary({"ckpt"}).exit_code, 2);
  EXPECT_EQ(Granary({"ckpt", "frobnicate", ckpt_dir_.path()}).exit_code, 2);
  EXPECT_EQ(Granary({"ckpt", "gc", ckpt_dir_.path(), "--keep-last", "many"}).exit_code, 2);
  EXPECT_EQ(Granary({"ckpt", "rm", ckpt_dir_.path()}).exit_code, 2);
  EXPECT_EQ(Granary({"ckpt", "ls", ckpt_dir_.path(), "--bogus"}).exit_code, 2);
  CliRun help = Granary({"ckpt", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_TRUE(Contains(help.out, "usage: granary ckpt")) << help.out;
}

}  // namespace
}  // namespace granary::checkpoint
