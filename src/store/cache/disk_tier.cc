#include "store/cache/disk_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <vector>

namespace granary::cache {
namespace {

constexpr char kMagic[8] = {'G', 'R', 'N', 'P', 'A', 'G', 'E', '1'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxChunks = 256;  // 16 MiB pages
// Header layout (little-endian): magic[8] version:u32 data_bytes:u32 index:u64 object_low:u64
// object_high:u64 object_size:u64 num_chunks:u32 key_len:u16 etag_len:u16 crc[num_chunks]:u32,
// then key and etag bytes; header CRC-32C of bytes [0, 4092) at 4092.
constexpr size_t kFixedBytes = 56;
constexpr size_t kCrcOffset = kHeaderBytes - 4;

template <typename T>
void Store(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
T Load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

struct Header {
  uint32_t data_bytes = 0;
  uint64_t index = 0;
  Hash128 object;
  uint64_t object_size = 0;
  std::vector<uint32_t> crcs;
  std::string key, etag;
};

void Encode(const Header& h, std::byte* out) {
  std::memset(out, 0, kHeaderBytes);
  std::memcpy(out, kMagic, 8);
  Store<uint32_t>(out + 8, kVersion);
  Store<uint32_t>(out + 12, h.data_bytes);
  Store<uint64_t>(out + 16, h.index);
  Store<uint64_t>(out + 24, h.object.low);
  Store<uint64_t>(out + 32, h.object.high);
  Store<uint64_t>(out + 40, h.object_size);
  Store<uint32_t>(out + 48, static_cast<uint32_t>(h.crcs.size()));
  size_t pos = kFixedBytes + 4 * h.crcs.size();
  const size_t room = kCrcOffset - pos;
  const size_t key_len = std::min(h.key.size(), room);
  const size_t etag_len = std::min(h.etag.size(), room - key_len);
  Store<uint16_t>(out + 52, static_cast<uint16_t>(key_len));
  Store<uint16_t>(out + 54, static_cast<uint16_t>(etag_len));
  for (size_t i = 0; i < h.crcs.size(); ++i) Store<uint32_t>(out + kFixedBytes + 4 * i, h.crcs[i]);
  std::memcpy(out + pos, h.key.data(), key_len);
  std::memcpy(out + pos + key_len, h.etag.data(), etag_len);
  Store<uint32_t>(out + kCrcOffset, Crc32c(out, kCrcOffset));
}

// Parses and checks a header; false when it is not a valid one.
bool Decode(const std::byte* in, Header* h) {
  if (std::memcmp(in, kMagic, 8) != 0 || Load<uint32_t>(in + 8) != kVersion) return false;
  if (Load<uint32_t>(in + kCrcOffset) != Crc32c(in, kCrcOffset)) return false;
  h->data_bytes = Load<uint32_t>(in + 12);
  h->index = Load<uint64_t>(in + 16);
  h->object.low = Load<uint64_t>(in + 24);
  h->object.high = Load<uint64_t>(in + 32);
  h->object_size = Load<uint64_t>(in + 40);
  const uint32_t n = Load<uint32_t>(in + 48);
  if (n > kMaxChunks || n != (h->data_bytes + kChunkBytes - 1) / kChunkBytes) return false;
  h->crcs.resize(n);
  for (uint32_t i = 0; i < n; ++i) h->crcs[i] = Load<uint32_t>(in + kFixedBytes + 4 * i);
  const size_t pos = kFixedBytes + 4 * n;
  const size_t key_len = Load<uint16_t>(in + 52), etag_len = Load<uint16_t>(in + 54);
  if (pos + key_len + etag_len > kCrcOffset) return false;
  h->key.assign(reinterpret_cast<const char*>(in + pos), key_len);
  h->etag.assign(reinterpret_cast<const char*>(in + pos + key_len), etag_len);
  return true;
}

// "<32 hex>-<index>" -> (object, index); false otherwise.
bool ParseName(std::string_view name, Hash128* object, uint64_t* index) {
  if (name.size() < 34 || name[32] != '-') return false;
  uint64_t words[2] = {0, 0};
  for (int w = 0; w < 2; ++w) {
    for (int i = 0; i < 16; ++i) {
      const char c = name[w * 16 + i];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return false;
      words[w] = words[w] << 4 | static_cast<uint64_t>(d);
    }
  }
  object->high = words[0];
  object->low = words[1];
  uint64_t v = 0;
  for (char c : name.substr(33)) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *index = v;
  return true;
}

std::vector<std::byte>& Scratch(size_t bytes) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer;
}

uint64_t FreeBytes(const std::string& dir) {
  struct statvfs v;
  if (::statvfs(dir.c_str(), &v) != 0) return UINT64_MAX;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
}

struct FileInfo {
  std::string name;  // page name
  std::string path;
  uint64_t bytes = 0;
  int64_t mtime_ns = 0;
};

// Every file under <dir>/pages/*/.
std::vector<FileInfo> ListPages(const std::string& dir) {
  std::vector<FileInfo> out;
  std::error_code ec;
  for (const auto& sub : std::filesystem::directory_iterator(dir + "/pages", ec)) {
    std::error_code ec2;
    for (const auto& f : std::filesystem::directory_iterator(sub.path(), ec2)) {
      struct stat st;
      if (::stat(f.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      std::string name = f.path().filename().string();
      if (name.ends_with(".pg")) name.resize(name.size() - 3);
      out.push_back({name, f.path().string(), static_cast<uint64_t>(st.st_size),
                     static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec});
    }
  }
  return out;
}

// Checks one page file: its header, its size, its name, and with check_data every chunk.
bool CheckFile(const FileInfo& f, bool check_data, Header* header) {
  const int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::vector<std::byte>& buf = Scratch(kHeaderBytes);
  bool ok = ::pread(fd, buf.data(), kHeaderBytes, 0) == kHeaderBytes && Decode(buf.data(), header);
  Hash128 object;
  uint64_t index = 0;
  ok = ok && ParseName(f.name, &object, &index) && object == header->object &&
       index == header->index && f.bytes == kHeaderBytes + header->data_bytes;
  if (ok && check_data) {
    std::vector<std::byte> data(header->data_bytes);
    ok = ::pread(fd, data.data(), data.size(), kHeaderBytes) ==
         static_cast<ssize_t>(data.size());
    for (size_t c = 0; ok && c < header->crcs.size(); ++c) {
      const size_t begin = c * kChunkBytes;
      const size_t len = std::min<size_t>(kChunkBytes, data.size() - begin);
      ok = Crc32c(data.data() + begin, len) == header->crcs[c];
    }
  }
  ::close(fd);
  return ok;
}

}  // namespace

std::string PageKey::Name() const { return object.ToHex() + "-" + std::to_string(index); }

// Pages fan out over 256 directories by a hash of their whole name, so the pages of one large
// object spread out too.
static std::string FanOut(const std::string& name) {
  static constexpr char kHex[] = "0123456789abcdef";
  const uint64_t h = Xxh3_64(name.data(), name.size());
  return {kHex[(h >> 4) & 15], kHex[h & 15]};
}

std::string DiskTier::PathOf(const std::string& name) const {
  return dir_ + "/pages/" + FanOut(name) + "/" + name + ".pg";
}

Result<std::unique_ptr<DiskTier>> DiskTier::Open(std::string dir, uint64_t cap_bytes,
                                                 uint64_t min_free_bytes, Counters* counters) {
  std::error_code ec;
  std::filesystem::create_directories(dir + "/pages", ec);
  if (!ec) std::filesystem::create_directories(dir + "/tmp", ec);
  if (!ec) std::filesystem::create_directories(dir + "/locks", ec);
  if (ec) {
    return ErrnoToStatus(ec.value(), "cache directory " + dir).WithContext("opening the cache");
  }
  std::unique_ptr<DiskTier> tier(new DiskTier(std::move(dir), cap_bytes, min_free_bytes, counters));
  // Temporaries older than an hour belong to dead writers.
  const auto now = std::filesystem::file_time_type::clock::now();
  for (const auto& f : std::filesystem::directory_iterator(tier->dir_ + "/tmp", ec)) {
    std::error_code ec2;
    if (now - f.last_write_time(ec2) > std::chrono::hours(1)) std::filesystem::remove(f, ec2);
  }
  std::vector<FileInfo> files = ListPages(tier->dir_);
  std::sort(files.begin(), files.end(),
            [](const FileInfo& a, const FileInfo& b) { return a.mtime_ns < b.mtime_ns; });
  for (const FileInfo& f : files) {  // oldest first, so the newest end up at the LRU front
    Header h;
    if (!CheckFile(f, false, &h)) {
      ::unlink(f.path.c_str());
      counters->damaged.fetch_add(1);
      continue;
    }
    tier->Remember(f.name, f.bytes);
  }
  {
    std::lock_guard lock(tier->mu_);
    tier->writes_ = 0;
    tier->low_on_space_ = FreeBytes(tier->dir_) < tier->min_free_;
  }
  tier->EvictAsNeeded();
  return tier;
}

DiskTier::PageLock& DiskTier::PageLock::operator=(PageLock&& o) noexcept {
  if (this != &o) {
    Release();
    fd_ = std::exchange(o.fd_, -1);
    path_ = std::move(o.path_);
  }
  return *this;
}

void DiskTier::PageLock::Release() {
  if (fd_ < 0) return;
  // Remove the file only while it is still ours: a waiter that opened it before may hold it
  // next, and a later process then makes a new one (both look for the page before fetching).
  struct stat mine, named;
  if (::fstat(fd_, &mine) == 0 && ::stat(path_.c_str(), &named) == 0 &&
      mine.st_ino == named.st_ino && mine.st_dev == named.st_dev) {
    ::unlink(path_.c_str());
  }
  ::close(fd_);  // releases the flock
  fd_ = -1;
}

DiskTier::LockState DiskTier::LockPage(const PageKey& page, bool wait, PageLock* lock) {
  lock->Release();
  std::string path = dir_ + "/locks/" + page.Name() + ".lock";
  for (int attempt = 0; attempt < 8; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return LockState::kUnavailable;
    int r;
    do {
      r = ::flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB));
    } while (r != 0 && errno == EINTR);
    if (r != 0) {
      const bool busy = errno == EWOULDBLOCK;
      ::close(fd);
      return busy ? LockState::kBusy : LockState::kUnavailable;
    }
    // Held; but if the holder before us removed the file meanwhile, the lock guards nothing
    // anyone else will look at: take the file that is there now.
    struct stat mine, named;
    if (::fstat(fd, &mine) == 0 && ::stat(path.c_str(), &named) == 0 &&
        mine.st_ino == named.st_ino && mine.st_dev == named.st_dev) {
      lock->fd_ = fd;
      lock->path_ = std::move(path);
      return LockState::kHeld;
    }
    ::close(fd);
  }
  return LockState::kUnavailable;
}

void DiskTier::Remember(const std::string& name, uint64_t bytes) {
  std::lock_guard lock(mu_);
  if (auto it = index_.find(name); it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return;
  }
  lru_.push_front(name);
  index_.emplace(name, Entry{bytes, lru_.begin()});
  used_ += bytes;
}

void DiskTier::Forget(const std::string& name) {
  std::lock_guard lock(mu_);
  if (auto it = index_.find(name); it != index_.end()) {
    used_ -= it->second.bytes;
    lru_.erase(it->second.lru);
    index_.erase(it);
  }
}

uint64_t DiskTier::used_bytes() const {
  std::lock_guard lock(mu_);
  return used_;
}

void DiskTier::EvictAsNeeded() {
  for (;;) {
    std::string victim;
    uint64_t bytes = 0;
    {
      std::lock_guard lock(mu_);
      if (lru_.empty()) return;
      bool evict = used_ > cap_;
      // statvfs on every 8th write, and on every one while space is short, keeps the floor
      // check cheap.
      if (!evict && (low_on_space_ || writes_ % 8 == 0)) {
        low_on_space_ = FreeBytes(dir_) < min_free_;
        evict = low_on_space_;
      }
      if (!evict) return;
      victim = lru_.back();
      bytes = index_[victim].bytes;
    }
    ::unlink(PathOf(victim).c_str());
    Forget(victim);
    counters_->evictions.fetch_add(1);
    counters_->evicted_bytes.fetch_add(bytes);
  }
}

bool DiskTier::Contains(const PageKey& page) const {
  return ::access(PathOf(page.Name()).c_str(), F_OK) == 0;
}

Status DiskTier::Read(const PageKey& page, uint64_t offset, std::span<std::byte> dest) {
  const std::string name = page.Name();
  const std::string path = PathOf(name);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      Forget(name);
      return NotFoundError("cache page " + path);
    }
    return ErrnoToStatus(errno, "cache page " + path);
  }
  // The header and the chunks that cover the range, in one read.
  const uint64_t first = offset / kChunkBytes;
  const uint64_t last = (offset + dest.size() + kChunkBytes - 1) / kChunkBytes;  // exclusive
  const size_t span_bytes = static_cast<size_t>((last - first) * kChunkBytes);
  std::vector<std::byte>& buf = Scratch(kHeaderBytes + span_bytes);
  ssize_t n = ::pread(fd, buf.data(), kHeaderBytes, 0);
  Header h;
  bool ok = n == kHeaderBytes && Decode(buf.data(), &h) && h.object == page.object &&
            h.index == page.index;
  ssize_t got = 0;
  if (ok && offset + dest.size() > h.data_bytes) {
    ::close(fd);
    return OutOfRangeError("cache page " + path + " holds " + std::to_string(h.data_bytes) +
                           " bytes");
  }
  if (ok) {
    const size_t want = std::min<size_t>(span_bytes, h.data_bytes - first * kChunkBytes);
    got = ::pread(fd, buf.data() + kHeaderBytes, want, kHeaderBytes + first * kChunkBytes);
    ok = got == static_cast<ssize_t>(want);
    for (uint64_t c = first; ok && c < last; ++c) {
      const size_t begin = (c - first) * kChunkBytes;
      const size_t len = std::min<size_t>(kChunkBytes, want - begin);
      ok = Crc32c(buf.data() + kHeaderBytes + begin, len) == h.crcs[c];
    }
  }
  ::close(fd);
  if (!ok) {
    ::unlink(path.c_str());
    Forget(name);
    counters_->damaged.fetch_add(1);
    return DataLossError("cache page " + path + " is damaged; dropped");
  }
  std::memcpy(dest.data(), buf.data() + kHeaderBytes + (offset - first * kChunkBytes),
              dest.size());
  Remember(name, kHeaderBytes + h.data_bytes);
  return Status::OK();
}

