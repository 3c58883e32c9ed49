// Sources of `granary pack` (pack_source.h) without a dataset writer: directory scanning,
// WebDataset tar grouping, JSONL keys and values, error items, and the ordered read-ahead.
#include "pack_source.h"

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "core/testing/test_util.h"

namespace granary::cli::pack {
namespace {

using Members = std::vector<std::pair<std::string, std::string>>;  // name, data

void WriteFile(const std::string& path, std::string_view data) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

// Writes a tar (pax, as Python's tarfile does) with `members`, gzip-compressed if `gzip`.
void WriteTar(const std::string& path, const Members& members, bool gzip = false) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) archive_write_add_filter_gzip(a);
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
  for (const auto& [name, data] : members) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(data.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
    ASSERT_EQ(archive_write_data(a, data.data(), data.size()), static_cast<la_ssize_t>(data.size()));
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
}

// Every item of `source`, in order, read with `workers` threads and a small budget (so tasks
// block on it).
std::vector<PackItem> ReadAll(PackSource& source, unsigned workers = 3,
                              uint64_t budget_bytes = 64 << 10) {
  ReadAhead reader(source, workers, budget_bytes);
  std::vector<PackItem> out;
  PackItem item;
  for (;;) {
    const ReadAhead::Pop pop = reader.Next(&item, std::chrono::milliseconds(100));
    if (pop == ReadAhead::Pop::kEnd) break;
    if (pop == ReadAhead::Pop::kItem) out.push_back(std::move(item));
  }
  return out;
}

// "key{field=data,...}" or "ERROR(where)".
std::string Show(const PackItem& item) {
  if (const auto* e = std::get_if<SourceError>(&item)) return "ERROR(" + e->where + ")";
  const PackSample& s = std::get<PackSample>(item);
  std::string out = s.key + "{";
  for (size_t i = 0; i < s.fields.size(); ++i) {
    out += (i ? "," : "") + s.fields[i].name + "=" + s.fields[i].data;
  }
  return out + "}";
}

std::vector<std::string> ShowAll(const std::vector<PackItem>& items) {
  std::vector<std::string> out;
  for (const PackItem& i : items) out.push_back(Show(i));
  return out;
}

TEST(PackSourceTest, ExpandBracesRangesListsAndErrors) {
  EXPECT_EQ(*ExpandBraces("s-{000..002}.tar"),
            (std::vector<std::string>{"s-000.tar", "s-001.tar", "s-002.tar"}));
  EXPECT_EQ(*ExpandBraces("{a,b}-{8..10}"),
            (std::vector<std::string>{"a-8", "a-9", "a-10", "b-8", "b-9", "b-10"}));
  EXPECT_EQ(*ExpandBraces("plain.tar"), (std::vector<std::string>{"plain.tar"}));
  EXPECT_FALSE(ExpandBraces("s-{000..002.tar").ok());
  EXPECT_FALSE(ExpandBraces("s-{5..2}.tar").ok());
  EXPECT_FALSE(ExpandBraces("s-{a..b}.tar").ok());
}

TEST(PackSourceTest, ParseByteSizeSuffixes) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseByteSize("64MiB"), 64ull << 20);
  EXPECT_EQ(*ParseByteSize("1g"), 1ull << 30);
  EXPECT_EQ(*ParseByteSize("1.5K"), 1536u);
  EXPECT_EQ(*ParseByteSize("2MB"), 2'000'000u);
  for (const char* bad : {"", "M", "12X", "1MiBs", "0", "-5", "1e3"}) {
    EXPECT_FALSE(ParseByteSize(bad).ok()) << bad;
  }
}

TEST(PackSourceTest, ValidateSampleRejectsWhatTheFormatCannotHold) {
  EXPECT_TRUE(ValidateSample({"k", {{"jpg", "x"}, {"cls", "1"}}}).ok());
  EXPECT_FALSE(ValidateSample({"", {{"jpg", "x"}}}).ok());
  EXPECT_FALSE(ValidateSample({std::string("a\0b", 3), {}}).ok());
  EXPECT_FALSE(ValidateSample({"k", {{"a/b", "x"}}}).ok());
  EXPECT_FALSE(ValidateSample({"k", {{"__key__", "x"}}}).ok());
  EXPECT_FALSE(ValidateSample({"k", {{"jpg", "x"}, {"jpg", "y"}}}).ok());
  EXPECT_FALSE(ValidateSample({"k", {{std::string(256, 'f'), "x"}}}).ok());
}

