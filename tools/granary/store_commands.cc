// `granary ls | stat | cat | put | rm`: object store commands. Each takes the STORE URL first and
// a KEY (or PREFIX) second, so a key never has to be guessed out of a path.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cli.h"
#include "granary/io.h"
#include "granary/status.h"
#include "granary/store.h"

namespace granary::cli {
namespace {

// Size of each read of `cat` and of each chunk `put` hands to the writer.
constexpr size_t kChunkBytes = 8u << 20;
// Objects per ListPage call of `ls`, so huge listings stream.
constexpr size_t kListPageObjects = 1000;

// "2025-11-23T11:51:00.123Z" (UTC), or "-" when the driver does not know the time.
std::string FormatTime(int64_t mtime_ns) {
  if (mtime_ns <= 0) return "-";
  const time_t seconds = static_cast<time_t>(mtime_ns / 1000000000);
  const int millis = static_cast<int>((mtime_ns / 1000000) % 1000);
  struct tm tm_utc;
  gmtime_r(&seconds, &tm_utc);
  char text[64];
  const size_t n = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm_utc);
  std::snprintf(text + n, sizeof(text) - n, ".%03dZ", millis);
  return text;
}

// Context for error lines: "cat file:///x a/b".
std::string Context(std::string_view command, std::string_view store_url,
                    std::string_view key = {}) {
  std::string out(command);
  out += ' ';
  out += store_url;
  if (!key.empty()) {
    out += ' ';
    out += key;
  }
  return out;
}

bool HasFlag(const ParsedArgs& args, std::string_view a, std::string_view b = {}) {
  return std::any_of(args.flags.begin(), args.flags.end(),
                     [&](const std::string& f) { return f == a || (!b.empty() && f == b); });
}

// The first flag not in `known`, or "" if all are known.
std::string UnknownFlag(const ParsedArgs& args, const std::vector<std::string_view>& known) {
  for (const std::string& f : args.flags) {
    if (std::find(known.begin(), known.end(), f) == known.end()) return f;
  }
  return "";
}

// Writes all of `data` to `fd`, retrying short writes and EINTR.
Status WriteAll(int fd, const std::byte* data, size_t size, std::string_view what) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, what);
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return Status::OK();
}

// Copies bytes [0, size_bytes) of `key` to `fd`. Two aligned, pre-faulted buffers (a local
// store reads straight into them with O_DIRECT): the next chunk is read on a helper thread while
// the current one is written, so a slow reader of the pipe and the storage overlap.
Status StreamToFd(ObjectStore& store, const std::string& key, uint64_t size_bytes, int fd,
                  std::string_view fd_name) {
  AlignedBuffer buffers[2];
  for (AlignedBuffer& b : buffers) {
    Result<AlignedBuffer> allocated = AlignedBuffer::Allocate(kChunkBytes);
    if (!allocated.ok()) return allocated.status();
    b = std::move(allocated).value();
  }
  auto read_chunk = [&store, &key, &buffers](int index, uint64_t offset) {
    return store.Get(key, offset, buffers[index].span());
  };
  std::future<Result<size_t>> pending;
  if (size_bytes > 0) pending = std::async(std::launch::async, read_chunk, 0, uint64_t{0});
  uint64_t offset = 0;
  int current = 0;
  while (pending.valid()) {
    Result<size_t> n = pending.get();
    if (!n.ok()) return n.status();
    const bool last = *n < kChunkBytes || offset + *n >= size_bytes;
    if (!last) pending = std::async(std::launch::async, read_chunk, 1 - current, offset + *n);
    Status written = WriteAll(fd, buffers[current].data(), *n, fd_name);
    if (!written.ok()) {
      if (pending.valid()) pending.wait();  // the helper still uses the other buffer
      return written;
    }
    offset += *n;
    current = 1 - current;
  }
  return Status::OK();
}

// Reads up to dest.size() bytes from `fd`, stopping early only at end of input.
Result<size_t> ReadFull(int fd, std::span<std::byte> dest, std::string_view what) {
  size_t total = 0;
  while (total < dest.size()) {
    const ssize_t n = ::read(fd, dest.data() + total, dest.size() - total);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, what);
    }
    if (n == 0) break;
    total += static_cast<size_t>(n);
  }
  return total;
}

// What a store command accepts, for StartCommand.
struct CommandSpec {
  std::string_view name;  // "ls"
  const char* usage;      // printed for -h/--help
  size_t min_args;        // positional arguments, STORE included
  size_t max_args;
  std::vector<std::string_view> flags = {};
};

