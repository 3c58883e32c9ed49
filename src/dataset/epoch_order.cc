// EpochOrder: the order of an epoch as a stateless, keyed bijection of [0, N).
//
// Layers, from the dataset index outwards:
//   1. Permutation: a Feistel network over [0, 2^b), 2^b the smallest power of 2 >= n (halves
//      of floor(b/2) and ceil(b/2) bits), restricted to [0, n) by cycle walking: re-encrypt
//      until the value lands below n. That stays a bijection because it follows x's cycle of
//      the big permutation back into [0, n). 2^b <= 2n, so a call takes at most 2 passes on
//      average. (Balanced halves need a power of 4: up to 4 passes, ~150 ns instead of ~65.)
//   2. The epoch's order: order position o -> dataset index, either Permutation(o) (global
//      shuffle), o itself (shuffle = false), or the locality layout below.
//   3. The rank split: global position g -> order position g mod n (kPad wraps to the start of
//      the order), and rank r reads g = r, r + W, r + 2W, ... (as torch's DistributedSampler).
//
// Locality (locality_shards = k > 0): shards are permuted ("slots" are positions in the shuffled
// shard order); slots [w*k, (w+1)*k) form window w, windows are laid out one after another, and a
// per-window Permutation shuffles the window's samples. An order position finds its window and
// then its shard by binary search over prefix sums: O(log shards) time, O(shards) memory.
//
// Every key is derived from (seed, epoch, salt) with XXH3, so the order is reproducible across
// processes, machines and releases. Changing the round function, the key derivation or the salts
// changes every order and breaks resuming a run with a newer build: treat them as a format.
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <limits>
#include <string>

#include "granary/dataset.h"