TEST(PackSourceTest, DirectoryGroupsStemsSortsKeysAndLabelsParents) {
  testing::ScratchDir dir("pack-dir");
  const std::string root = dir.Join("train");
  WriteFile(root + "/n02/b.jpg", "B");
  WriteFile(root + "/n01/a.jpg", "A");
  WriteFile(root + "/n01/a.seg.png", "S");
  WriteFile(root + "/n01/a.json", "{}");
  WriteFile(root + "/n01/.hidden.jpg", "H");
  WriteFile(root + "/n03/deep/c.txt", "C");
  GRANARY_ASSERT_OK_AND_ASSIGN(auto source, OpenDirSource(root, /*label_from_parent=*/true));
  EXPECT_EQ(source->total_samples(), 3u);
  EXPECT_EQ(source->total_bytes(), 6u);
  // Class folders by parent name: deep=0, n01=1, n02=2.
  EXPECT_EQ(ShowAll(ReadAll(*source)),
            (std::vector<std::string>{"n01/a{jpg=A,json={},seg.png=S,cls=1}", "n02/b{jpg=B,cls=2}",
                                      "n03/deep/c{txt=C,cls=0}"}));
  GRANARY_ASSERT_OK_AND_ASSIGN(source, OpenPackSource(root, {}));
  EXPECT_EQ(ShowAll(ReadAll(*source))[0], "n01/a{jpg=A,json={},seg.png=S}");
}

TEST(PackSourceTest, DirectoryReportsUnreadableFilesAndDropsTheirSamples) {
  testing::ScratchDir dir("pack-dir-bad");
  const std::string root = dir.Join("src");
  WriteFile(root + "/0001.jpg", "1");
  WriteFile(root + "/0002.jpg", "2");
  WriteFile(root + "/0002.cls", "c");
  WriteFile(root + "/README", "no extension");
  ASSERT_EQ(::mkfifo((root + "/0002.txt").c_str(), 0644), 0);          // never hangs the reader
  ASSERT_EQ(::symlink("/nonexistent/x", (root + "/0003.jpg").c_str()), 0);  // a vanished file
  WriteFile(root + "/0004.jpg", "4");
  GRANARY_ASSERT_OK_AND_ASSIGN(auto source, OpenDirSource(root, false));
  EXPECT_EQ(ShowAll(ReadAll(*source)),
            (std::vector<std::string>{"ERROR(" + root + "/README)", "0001{jpg=1}",
                                      "ERROR(" + root + "/0002.txt)",
                                      "ERROR(" + root + "/0003.jpg)", "0004{jpg=4}"}));
}

TEST(PackSourceTest, TarGroupsConsecutiveMembersLikeWebDataset) {
  testing::ScratchDir dir("pack-tar");
  WriteTar(dir.Join("a.tar"), {{"./x/0001.jpg", "J1"},
                               {"./x/0001.cls", "7"},
                               {"x/0002.seg.png", "P2"},
                               {"__index__", "meta"},
                               {"noext", "skipped"},
                               {"x.y/0003.txt", "T3"}});
  WriteTar(dir.Join("b.tar.gz"), {{"0004.txt", "T4"}}, /*gzip=*/true);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto source,
                               OpenPackSource("" + dir.Join("{a.tar,b.tar.gz}"), {}));
  EXPECT_EQ(ShowAll(ReadAll(*source)),
            (std::vector<std::string>{"x/0001{jpg=J1,cls=7}", "x/0002{seg.png=P2}",
                                      "x.y/0003{txt=T3}", "0004{txt=T4}"}));
  // A directory holding only tar files is read as tar shards, in name order.
  GRANARY_ASSERT_OK_AND_ASSIGN(source, OpenPackSource(dir.path(), {}));
  EXPECT_EQ(ShowAll(ReadAll(*source)).size(), 4u);
}

