// Helper for store_crash_test: opens a LocalStore and overwrites one key with large
// self-checking payloads forever, alternating Put and a streaming Writer, until it is killed.
// Prints "committed <sequence>\n" to stdout after each successful write.
//
//   store_crash_writer ROOT KEY FIRST_SEQUENCE
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "granary/store.h"
#include "store/local/local_store.h"
#include "crash_payload.h"

namespace {

int Fail(const std::string& what, const granary::Status& s) {
  std::fprintf(stderr, "store_crash_writer: %s: %s\n", what.c_str(), s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace granary;
  if (argc != 4) {
    std::fprintf(stderr, "usage: store_crash_writer ROOT KEY FIRST_SEQUENCE\n");
    return 2;
  }
  const std::string key = argv[2];
  Result<std::unique_ptr<ObjectStore>> store = NewLocalStore(argv[1], StoreOptions{});
  if (!store.ok()) return Fail("open", store.status());
  WriterOptions options;
  options.part_bytes = 1u << 20;
  options.max_parts_in_flight = 4;
  for (uint64_t sequence = std::strtoull(argv[3], nullptr, 10);; ++sequence) {
    // 1-9 MiB plus an odd tail, so objects span several parts and end unaligned.
    const size_t size = ((sequence % 9) + 1) * (1u << 20) + (sequence * 7919) % 4096 + 1;
    const std::string value = testing::MakeCrashPayload(sequence, size);
    std::span<const std::byte> bytes = std::as_bytes(std::span(value.data(), value.size()));
    if (sequence % 2 == 0) {
      if (Status s = (*store)->Put(key, bytes); !s.ok()) return Fail("put", s);
    } else {
      Result<std::unique_ptr<ObjectWriter>> writer = (*store)->NewWriter(key, options);
      if (!writer.ok()) return Fail("new writer", writer.status());
      for (size_t pos = 0; pos < bytes.size(); pos += 300001) {
        size_t n = std::min<size_t>(300001, bytes.size() - pos);
        Status s = (*writer)->Append(bytes.subspan(pos, n));
        if (!s.ok()) return Fail("append", s);
      }
      if (Status s = (*writer)->Commit(); !s.ok()) return Fail("commit", s);
    }
    std::printf("committed %llu\n", static_cast<unsigned long long>(sequence));
    std::fflush(stdout);
  }
}