namespace granary {
namespace {

// Salts separating the permutations of one (seed, epoch). Part of the order's definition.
constexpr uint64_t kGlobalSalt = 0;
constexpr uint64_t kShardSalt = 1;
constexpr uint64_t kWindowSaltBase = 2;  // window w uses kWindowSaltBase + w

// Largest supported dataset: keeps the padded total (< n + world_size) inside 64 bits.
constexpr uint64_t kMaxSamples = uint64_t{1} << 63;

// Stafford's "Mix13" finalizer (as in splitmix64): a bijection of 64-bit words whose output
// bits each depend on every input bit. The high bits are the best mixed, so callers take those.
inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void PutLe64(uint64_t v, unsigned char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

// The key of the permutation named by (seed, epoch, salt). Little-endian bytes, so the key does
// not depend on the host.
uint64_t PermutationKey(uint64_t seed, uint64_t epoch, uint64_t salt) {
  unsigned char buf[16];
  PutLe64(epoch, buf);
  PutLe64(salt, buf + 8);
  return XXH3_64bits_withSeed(buf, sizeof(buf), seed);
}

// The Feistel round function: `out_bits` (1..32) pseudo-random bits of (key, half).
inline uint64_t RoundF(uint64_t key, uint64_t half, uint32_t out_bits) {
  return Mix64(half ^ key) >> (64 - out_bits);
}

// The index of the last of a[0..count) that is <= v (a ascending, count >= 1, a[0] <= v): a
// branch-free binary search, because a shuffled position's slot is unpredictable and
// mispredicted branches cost more than the search itself.
size_t LastAtOrBelow(const uint64_t* a, size_t count, uint64_t v) {
  const uint64_t* base = a;
  while (count > 1) {
    const size_t half = count / 2;
    base = base[half] <= v ? base + half : base;  // the answer stays in [base, base + count)
    count -= half;
  }
  return static_cast<size_t>(base - a);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Permutation

EpochOrder::Permutation EpochOrder::Permutation::Make(uint64_t n, uint64_t seed, uint64_t epoch,
                                                      uint64_t salt) {
  Permutation p;
  p.n = n;
  if (n <= 1) return p;  // no halves: the identity, the only permutation of 0 or 1 elements
  // ceil(log2 n), at least 2 so that both halves have a bit.
  const uint32_t bits =
      std::max<uint32_t>(2, 64 - static_cast<uint32_t>(std::countl_zero(n - 1)));
  p.left_bits = bits / 2;
  p.right_bits = bits - bits / 2;
  // Round keys are the splitmix64 stream from the permutation's key: one hash per
  // permutation keeps Create cheap with many locality windows.
  const uint64_t key = PermutationKey(seed, epoch, salt);
  for (int i = 0; i < kRounds; ++i) p.keys[i] = Mix64(key + (i + 1) * 0x9e3779b97f4a7c15ull);
  return p;
}

// x = (left << right_bits) | right. Round i maps (L, R) to (R, L ^ F_i(R)); with an odd bit
// count the halves differ by one bit, so their widths swap every round (as in NIST FF1) and are
// back in place after an even number of rounds.
static_assert(EpochOrder::Permutation::kRounds % 2 == 0);

uint64_t EpochOrder::Permutation::Forward(uint64_t x) const {
  assert(x < n || n == 0);
  if (left_bits == 0) return x;
  do {
    uint32_t wl = left_bits;
    uint32_t wr = right_bits;
    uint64_t left = x >> wr;
    uint64_t right = x & ((uint64_t{1} << wr) - 1);
    for (int i = 0; i < kRounds; ++i) {
      const uint64_t next = left ^ RoundF(keys[i], right, wl);
      left = right;
      right = next;
      std::swap(wl, wr);
    }
    x = (left << wr) | right;
  } while (x >= n);  // cycle walking
  return x;
}

uint64_t EpochOrder::Permutation::Inverse(uint64_t y) const {
  assert(y < n || n == 0);
  if (left_bits == 0) return y;
  do {
    uint32_t wl = left_bits;
    uint32_t wr = right_bits;
    uint64_t left = y >> wr;
    uint64_t right = y & ((uint64_t{1} << wr) - 1);
    for (int i = kRounds - 1; i >= 0; --i) {
      // Undo round i: left is its R (wl bits now), right its L ^ F_i(R) (wr bits now).
      const uint64_t prev = right ^ RoundF(keys[i], left, wr);
      right = left;
      left = prev;
      std::swap(wl, wr);
    }
    y = (left << wr) | right;
  } while (y >= n);  // walking the cycle backwards
  return y;
}

// ---------------------------------------------------------------------------------------------
// Locality windows

struct EpochOrder::Locality {
  uint32_t k = 0;                        // shards per window
  std::vector<uint64_t> shard_first;     // first sample of each shard, then n
  std::vector<uint32_t> slot_shard;      // shard at each slot of the shuffled shard order
  std::vector<uint32_t> shard_slot;      // inverse of slot_shard
  std::vector<uint64_t> slot_start;      // order position where slot j's samples would begin
                                         // unshuffled (prefix sums of slot sizes), then n
  std::vector<uint64_t> window_start;    // order position where window w begins, then n
  std::vector<Permutation> window_perm;  // shuffle of window w's samples

  uint64_t At(uint64_t order_pos) const;
  uint64_t PositionOf(uint64_t index) const;
};

uint64_t EpochOrder::Locality::At(uint64_t order_pos) const {
  // The last window starting at or before order_pos (empty windows share the next one's
  // start). Positions are read in sequence, so here a branchy search predicts well and is faster.
  const size_t w = std::upper_bound(window_start.begin(), window_start.end() - 1, order_pos) -
                   window_start.begin() - 1;
  const uint64_t u = window_start[w] + window_perm[w].Forward(order_pos - window_start[w]);
  // u is a position in the window's unshuffled layout; find the slot holding it.
  const size_t first_slot = w * size_t{k};
  const size_t slots = std::min<size_t>(k, slot_shard.size() - first_slot);
  const size_t j = first_slot + LastAtOrBelow(slot_start.data() + first_slot, slots, u);
  return shard_first[slot_shard[j]] + (u - slot_start[j]);
}

uint64_t EpochOrder::Locality::PositionOf(uint64_t index) const {
  // The last shard starting at or before index: the non-empty one holding it. (Branch-free
  // search measured no faster here: the 8-byte entries of thousands of shards sit in cache.)
  const size_t s = std::upper_bound(shard_first.begin(), shard_first.end() - 1, index) -
                   shard_first.begin() - 1;
  const size_t j = shard_slot[s];
  const uint64_t u = slot_start[j] + (index - shard_first[s]);
  const size_t w = j / k;
  return window_start[w] + window_perm[w].Inverse(u - window_start[w]);
}

// ---------------------------------------------------------------------------------------------
// EpochOrder

Status OrderOptions::Validate() const {
  if (world_size == 0) return InvalidArgumentError("order: world_size must be at least 1");
  if (rank >= world_size) {
    return InvalidArgumentError("order: rank " + std::to_string(rank) +
                                " must be below world_size " + std::to_string(world_size));
  }
  return Status::OK();
}

Result<EpochOrder> EpochOrder::Create(uint64_t num_samples, uint64_t epoch,
                                      const OrderOptions& options,
                                      std::span<const uint64_t> shard_first_samples) {
  GRANARY_RETURN_IF_ERROR(options.Validate());
  if (num_samples == 0) return InvalidArgumentError("order: the dataset has no samples");
  if (num_samples > kMaxSamples) {
    return InvalidArgumentError("order: " + std::to_string(num_samples) +
                                " samples is more than the supported 2^63");
  }
  EpochOrder o;
  o.n_ = num_samples;
  o.epoch_ = epoch;
  o.options_ = options;

  // The rank split (see the header's Remainder).
  const uint64_t world = options.world_size;
  const uint64_t per_rank_floor = num_samples / world;
  const uint64_t extra = num_samples % world;
  switch (options.remainder) {
    case Remainder::kPad:
      o.rank_size_ = per_rank_floor + (extra != 0 ? 1 : 0);
      o.used_ = o.rank_size_ * world;
      break;
    case Remainder::kDrop:
      o.rank_size_ = per_rank_floor;
      o.used_ = per_rank_floor * world;
      break;
    case Remainder::kUneven:
      o.rank_size_ = per_rank_floor + (options.rank < extra ? 1 : 0);
      o.used_ = num_samples;
      break;
    default:
      return InvalidArgumentError("order: unknown remainder mode");
  }

  // Shards are validated whenever locality is asked for, even with shuffle off, so a bad layout
  // fails on the first run rather than on the day shuffling is turned on.
  const uint32_t k = options.locality_shards;
  if (k > 0) {
    const auto& f = shard_first_samples;
    if (f.empty()) {
      return InvalidArgumentError("order: locality_shards needs the shards' first samples");
    }
    if (f.size() > std::numeric_limits<uint32_t>::max()) {
      return InvalidArgumentError("order: too many shards (" + std::to_string(f.size()) + ")");
    }
    if (f[0] != 0) return InvalidArgumentError("order: the first shard must start at sample 0");
    for (size_t i = 0; i < f.size(); ++i) {
      // Equal neighbours (empty shards) are allowed; they own no samples.
      if ((i > 0 && f[i] < f[i - 1]) || f[i] > num_samples) {
        return InvalidArgumentError("order: shard " + std::to_string(i) + " starts at sample " +
                                    std::to_string(f[i]) +
                                    ": first samples must be ascending and at most " +
                                    std::to_string(num_samples));
      }
    }
  }
  if (!options.shuffle) return o;
  if (k == 0) {
    o.perm_ = Permutation::Make(num_samples, options.seed, epoch, kGlobalSalt);
    return o;
  }

  auto loc = std::make_shared<Locality>();
  const size_t shards = shard_first_samples.size();
  loc->k = k;
  loc->shard_first.assign(shard_first_samples.begin(), shard_first_samples.end());
  loc->shard_first.push_back(num_samples);
  const Permutation shard_perm = Permutation::Make(shards, options.seed, epoch, kShardSalt);
  loc->slot_shard.resize(shards);
  loc->shard_slot.resize(shards);
  loc->slot_start.resize(shards + 1);
  uint64_t pos = 0;
  for (size_t j = 0; j < shards; ++j) {
    const uint32_t s = static_cast<uint32_t>(shard_perm.Forward(j));
    loc->slot_shard[j] = s;
    loc->shard_slot[s] = static_cast<uint32_t>(j);
    loc->slot_start[j] = pos;
    pos += loc->shard_first[s + 1] - loc->shard_first[s];
  }
  loc->slot_start[shards] = pos;  // == num_samples
  const size_t windows = (shards + k - 1) / k;
  loc->window_start.resize(windows + 1);
  loc->window_perm.resize(windows);
  for (size_t w = 0; w < windows; ++w) {
    const uint64_t begin = loc->slot_start[w * k];
    const uint64_t end = loc->slot_start[std::min<size_t>((w + 1) * size_t{k}, shards)];
    loc->window_start[w] = begin;
    loc->window_perm[w] =
        Permutation::Make(end - begin, options.seed, epoch, kWindowSaltBase + w);
  }
  loc->window_start[windows] = num_samples;
  o.locality_ = std::move(loc);
  return o;
}

uint64_t EpochOrder::GlobalAt(uint64_t order_pos) const {
  if (!options_.shuffle) return order_pos;
  if (locality_ != nullptr) return locality_->At(order_pos);
  return perm_.Forward(order_pos);
}

uint64_t EpochOrder::At(uint64_t pos) const {
  assert(pos < rank_size_);
  uint64_t g = options_.rank + pos * options_.world_size;
  // Padded positions repeat the order from its start (more than once when world > n).
  if (g >= n_) g %= n_;
  return GlobalAt(g);
}

uint64_t EpochOrder::GlobalPosition(uint64_t index) const {
  assert(index < n_);
  if (!options_.shuffle) return index;
  if (locality_ != nullptr) return locality_->PositionOf(index);
  return perm_.Inverse(index);
}

std::optional<std::pair<uint32_t, uint64_t>> EpochOrder::Owner(uint64_t global_pos) const {
  if (global_pos >= used_) return std::nullopt;
  return std::make_pair(static_cast<uint32_t>(global_pos % options_.world_size),
                        global_pos / options_.world_size);
}

}  // namespace granary