TEST(PackSourceTest, TruncatedTarKeepsEarlierSamplesAndReportsTheMember) {
  testing::ScratchDir dir("pack-tar-cut");
  const std::string big(100'000, 'b');
  WriteTar(dir.Join("t.tar"), {{"0001.bin", "small"}, {"0002.bin", big}, {"0003.bin", "c"}});
  ASSERT_EQ(::truncate(dir.Join("t.tar").c_str(), 512 * 3 + 50'000), 0);
  WriteTar(dir.Join("u.tar"), {{"0009.bin", "next"}});
  GRANARY_ASSERT_OK_AND_ASSIGN(auto source, OpenTarSource("t", {dir.Join("t.tar"),
                                                                dir.Join("missing.tar"),
                                                                dir.Join("u.tar")}));
  std::vector<PackItem> items = ReadAll(*source);
  ASSERT_EQ(items.size(), 4u) << ::testing::PrintToString(ShowAll(items));
  EXPECT_EQ(Show(items[0]), "0001{bin=small}");
  ASSERT_TRUE(std::holds_alternative<SourceError>(items[1]));
  EXPECT_EQ(std::get<SourceError>(items[1]).where, dir.Join("t.tar") + " member 0002.bin");
  EXPECT_EQ(Show(items[2]), "ERROR(" + dir.Join("missing.tar") + ")");
  EXPECT_EQ(std::get<SourceError>(items[2]).status.code(), StatusCode::kNotFound);
  EXPECT_EQ(Show(items[3]), "0009{bin=next}");
}

TEST(PackSourceTest, JsonlKeysValuesBlankAndMalformedLines) {
  testing::ScratchDir dir("pack-jsonl");
  WriteFile(dir.Join("d.jsonl"),
            "{\"text\": \"h\\u00e9\", \"n\": 3, \"tags\": [1, \"a\"]}\n"
            "\n"
            "{\"key\": \"k2\", \"text\": \"two\"}\r\n"
            "{not json\n"
            "[1, 2]\n"
            "{\"__key__\": \"k5\", \"key\": 9, \"x\": null}\n"
            "{\"__key__\": 5}\n"
            "{\"key\": 6, \"x\": {\"b\": 1, \"a\": true}}");  // no final newline
  GRANARY_ASSERT_OK_AND_ASSIGN(auto source, OpenPackSource(dir.Join("d.jsonl"), {}));
  EXPECT_EQ(ShowAll(ReadAll(*source)),
            (std::vector<std::string>{
                "000000000000{n=3,tags=[1,\"a\"],text=h\xc3\xa9}", "k2{text=two}",
                "ERROR(" + dir.Join("d.jsonl") + " line 4)",
                "ERROR(" + dir.Join("d.jsonl") + " line 5)", "k5{key=9,x=null}",
                "ERROR(" + dir.Join("d.jsonl") + " line 7)",
                "000000000007{key=6,x={\"a\":true,\"b\":1}}"}));
}

TEST(PackSourceTest, JsonlLineNumbersSurviveBlockBoundariesAndCompression) {
  testing::ScratchDir dir("pack-jsonl-big");
  std::string text;
  const int kLines = 60'000;  // ~6 MiB: more than one 4 MiB block
  const std::string pad(90, 'p');
  for (int i = 0; i < kLines; ++i) text += "{\"i\": " + std::to_string(i) + ", \"p\": \"" + pad + "\"}\n";
  WriteFile(dir.Join("big.jsonl"), text);
  GRANARY_ASSERT_OK_AND_ASSIGN(auto source, OpenPackSource(dir.Join("big.jsonl"), {}));
  std::vector<PackItem> items = ReadAll(*source, 4, 1 << 20);
  ASSERT_EQ(items.size(), static_cast<size_t>(kLines));
  for (int i = 0; i < kLines; i += 997) {
    char key[16];
    std::snprintf(key, sizeof(key), "%012d", i);
    EXPECT_EQ(Show(items[i]), std::string(key) + "{i=" + std::to_string(i) + ",p=" + pad + "}");
  }
  // The same through gzip (libarchive's raw format with a filter).
  archive* a = archive_write_new();
  archive_write_set_format_raw(a);
  archive_write_add_filter_gzip(a);
  ASSERT_EQ(archive_write_open_filename(a, dir.Join("big.jsonl.gz").c_str()), ARCHIVE_OK);
  archive_entry* e = archive_entry_new();
  archive_entry_set_filetype(e, AE_IFREG);
  ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
  archive_write_data(a, text.data(), text.size());
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  GRANARY_ASSERT_OK_AND_ASSIGN(source, OpenPackSource(dir.Join("big.jsonl.gz"), {}));
  std::vector<PackItem> unzipped = ReadAll(*source, 2, 1 << 20);
  ASSERT_EQ(unzipped.size(), items.size());
  EXPECT_EQ(Show(unzipped.back()), Show(items.back()));
}

TEST(PackSourceTest, OrderDoesNotDependOnWorkers) {
  testing::ScratchDir dir("pack-order");
  for (int i = 0; i < 2000; ++i) {
    WriteFile(dir.Join("s/" + std::to_string(i % 7) + "/" + std::to_string(i) + ".bin"),
              std::string(static_cast<size_t>(i % 300), 'x'));
  }
  GRANARY_ASSERT_OK_AND_ASSIGN(auto one, OpenDirSource(dir.Join("s"), false));
  GRANARY_ASSERT_OK_AND_ASSIGN(auto eight, OpenDirSource(dir.Join("s"), false));
  const std::vector<std::string> a = ShowAll(ReadAll(*one, 1, 4096));
  const std::vector<std::string> b = ShowAll(ReadAll(*eight, 8, 4096));
  ASSERT_EQ(a.size(), 2000u);
  EXPECT_EQ(a, b);
  std::vector<std::string> keys;
  for (const std::string& s : a) keys.push_back(s.substr(0, s.find('{')));
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
}

TEST(PackSourceTest, CancelStopsBlockedWorkers) {
  testing::ScratchDir dir("pack-cancel");
  for (int i = 0; i < 500; ++i) WriteFile(dir.Join("s/" + std::to_string(i) + ".bin"), "data");
  GRANARY_ASSERT_OK_AND_ASSIGN(auto source, OpenDirSource(dir.Join("s"), false));
  ReadAhead reader(*source, 4, 16);  // every task blocks after its first item
  PackItem item;
  ASSERT_EQ(reader.Next(&item, std::chrono::seconds(10)), ReadAhead::Pop::kItem);
  reader.Cancel();  // the destructor then joins without hanging
}

TEST(PackSourceTest, MissingSourceAndMismatchedOptions) {
  testing::ScratchDir dir("pack-missing");
  Result<std::unique_ptr<PackSource>> r = OpenPackSource(dir.Join("nope"), {});
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(dir.Join("nope")), std::string::npos);
  WriteFile(dir.Join("d.jsonl"), "{}\n");
  SourceOptions labels;
  labels.label_from_parent = true;
  r = OpenPackSource(dir.Join("d.jsonl"), labels);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace granary::cli::pack