// The start every store command shares: prints spec.usage for -h/--help, else parses argv into
// *args and checks it against `spec`. False, with *exit_code set, when the command is already
// done (help printed, or a usage error printed).
bool StartCommand(const CommandSpec& spec, int argc, char** argv, ParsedArgs* args,
                  int* exit_code) {
  *exit_code = kExitOk;
  if (WantsHelp(argc, argv)) {
    std::fputs(spec.usage, stdout);
    return false;
  }
  *args = ParseArgs(argc, argv);
  if (std::string flag = UnknownFlag(*args, spec.flags); !flag.empty()) {
    *exit_code = UsageError(spec.name, "unknown option '" + flag + "'");
    return false;
  }
  const std::vector<std::string>& positional = args->positional;
  if (positional.size() < spec.min_args) {
    *exit_code = UsageError(spec.name, positional.empty() ? "missing STORE" : "missing KEY");
    return false;
  }
  if (positional.size() > spec.max_args) {
    *exit_code = UsageError(spec.name, "unexpected argument '" + positional[spec.max_args] + "'");
    return false;
  }
  return true;
}

// Opens STORE for a command that only reads or deletes: a mistyped directory is NotFound
// instead of silently created.
Result<std::unique_ptr<ObjectStore>> OpenExisting(const std::string& url) {
  StoreOptions options;
  options.create_if_missing = false;
  return OpenStore(url, options);
}

}  // namespace

int RunLs(int argc, char** argv) {
  static const CommandSpec kSpec{
      .name = "ls",
      .usage =
          "usage: granary ls STORE [PREFIX] [-l|--long]\n"
          "\n"
          "Lists the keys of STORE that start with PREFIX (a plain string prefix: \"runs/\" or\n"
          "\"runs/ex\"), one per line, sorted. With --long each line is SIZE_BYTES MTIME KEY.\n"
          "STORE: file:///abs/dir, a directory path, or mem://name.\n",
      .min_args = 1,
      .max_args = 2,
      .flags = {"-l", "--long"},
  };
  ParsedArgs args;
  if (int exit_code; !StartCommand(kSpec, argc, argv, &args, &exit_code)) return exit_code;
  const std::string& url = args.positional[0];
  const std::string prefix = args.positional.size() > 1 ? args.positional[1] : "";
  const bool long_format = HasFlag(args, "-l", "--long");

  Result<std::unique_ptr<ObjectStore>> store = OpenExisting(url);
  if (!store.ok()) return Fail(Context("ls", url), store.status());
  std::string start_after;
  while (true) {
    Result<ObjectPage> page = (*store)->ListPage(prefix, start_after, kListPageObjects);
    if (!page.ok()) return Fail(Context("ls", url, prefix), page.status());
    for (const ObjectInfo& info : page->objects) {
      if (long_format) {
        std::printf("%14" PRIu64 "  %-24s  %s\n", info.size_bytes,
                    FormatTime(info.mtime_ns).c_str(), info.key.c_str());
      } else {
        std::printf("%s\n", info.key.c_str());
      }
    }
    if (page->next_start_after.empty()) break;
    start_after = std::move(page->next_start_after);
  }
  return std::fflush(stdout) == 0 ? kExitOk
                                  : Fail(Context("ls", url), ErrnoToStatus(errno, "stdout"));
}

int RunStat(int argc, char** argv) {
  static const CommandSpec kSpec{
      .name = "stat",
      .usage =
          "usage: granary stat STORE KEY\n"
          "\n"
          "Prints the key, size in bytes and modification time (UTC) of one object.\n",
      .min_args = 2,
      .max_args = 2,
  };
  ParsedArgs args;
  if (int exit_code; !StartCommand(kSpec, argc, argv, &args, &exit_code)) return exit_code;
  const std::string& url = args.positional[0];
  const std::string& key = args.positional[1];
  Result<std::unique_ptr<ObjectStore>> store = OpenExisting(url);
  if (!store.ok()) return Fail(Context("stat", url), store.status());
  Result<ObjectInfo> info = (*store)->Stat(key);
  if (!info.ok()) return Fail(Context("stat", url, key), info.status());
  std::printf("key:        %s\nsize_bytes: %" PRIu64 "\nmtime:      %s\n", info->key.c_str(),
              info->size_bytes, FormatTime(info->mtime_ns).c_str());
  return kExitOk;
}