Status DiskTier::Write(const PageKey& page, const PageLabel& label,
                       std::span<const std::byte> data) {
  Header h;
  h.data_bytes = static_cast<uint32_t>(data.size());
  h.index = page.index;
  h.object = page.object;
  h.object_size = label.object_size;
  h.key = label.key;
  h.etag = label.etag;
  for (size_t begin = 0; begin < data.size(); begin += kChunkBytes) {
    h.crcs.push_back(Crc32c(data.data() + begin, std::min<size_t>(kChunkBytes, data.size() - begin)));
  }
  alignas(64) std::byte header[kHeaderBytes];
  Encode(h, header);

  const std::string name = page.Name();
  const std::string path = PathOf(name);
  thread_local std::mt19937_64 random{std::random_device{}()};
  char tmp_name[64];
  std::snprintf(tmp_name, sizeof tmp_name, "/tmp/%d-%016llx.tmp", static_cast<int>(::getpid()),
                static_cast<unsigned long long>(random()));
  const std::string tmp = dir_ + tmp_name;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "cache temporary " + tmp);
  iovec iov[2] = {{header, kHeaderBytes},
                  {const_cast<std::byte*>(data.data()), data.size()}};
  const ssize_t total = static_cast<ssize_t>(kHeaderBytes + data.size());
  const ssize_t n = ::pwritev(fd, iov, 2, 0);
  const int write_errno = errno;
  ::close(fd);
  if (n != total) {
    ::unlink(tmp.c_str());
    return ErrnoToStatus(n < 0 ? write_errno : ENOSPC, "cache page " + path);
  }
  std::error_code ec;
  std::filesystem::create_directories(dir_ + "/pages/" + FanOut(name), ec);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return ErrnoToStatus(e, "cache page " + path);
  }
  Remember(name, static_cast<uint64_t>(total));
  {
    std::lock_guard lock(mu_);
    ++writes_;
  }
  EvictAsNeeded();
  return Status::OK();
}

