// Tests of EpochOrder: bijection, determinism, the exact rank split, locality windows and
// statistical shuffle quality (loose bounds that a structured permutation fails).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <unordered_set>
#include <vector>

#include "granary/dataset.h"

namespace granary {
namespace {

using Permutation = EpochOrder::Permutation;

EpochOrder MakeOrder(uint64_t n, uint64_t epoch, const OrderOptions& options,
                     std::span<const uint64_t> shards = {}) {
  Result<EpochOrder> r = EpochOrder::Create(n, epoch, options, shards);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return *std::move(r);
}

OrderOptions Opts(uint64_t seed, uint32_t rank = 0, uint32_t world = 1,
                  Remainder remainder = Remainder::kPad, uint32_t locality = 0) {
  OrderOptions o;
  o.seed = seed;
  o.rank = rank;
  o.world_size = world;
  o.remainder = remainder;
  o.locality_shards = locality;
  return o;
}

// The whole epoch's order (world 1).
std::vector<uint64_t> FullOrder(const EpochOrder& order) {
  std::vector<uint64_t> out(order.size());
  for (uint64_t p = 0; p < out.size(); ++p) out[p] = order.At(p);
  return out;
}

bool IsPermutation(const std::vector<uint64_t>& v) {
  std::vector<bool> seen(v.size(), false);
  for (uint64_t x : v) {
    if (x >= v.size() || seen[x]) return false;
    seen[x] = true;
  }
  return true;
}

// Uneven shard layout: sizes cycle through 1..2*mean-1 (plus some empty shards when asked).
std::vector<uint64_t> ShardStarts(uint64_t n, uint64_t mean, bool with_empty) {
  std::vector<uint64_t> starts;
  uint64_t pos = 0;
  for (uint64_t i = 0; pos < n; ++i) {
    starts.push_back(pos);
    if (with_empty && i % 7 == 3) starts.push_back(pos);  // an empty shard
    pos += 1 + (i * 7919) % (2 * mean - 1);
  }
  return starts;
}

uint64_t ShardOf(const std::vector<uint64_t>& starts, uint64_t index) {
  return std::upper_bound(starts.begin(), starts.end(), index) - starts.begin() - 1;
}

// ---------------------------------------------------------------------------------------------
// Permutation

std::vector<uint64_t> SmallSizes() {
  std::vector<uint64_t> sizes = {1, 2, 3, 5, 6, 7, 11, 13, 37, 97, 101, 251, 1000, 4999};
  for (int k = 1; k <= 14; ++k) {
    const uint64_t p = uint64_t{1} << k;
    sizes.insert(sizes.end(), {p - 1, p, p + 1});
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

TEST(PermutationTest, ExhaustiveBijectionForSmallSizes) {
  for (uint64_t n : SmallSizes()) {
    for (uint64_t seed : {0ull, 1ull, 0xdeadbeefull}) {
      const Permutation p = Permutation::Make(n, seed, /*epoch=*/3, /*salt=*/0);
      std::vector<uint64_t> image(n);
      for (uint64_t x = 0; x < n; ++x) {
        image[x] = p.Forward(x);
        ASSERT_LT(image[x], n) << "n=" << n;
        ASSERT_EQ(p.Inverse(image[x]), x) << "n=" << n << " x=" << x;
      }
      ASSERT_TRUE(IsPermutation(image)) << "n=" << n << " seed=" << seed;
    }
  }
}

TEST(PermutationTest, SampledBijectionForHugeSizes) {
  const uint64_t big[] = {(1ull << 32) - 1, 1ull << 32,        (1ull << 32) + 1,
                          (1ull << 40) + 123, (1ull << 62) + 1, (1ull << 63) - 1,
                          1ull << 63};
  std::mt19937_64 rng(7);
  for (uint64_t n : big) {
    const Permutation p = Permutation::Make(n, 42, 0, 0);
    uint64_t fixed_points = 0;
    for (int i = 0; i < 20000; ++i) {
      const uint64_t x = i == 0 ? 0 : i == 1 ? n - 1 : rng() % n;
      const uint64_t y = p.Forward(x);
      ASSERT_LT(y, n);
      ASSERT_EQ(p.Inverse(y), x) << "n=" << n << " x=" << x;
      ASSERT_EQ(p.Forward(p.Inverse(x)), x) << "n=" << n << " x=" << x;
      fixed_points += (y == x);
    }
    EXPECT_LE(fixed_points, 2u) << "n=" << n;
  }
}

// A permutation that is affine over GF(2) (a Feistel network with too few rounds or a linear
// round function) maps a one-bit input difference to a few output differences; a random one
// to about as many as there are inputs.
TEST(PermutationTest, OneBitDifferencesSpreadOverOutputs) {
  const uint64_t n = 1 << 13;  // a power of 2: no cycle walking, the raw network
  const Permutation p = Permutation::Make(n, 5, 0, 0);
  for (int bit = 0; bit < 13; ++bit) {
    std::unordered_set<uint64_t> diffs;
    for (uint64_t x = 0; x < n; ++x) diffs.insert(p.Forward(x) ^ p.Forward(x ^ (1ull << bit)));
    EXPECT_GT(diffs.size(), n / 8) << "bit " << bit;
  }
}

// ---------------------------------------------------------------------------------------------
// Options and Create

TEST(EpochOrderTest, RejectsBadOptions) {
  EXPECT_EQ(EpochOrder::Create(0, 0, Opts(1)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EpochOrder::Create((1ull << 63) + 1, 0, Opts(1)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(EpochOrder::Create(1ull << 63, 0, Opts(1)).ok());
  OrderOptions o = Opts(1, 0, 0);
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EpochOrder::Create(10, 0, o).status().code(), StatusCode::kInvalidArgument);
  o = Opts(1, 3, 3);
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EpochOrder::Create(10, 0, o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Opts(1, 2, 3).Validate().ok());
}

TEST(EpochOrderTest, LocalityValidatesShards) {
  const OrderOptions o = Opts(1, 0, 1, Remainder::kPad, /*locality=*/2);
  auto code = [&](std::vector<uint64_t> starts, uint64_t n = 10) {
    return EpochOrder::Create(n, 0, o, starts).status().code();
  };
  EXPECT_EQ(code({}), StatusCode::kInvalidArgument);           // missing
  EXPECT_EQ(code({1, 5}), StatusCode::kInvalidArgument);       // not starting at 0
  EXPECT_EQ(code({0, 5, 3}), StatusCode::kInvalidArgument);    // descending
  EXPECT_EQ(code({0, 5, 11}), StatusCode::kInvalidArgument);   // past the end
  EXPECT_EQ(code({0, 5, 5, 10}), StatusCode::kOk);             // empty shards are fine
  OrderOptions unshuffled = o;
  unshuffled.shuffle = false;
  EXPECT_EQ(EpochOrder::Create(10, 0, unshuffled).status().code(), StatusCode::kInvalidArgument);
  // Shards are not needed without locality.
  EXPECT_TRUE(EpochOrder::Create(10, 0, Opts(1)).ok());
}

TEST(EpochOrderTest, AccessorsAndCopies) {
  const EpochOrder a = MakeOrder(1000, 9, Opts(4, 1, 3, Remainder::kUneven));
  EXPECT_EQ(a.num_samples(), 1000u);
  EXPECT_EQ(a.epoch(), 9u);
  EXPECT_EQ(a.options().rank, 1u);
  EXPECT_EQ(a.size(), 333u);
  const EpochOrder b = a;  // a value: copies give the same order
  for (uint64_t p = 0; p < a.size(); ++p) ASSERT_EQ(a.At(p), b.At(p));
}

// ---------------------------------------------------------------------------------------------
// Determinism

TEST(EpochOrderTest, SameSeedAndEpochGiveTheSameOrder) {
  const std::vector<uint64_t> starts = ShardStarts(5000, 100, false);
  for (uint32_t locality : {0u, 3u}) {
    const OrderOptions o = Opts(11, 0, 1, Remainder::kPad, locality);
    const auto a = FullOrder(MakeOrder(5000, 2, o, starts));
    const auto b = FullOrder(MakeOrder(5000, 2, o, starts));
    EXPECT_EQ(a, b);
    auto differing = [&](const std::vector<uint64_t>& c) {
      uint64_t d = 0;
      for (size_t i = 0; i < a.size(); ++i) d += a[i] != c[i];
      return d;
    };
    // A random pair of permutations agrees in about one position (a few more with locality,
    // where windows are small); demand 95% differ.
    EXPECT_GT(differing(FullOrder(MakeOrder(5000, 3, o, starts))), 4750u);
    OrderOptions other_seed = o;
    other_seed.seed = 12;
    EXPECT_GT(differing(FullOrder(MakeOrder(5000, 2, other_seed, starts))), 4750u);
  }
}

// Resuming a run with a newer build must give the same order: these values pin the round
// function, key derivation and salts. Change them only with a note in the release.
TEST(EpochOrderTest, OrderIsStableAcrossReleases) {
  auto first8 = [](const EpochOrder& order) {
    std::vector<uint64_t> v(8);
    for (uint64_t p = 0; p < 8; ++p) v[p] = order.At(p);
    return v;
  };
  // Even bit count (equal halves), odd bit count (halves of 8 and 9 bits), and locality.
  EXPECT_EQ(first8(MakeOrder(1000, 3, Opts(42))),
            (std::vector<uint64_t>{779, 669, 641, 948, 595, 693, 169, 594}));
  EXPECT_EQ(first8(MakeOrder(100003, 1, Opts(7))),
            (std::vector<uint64_t>{60982, 6534, 31620, 62348, 65968, 67660, 44544, 53778}));
  std::vector<uint64_t> starts;
  for (uint64_t s = 0; s < 1000; s += 100) starts.push_back(s);
  EXPECT_EQ(first8(MakeOrder(1000, 3, Opts(42, 0, 1, Remainder::kPad, 3), starts)),
            (std::vector<uint64_t>{276, 752, 777, 727, 226, 250, 232, 845}));
}

// ---------------------------------------------------------------------------------------------
// The rank split

struct SplitCase {
  uint64_t n;
  uint32_t world;
};

// For every remainder mode, many sizes and world sizes (including world > n), with and without
// shuffling and locality: rank r reads global positions r, r + W, ...; kUneven reads every
// sample exactly once, kDrop every sample at most once (exactly the tail of the order is
// dropped), kPad every sample once plus repeats of the start of the order.
TEST(EpochOrderTest, RanksSplitTheEpochExactly) {
  const uint64_t sizes[] = {1, 2, 3, 10, 17, 100, 1001};
  const uint32_t worlds[] = {1, 2, 3, 7, 64};
  for (uint64_t n : sizes) {
    const std::vector<uint64_t> starts = ShardStarts(n, 4, true);
    for (int variant = 0; variant < 3; ++variant) {  // shuffled, unshuffled, locality 2
      std::vector<uint32_t> world_list(std::begin(worlds), std::end(worlds));
      world_list.push_back(static_cast<uint32_t>(n + 5));
      for (uint32_t world : world_list) {
        for (Remainder rem : {Remainder::kPad, Remainder::kDrop, Remainder::kUneven}) {
          OrderOptions o = Opts(77, 0, 1, rem, variant == 2 ? 2 : 0);
          o.shuffle = variant != 1;
          const std::vector<uint64_t> global = FullOrder(MakeOrder(n, 5, o, starts));
          ASSERT_EQ(global.size(), n);
          ASSERT_TRUE(IsPermutation(global));
          if (!o.shuffle) {
            for (uint64_t p = 0; p < n; ++p) ASSERT_EQ(global[p], p);
          }
          const uint64_t total = rem == Remainder::kPad    ? (n + world - 1) / world * world
                                 : rem == Remainder::kDrop ? n / world * world
                                                           : n;
          std::vector<uint64_t> count(n, 0);
          uint64_t sum = 0;
          o.world_size = world;
          for (uint32_t r = 0; r < world; ++r) {
            o.rank = r;
            const EpochOrder order = MakeOrder(n, 5, o, starts);
            const uint64_t expected_size =
                rem == Remainder::kPad    ? (n + world - 1) / world
                : rem == Remainder::kDrop ? n / world
                                          : n / world + (r < n % world ? 1 : 0);
            ASSERT_EQ(order.size(), expected_size) << "n=" << n << " world=" << world;
            sum += order.size();
            for (uint64_t p = 0; p < order.size(); ++p) {
              const uint64_t g = r + p * world;
              const uint64_t index = order.At(p);
              ASSERT_EQ(index, global[g % n]) << "n=" << n << " world=" << world << " r=" << r;
              ++count[index];
              // Owner and GlobalPosition agree with At.
              ASSERT_EQ(order.Owner(g), std::make_optional(std::make_pair(r, p)));
              ASSERT_EQ(order.GlobalPosition(index), g % n);
            }
          }
          ASSERT_EQ(sum, total);
          const EpochOrder any = MakeOrder(n, 5, o, starts);
          for (uint64_t g = total; g < std::max(total, n) + world; ++g) {
            ASSERT_FALSE(any.Owner(g).has_value()) << "g=" << g;
          }
          for (uint64_t i = 0; i < n; ++i) {
            const uint64_t g = any.GlobalPosition(i);
            // Global positions g, g + n, g + 2n, ... below the total read sample i.
            const uint64_t expected = g < total ? (total - g + n - 1) / n : 0;
            ASSERT_EQ(count[i], expected) << "n=" << n << " world=" << world << " i=" << i;
            if (rem == Remainder::kUneven) { ASSERT_EQ(count[i], 1u); }
            if (rem == Remainder::kDrop) { ASSERT_LE(count[i], 1u); }
            if (rem == Remainder::kPad) { ASSERT_GE(count[i], 1u); }
          }
        }
      }
    }
  }
}

TEST(EpochOrderTest, HugeDatasetSplitAcrossRanks) {
  const uint64_t n = 1ull << 63;
  for (Remainder rem : {Remainder::kPad, Remainder::kDrop, Remainder::kUneven}) {
    for (uint32_t r : {0u, 5u, 63u}) {
      const EpochOrder order = MakeOrder(n, 1, Opts(3, r, 64, rem));
      EXPECT_EQ(order.size(), n / 64);
      for (uint64_t p : std::vector<uint64_t>{0, 1, 12345, order.size() - 1}) {
        const uint64_t index = order.At(p);
        ASSERT_LT(index, n);
        ASSERT_EQ(order.GlobalPosition(index), r + p * 64);
        ASSERT_EQ(order.Owner(r + p * 64), std::make_optional(std::make_pair(r, p)));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Locality

TEST(EpochOrderTest, LocalityWindowsAreContiguousAndSpanKShards) {
  const uint64_t n = 20000;
  for (bool with_empty : {false, true}) {
    const std::vector<uint64_t> starts = ShardStarts(n, 200, with_empty);
    uint64_t nonempty = 0;
    for (size_t s = 0; s < starts.size(); ++s) {
      nonempty += (s + 1 < starts.size() ? starts[s + 1] : n) > starts[s];
    }
    for (uint32_t k : {1u, 2u, 4u, 7u, 1000u}) {
      std::set<uint64_t> first_shards;
      for (uint64_t epoch = 0; epoch < 4; ++epoch) {
        const EpochOrder order = MakeOrder(n, epoch, Opts(9, 0, 1, Remainder::kPad, k), starts);
        const std::vector<uint64_t> v = FullOrder(order);
        ASSERT_TRUE(IsPermutation(v));
        for (uint64_t p = 0; p < n; ++p) ASSERT_EQ(order.GlobalPosition(v[p]), p);
        first_shards.insert(ShardOf(starts, v[0]));

        // Split the order into the smallest runs that hold whole shards: each must draw from at
        // most k shards. Each window is one such run unless its shuffle happened to put some of
        // its shards entirely before the others (vanishingly rare with ~200-sample shards), so
        // fewer runs than windows means samples crossed window boundaries.
        std::vector<uint64_t> last(starts.size(), 0);
        for (uint64_t p = 0; p < n; ++p) last[ShardOf(starts, v[p])] = p;
        uint64_t runs = 0;
        uint64_t run_end = 0;
        std::set<uint64_t> run_shards;
        uint64_t adjacent = 0;
        for (uint64_t p = 0; p < n; ++p) {
          const uint64_t s = ShardOf(starts, v[p]);
          run_shards.insert(s);
          run_end = std::max(run_end, last[s]);
          if (p + 1 < n) adjacent += v[p + 1] == v[p] + 1;
          if (p == run_end) {
            ASSERT_LE(run_shards.size(), k) << "k=" << k << " run ending at " << p;
            ++runs;
            run_shards.clear();
          }
        }
        // Windows of k slots can include empty shards, so only bounds hold in that case.
        if (with_empty) {
          EXPECT_GE(runs, (nonempty + k - 1) / k) << "k=" << k;
          EXPECT_LE(runs, (starts.size() + k - 1) / k) << "k=" << k;
        } else {
          EXPECT_EQ(runs, (nonempty + k - 1) / k) << "k=" << k;
        }
        // Within a window the samples are shuffled, not read in index order.
        EXPECT_LT(adjacent, n / 50) << "k=" << k;
      }
      // The shard order changes from epoch to epoch (one window covers everything for k=1000).
      if (k < 1000) { EXPECT_GT(first_shards.size(), 1u) << "k=" << k; }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Shuffle quality. Bounds are about 5 standard deviations wide for a uniform random permutation;
// identity, rotations, affine maps and few-round networks fail at least one.

TEST(ShuffleQualityTest, DisplacementAdjacencyAndRankCorrelation) {
  for (uint64_t n : {10000ull, 4097ull}) {  // 4097: the worst case for cycle walking
    const std::vector<uint64_t> v = FullOrder(MakeOrder(n, 0, Opts(2024)));
    double displacement = 0, d2 = 0;
    uint64_t adjacent = 0;
    std::unordered_set<uint64_t> gaps;
    for (uint64_t p = 0; p < n; ++p) {
      const double d = std::abs(static_cast<double>(p) - static_cast<double>(v[p]));
      displacement += d;
      d2 += d * d;
      if (p + 1 < n) {
        adjacent += v[p + 1] == v[p] + 1;
        gaps.insert((v[p + 1] + n - v[p]) % n);
      }
    }
    const double nd = static_cast<double>(n);
    // E|U - V| = 1/3 for independent uniforms; sd of the mean is sqrt(1/18 / n) <= 0.004.
    EXPECT_NEAR(displacement / n / nd, 1.0 / 3.0, 0.02) << "n=" << n;
    // Expected about 1 adjacent pair; the identity has n - 1.
    EXPECT_LE(adjacent, 8u) << "n=" << n;
    // A random order has ~(1 - 1/e) n distinct successive gaps; an affine map has one.
    EXPECT_GT(gaps.size(), n / 2) << "n=" << n;
    // Spearman's rho between index and position; sd 1/sqrt(n).
    const double rho = 1.0 - 6.0 * d2 / (nd * (nd * nd - 1.0));
    EXPECT_LT(std::abs(rho), 5.0 / std::sqrt(nd)) << "n=" << n;
  }
}

// The position of each index is uniform across seeds: chi-square over 10 position buckets for
// each of n indices, 200 seeds.
TEST(ShuffleQualityTest, PositionsAreUniformAcrossSeeds) {
  for (uint64_t n : {1000ull, 37ull}) {
    const int kBuckets = 10;
    const int kSeeds = 200;
    std::vector<int> count(n * kBuckets, 0);
    for (int seed = 0; seed < kSeeds; ++seed) {
      const EpochOrder order = MakeOrder(n, 0, Opts(1000 + seed));
      for (uint64_t p = 0; p < n; ++p) count[order.At(p) * kBuckets + p * kBuckets / n]++;
    }
    double chi2 = 0;
    uint64_t bad_indices = 0;
    for (uint64_t i = 0; i < n; ++i) {
      double chi2_i = 0;
      for (int b = 0; b < kBuckets; ++b) {
        // Bucket b holds positions [ceil(b n / B), ceil((b + 1) n / B)).
        const uint64_t lo = (b * n + kBuckets - 1) / kBuckets;
        const uint64_t hi = ((b + 1) * n + kBuckets - 1) / kBuckets;
        const double expected = static_cast<double>(kSeeds) * (hi - lo) / n;
        const double d = count[i * kBuckets + b] - expected;
        chi2_i += d * d / expected;
      }
      chi2 += chi2_i;
      bad_indices += chi2_i > 21.67;  // p = 0.01 at 9 degrees of freedom
    }
    const double df = static_cast<double>(n) * (kBuckets - 1);
    EXPECT_LT(chi2, df + 6 * std::sqrt(2 * df)) << "n=" << n;
    EXPECT_LE(bad_indices, std::max<uint64_t>(3, n * 3 / 100)) << "n=" << n;
  }
}

// Successive epochs are unrelated: rank correlation of each index's positions in two epochs.
TEST(ShuffleQualityTest, EpochsAreIndependent) {
  const uint64_t n = 10000;
  const EpochOrder a = MakeOrder(n, 0, Opts(8));
  const EpochOrder b = MakeOrder(n, 1, Opts(8));
  double d2 = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a.GlobalPosition(i)) - b.GlobalPosition(i);
    d2 += d * d;
  }
  const double nd = static_cast<double>(n);
  const double rho = 1.0 - 6.0 * d2 / (nd * (nd * nd - 1.0));
  EXPECT_LT(std::abs(rho), 5.0 / std::sqrt(nd));
}

}  // namespace
}  // namespace granary