int RunCat(int argc, char** argv) {
  static const CommandSpec kSpec{
      .name = "cat",
      .usage =
          "usage: granary cat STORE KEY\n"
          "\n"
          "Writes the object KEY of STORE to stdout, streaming it in 8 MiB reads, so objects of\n"
          "any size work. Example: granary cat /data/store runs/a.bin > a.bin\n",
      .min_args = 2,
      .max_args = 2,
  };
  ParsedArgs args;
  if (int exit_code; !StartCommand(kSpec, argc, argv, &args, &exit_code)) return exit_code;
  const std::string& url = args.positional[0];
  const std::string& key = args.positional[1];
  const std::string context = Context("cat", url, key);

  Result<std::unique_ptr<ObjectStore>> store = OpenExisting(url);
  if (!store.ok()) return Fail(Context("cat", url), store.status());
  // Stat first so a missing key fails before anything is written, and so we know where the end
  // is (an object replaced meanwhile ends the stream at the first short read).
  Result<ObjectInfo> info = (*store)->Stat(key);
  if (!info.ok()) return Fail(context, info.status());
  if (Status s = StreamToFd(**store, key, info->size_bytes, STDOUT_FILENO, "stdout"); !s.ok()) {
    return Fail(context, s);
  }
  return kExitOk;
}

int RunPut(int argc, char** argv) {
  static const CommandSpec kSpec{
      .name = "put",
      .usage =
          "usage: granary put STORE KEY [FILE|-]\n"
          "\n"
          "Stores FILE (or stdin when FILE is '-' or absent) as the object KEY of STORE,\n"
          "replacing any previous object atomically. Input is streamed in 8 MiB parts, so\n"
          "inputs of any size work; the object becomes visible only once all of it is durable.\n"
          "Example: granary put file:///data/store runs/a.bin ./a.bin\n",
      .min_args = 2,
      .max_args = 3,
  };
  ParsedArgs args;
  if (int exit_code; !StartCommand(kSpec, argc, argv, &args, &exit_code)) return exit_code;
  const std::string& url = args.positional[0];
  const std::string& key = args.positional[1];
  const std::string path = args.positional.size() > 2 ? args.positional[2] : "-";
  const std::string context = Context("put", url, key);

  int fd = STDIN_FILENO;
  if (path != "-") {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Fail(context, ErrnoToStatus(errno, "open " + path));
  }
  const std::string input_name = path == "-" ? "stdin" : path;
  struct FdCloser {
    int fd;
    ~FdCloser() {
      if (fd != STDIN_FILENO) ::close(fd);
    }
  } closer{fd};

  Result<std::unique_ptr<ObjectStore>> store = OpenStore(url);
  if (!store.ok()) return Fail(Context("put", url), store.status());
  WriterOptions options;
  options.part_bytes = kChunkBytes;
  Result<std::unique_ptr<ObjectWriter>> writer = (*store)->NewWriter(key, options);
  if (!writer.ok()) return Fail(context, writer.status());
  Result<AlignedBuffer> buffer = AlignedBuffer::Allocate(kChunkBytes);
  if (!buffer.ok()) return Fail(context, buffer.status());
  while (true) {
    Result<size_t> n = ReadFull(fd, buffer->span(), "read " + input_name);
    if (!n.ok()) {
      (*writer)->Abort().IgnoreError();  // the read error is the one to report
      return Fail(context, n.status());
    }
    if (*n > 0) {
      if (Status s = (*writer)->Append(buffer->span().first(*n)); !s.ok()) {
        return Fail(context, s);
      }
    }
    if (*n < buffer->size()) break;
  }
  if (Status s = (*writer)->Commit(); !s.ok()) return Fail(context, s);
  return kExitOk;
}

int RunRm(int argc, char** argv) {
  static const CommandSpec kSpec{
      .name = "rm",
      .usage =
          "usage: granary rm STORE KEY [KEY...]\n"
          "\n"
          "Deletes the objects KEY... of STORE, stopping at the first that fails (a missing\n"
          "key is an error).\n",
      .min_args = 2,
      .max_args = static_cast<size_t>(-1),
  };
  ParsedArgs args;
  if (int exit_code; !StartCommand(kSpec, argc, argv, &args, &exit_code)) return exit_code;
  const std::string& url = args.positional[0];
  Result<std::unique_ptr<ObjectStore>> store = OpenExisting(url);
  if (!store.ok()) return Fail(Context("rm", url), store.status());
  for (size_t i = 1; i < args.positional.size(); ++i) {
    const std::string& key = args.positional[i];
    if (Status s = (*store)->Delete(key); !s.ok()) return Fail(Context("rm", url, key), s);
  }
  return kExitOk;
}

}  // namespace granary::cli