Result<DiskTier::Scan> DiskTier::ScanDir(const std::string& dir, bool check_data) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir + "/pages", ec)) {
    return NotFoundError("no cache at " + dir + " (no pages/ directory)");
  }
  Scan scan;
  std::set<std::pair<uint64_t, uint64_t>> objects;
  for (const FileInfo& f : ListPages(dir)) {
    Header h;
    if (!CheckFile(f, check_data, &h)) {
      ::unlink(f.path.c_str());
      ++scan.removed;
      continue;
    }
    ++scan.pages;
    scan.bytes += f.bytes;
    objects.insert({h.object.low, h.object.high});
  }
  scan.objects = objects.size();
  return scan;
}

Result<uint64_t> DiskTier::EvictDir(const std::string& dir, uint64_t keep_bytes) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir + "/pages", ec)) {
    return NotFoundError("no cache at " + dir + " (no pages/ directory)");
  }
  std::vector<FileInfo> files = ListPages(dir);
  std::sort(files.begin(), files.end(),
            [](const FileInfo& a, const FileInfo& b) { return a.mtime_ns < b.mtime_ns; });
  uint64_t total = 0;
  for (const FileInfo& f : files) total += f.bytes;
  uint64_t removed = 0;
  for (const FileInfo& f : files) {
    if (total - removed <= keep_bytes) break;
    if (::unlink(f.path.c_str()) == 0) removed += f.bytes;
  }
  return removed;
}

}  // namespace granary::cache
