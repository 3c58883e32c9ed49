#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/testing/test_util.h"
#include "doctor.h"
#include "doctor_measure.h"

namespace granary::doctor {
namespace {

namespace fs = std::filesystem;

using ::granary::testing::ScratchDir;

Result<DoctorArgs> Parse(std::vector<std::string> words) {
  words.insert(words.begin(), "doctor");
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  return ParseDoctorArgs(static_cast<int>(argv.size()), argv.data());
}

int RunCli(std::vector<std::string> words) {
  words.insert(words.begin(), "doctor");
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  return RunDoctor(static_cast<int>(argv.size()), argv.data());
}

size_t CountEntries(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

TEST(DoctorArgsTest, DefaultsAndFlags) {
  Result<DoctorArgs> a = Parse({});
  GRANARY_ASSERT_OK(a);
  EXPECT_EQ(a->dir, ".");
  EXPECT_FALSE(a->json);
  EXPECT_EQ(a->size_mib, 0u);

  a = Parse({"/tmp/x", "--json", "--quick", "--size-mib", "64", "--runtime-s=0.5",
             "--only", "seqread,randread-4k", "--keep-file", "--engine", "psync"});
  GRANARY_ASSERT_OK(a);
  EXPECT_EQ(a->dir, "/tmp/x");
  EXPECT_TRUE(a->json);
  EXPECT_TRUE(a->quick);
  EXPECT_EQ(a->size_mib, 64u);
  EXPECT_DOUBLE_EQ(a->runtime_s, 0.5);
  EXPECT_EQ(a->only, (std::vector<std::string>{"seqread", "randread-4k"}));
  EXPECT_TRUE(a->keep_file);
  EXPECT_EQ(a->engine, IoEngineKind::kPsync);
}

TEST(DoctorArgsTest, RejectsBadInput) {
  EXPECT_EQ(Parse({"--size-mib"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--size-mib", "-3"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--size-mib", "1.5"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--runtime-s", "abc"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--only", "bogus"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--engine", "spdk"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"--frobnicate"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse({"a", "b"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(RunCli({"--no-such-flag"}), 2);
}

TEST(DoctorPointsTest, IdsAreUniqueAndMatchByPrefix) {
  std::set<std::string> ids;
  for (const Point& p : StandardPoints()) {
    EXPECT_TRUE(ids.insert(p.id).second) << p.id;
    const bool disk = p.kind != PointKind::kMemcpyReused && p.kind != PointKind::kMemcpyFresh;
    EXPECT_EQ(disk, !FioRw(p.kind).empty()) << p.id;
    EXPECT_EQ(disk, p.block_bytes > 0 && p.queue_depth > 0) << p.id;
  }
  EXPECT_TRUE(PointMatches("randread-4k-qd32", "randread"));
  EXPECT_TRUE(PointMatches("randread-4k-qd32", "randread-4k"));
  EXPECT_TRUE(PointMatches("randread-4k-qd32", "randread-4k-qd32"));
  EXPECT_FALSE(PointMatches("randread-4k-qd32", "randread-4k-qd3"));
  EXPECT_FALSE(PointMatches("randread-4k-qd32", "rand"));
  EXPECT_FALSE(PointMatches("seqread-1m", ""));
}

TEST(DoctorPercentileTest, NearestRank) {
  std::vector<uint64_t> v;
  EXPECT_EQ(Percentile(v, 0.5), 0u);
  for (uint64_t i = 100; i >= 1; --i) v.push_back(i);
  EXPECT_EQ(Percentile(v, 0.50), 50u);
  EXPECT_EQ(Percentile(v, 0.99), 99u);
  EXPECT_EQ(Percentile(v, 1.0), 100u);
  EXPECT_EQ(Percentile(v, 0.0), 1u);
}

MeasureOptions SmallOptions(const std::string& dir) {
  MeasureOptions o;
  o.dir = dir;
  o.file_bytes = 8u << 20;
  o.runtime_s = 0.05;
  o.memcpy_bytes = 1u << 20;
  o.memcpy_repeats = 3;
  return o;
}

TEST(DoctorTest, EveryPointReportsPositiveNumbersAndTheFileIsRemoved) {
  ScratchDir dir("doctor");
  ASSERT_FALSE(dir.path().empty());
  std::string file;
  {
    Result<std::unique_ptr<Doctor>> doctor = Doctor::Create(SmallOptions(dir.path()));
    GRANARY_ASSERT_OK(doctor);
    file = (*doctor)->file_path();
    for (const Point& p : StandardPoints()) {
      Result<std::vector<Measurement>> r = (*doctor)->Run(p);
      GRANARY_ASSERT_OK(r) << p.id;
      ASSERT_EQ(r->size(), p.kind == PointKind::kRandRead ? 3u : 1u) << p.id;
      for (const Measurement& m : *r) {
        EXPECT_EQ(m.point, p.id);
        EXPECT_GT(m.value, 0) << p.id << " " << m.metric;
        EXPECT_GT(m.seconds, 0) << p.id;
        EXPECT_EQ(m.queue_depth, p.queue_depth);
      }
      if (p.kind == PointKind::kRandRead) {
        EXPECT_LE((*r)[1].value, (*r)[2].value) << "p50 above p99 for " << p.id;
      }
      if (p.kind == PointKind::kSeqWrite || p.kind == PointKind::kSeqRead) {
        EXPECT_EQ((*r)[0].bytes, 8u << 20) << p.id;
      }
    }
    struct stat st;
    ASSERT_EQ(::stat(file.c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), 8u << 20);
  }
  EXPECT_FALSE(fs::exists(file));
}

TEST(DoctorTest, ReadsLayOutTheFileFirstAndKeepFileKeepsIt) {
  ScratchDir dir("doctor");
  MeasureOptions o = SmallOptions(dir.path());
  o.keep_file = true;
  std::string file;
  {
    Result<std::unique_ptr<Doctor>> doctor = Doctor::Create(o);
    GRANARY_ASSERT_OK(doctor);
    file = (*doctor)->file_path();
    const Point& read = StandardPoints()[2];
    ASSERT_EQ(read.kind, PointKind::kSeqRead);
    Result<std::vector<Measurement>> r = (*doctor)->Run(read);
    GRANARY_ASSERT_OK(r);
  }
  ASSERT_TRUE(fs::exists(file));
  EXPECT_EQ(fs::file_size(file), 8u << 20);
}

TEST(DoctorTest, RunDoctorReportsAndCleansUp) {
  ScratchDir dir("doctor");
  const std::string sub = dir.path() + "/made/by/doctor";
  EXPECT_EQ(RunCli({sub, "--json", "--size-mib", "8", "--runtime-s", "0.05", "--only",
                 "seqwrite-1m,randread-4k-qd1"}),
            0);
  // The test file and the directories doctor created are gone again.
  EXPECT_EQ(CountEntries(dir.path()), 0u);
}

TEST(DoctorTest, UnusableDirectoryFailsWithExitCodeOne) {
  ScratchDir dir("doctor");
  const std::string plain = dir.path() + "/plain";
  std::ofstream(plain) << "x";
  EXPECT_EQ(RunCli({plain, "--size-mib", "8"}), 1);
  EXPECT_EQ(RunCli({plain + "/sub", "--size-mib", "8"}), 1);
  // A test file larger than the disk: refused before writing anything.
  EXPECT_EQ(RunCli({dir.path(), "--size-mib", "1073741824"}), 1);
  EXPECT_EQ(CountEntries(dir.path()), 1u);
}

}  // namespace
}  // namespace granary::doctor
