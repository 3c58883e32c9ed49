// granary_order_quality: what locality windows do to shuffle quality, and what EpochOrder costs.
//
// Prints one JSON line per result:
//   {"bench":"order_quality", ...}  for locality_shards = 0 (global shuffle), 1, 4, 16 over a
//       dataset of --samples samples in --shards equal shards, read in batches of --batch:
//       mean distinct shards per batch, mean |position - index| / N, Spearman's rho between index
//       and position, lag-1 autocorrelation of the shard ids read, the fraction of successive
//       samples from the same shard, and ns per At() / GlobalPosition(). Each line carries the
//       value a uniform random permutation would give ("ideal_*") for comparison.
//   {"bench":"order_at", ...}  ns per At() of the global shuffle for several dataset sizes
//       (including 2^k + 1, the worst case for cycle walking), next to the ns per sample
//       std::shuffle takes to materialize the same order (the ceiling it replaces), and the ratio.
//
// Usage: granary_order_quality [--samples N] [--shards S] [--batch B] [--seed X]
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "granary/dataset.h"

namespace granary {
namespace {

using Clock = std::chrono::steady_clock;

double NsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count();
}

// Keeps results alive so the timed loops are not optimized away.
volatile uint64_t g_sink = 0;

struct Config {
  uint64_t samples = 1000000;
  uint64_t shards = 2000;
  uint64_t batch = 256;
  uint64_t seed = 1;
};

EpochOrder MustCreate(uint64_t n, const OrderOptions& o, std::span<const uint64_t> shards = {}) {
  Result<EpochOrder> r = EpochOrder::Create(n, 0, o, shards);
  if (!r.ok()) {
    std::fprintf(stderr, "EpochOrder::Create: %s\n", r.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(r);
}

// Mean ns per call of f(i) for i in [0, calls), best of 3 runs (the machine is shared).
template <typename F>
double TimePerCall(uint64_t calls, F f) {
  double best = 1e300;
  for (int run = 0; run < 3; ++run) {
    uint64_t sum = 0;
    const auto start = Clock::now();
    for (uint64_t i = 0; i < calls; ++i) sum += f(i);
    best = std::min(best, NsSince(start) / static_cast<double>(calls));
    g_sink = g_sink + sum;
  }
  return best;
}

void QualityLine(const Config& c, uint32_t locality) {
  const uint64_t n = c.samples;
  const uint64_t per_shard = n / c.shards;  // the last shard takes the remainder
  std::vector<uint64_t> starts(c.shards);
  for (uint64_t s = 0; s < c.shards; ++s) starts[s] = s * per_shard;
  auto shard_of = [&](uint64_t index) {
    return std::min<uint64_t>(index / per_shard, c.shards - 1);
  };

  OrderOptions o;
  o.seed = c.seed;
  o.locality_shards = locality;
  const double create_us = TimePerCall(3, [&](uint64_t) {
    return MustCreate(n, o, starts).size();
  }) / 1e3;
  const EpochOrder order = MustCreate(n, o, starts);

  std::vector<uint64_t> v(n);
  for (uint64_t p = 0; p < n; ++p) v[p] = order.At(p);

  // Distinct shards per full batch.
  uint64_t distinct_sum = 0;
  const uint64_t batches = n / c.batch;
  std::vector<uint64_t> seen(c.shards, UINT64_MAX);
  for (uint64_t b = 0; b < batches; ++b) {
    for (uint64_t p = b * c.batch; p < (b + 1) * c.batch; ++p) {
      const uint64_t s = shard_of(v[p]);
      if (seen[s] != b) {
        seen[s] = b;
        ++distinct_sum;
      }
    }
  }

  // Displacement and Spearman's rho (both index and position are ranks 0..n-1).
  const double nd = static_cast<double>(n);
  double abs_d = 0, d2 = 0;
  for (uint64_t p = 0; p < n; ++p) {
    const double d = static_cast<double>(p) - static_cast<double>(v[p]);
    abs_d += std::abs(d);
    d2 += d * d;
  }
  const double rho = 1.0 - 6.0 * d2 / (nd * (nd * nd - 1.0));

  // Lag-1 autocorrelation of the shard id sequence, and same-shard successors.
  double mean = 0;
  for (uint64_t p = 0; p < n; ++p) mean += static_cast<double>(shard_of(v[p]));
  mean /= nd;
  double var = 0, cov = 0;
  uint64_t same = 0;
  for (uint64_t p = 0; p < n; ++p) {
    const double x = static_cast<double>(shard_of(v[p])) - mean;
    var += x * x;
    if (p + 1 < n) {
      cov += x * (static_cast<double>(shard_of(v[p + 1])) - mean);
      same += shard_of(v[p]) == shard_of(v[p + 1]);
    }
  }

  // At() over positions in sequence, GlobalPosition() over indices in shuffled order: the way a
  // loader calls them (reading ahead; ranking samples of the current batch for the next epoch).
  const double at_ns = TimePerCall(n, [&](uint64_t p) { return order.At(p); });
  const double inverse_ns =
      TimePerCall(n, [&](uint64_t i) { return order.GlobalPosition(v[i]); });

  // A uniform random permutation: a batch draws c.batch samples without replacement from
  // shards of per_shard samples each.
  const double miss =
      std::exp(std::lgamma(nd - per_shard + 1) - std::lgamma(nd - per_shard - c.batch + 1) -
               std::lgamma(nd + 1) + std::lgamma(nd - c.batch + 1));
  const double ideal_distinct = static_cast<double>(c.shards) * (1.0 - miss);
  std::printf(
      "{\"bench\":\"order_quality\",\"samples\":%llu,\"shards\":%llu,\"batch\":%llu,"
      "\"locality_shards\":%u,\"distinct_shards_per_batch\":%.2f,"
      "\"ideal_distinct_shards_per_batch\":%.2f,\"mean_abs_displacement\":%.4f,"
      "\"ideal_mean_abs_displacement\":0.3333,\"spearman_rho\":%.4f,\"ideal_spearman_rho\":0,"
      "\"shard_lag1_autocorr\":%.4f,\"ideal_shard_lag1_autocorr\":0,"
      "\"same_shard_successor\":%.5f,\"ideal_same_shard_successor\":%.5f,"
      "\"at_ns\":%.1f,\"global_position_ns\":%.1f,\"create_us\":%.1f}\n",
      static_cast<unsigned long long>(n), static_cast<unsigned long long>(c.shards),
      static_cast<unsigned long long>(c.batch), locality,
      static_cast<double>(distinct_sum) / static_cast<double>(batches), ideal_distinct,
      abs_d / nd / nd, rho, cov / var, static_cast<double>(same) / (nd - 1),
      static_cast<double>(per_shard - 1) / (nd - 1), at_ns, inverse_ns, create_us);
  std::fflush(stdout);
}

void AtLine(uint64_t n, uint32_t world, uint64_t seed) {
  OrderOptions o;
  o.seed = seed;
  o.world_size = world;
  o.rank = world - 1;
  const EpochOrder order = MustCreate(n, o);
  const uint64_t calls = std::min<uint64_t>(order.size(), 2000000);
  const double at_ns = TimePerCall(calls, [&](uint64_t p) { return order.At(p); });
  std::vector<uint64_t> indices(std::min<uint64_t>(n, 2000000));
  std::mt19937_64 index_rng(seed);
  for (uint64_t& i : indices) i = index_rng() % n;
  const double inverse_ns = TimePerCall(
      indices.size(), [&](uint64_t i) { return order.GlobalPosition(indices[i]); });
  // Expected Feistel passes per call: the network's domain (a power of 2, at least 4) over n.
  const int bits = std::max(2, 64 - std::countl_zero(n - 1));
  const double domain = std::ldexp(1.0, bits);

  // The ceiling: materializing the order with std::shuffle, per sample (only where it fits).
  double shuffle_ns = 0;
  if (n <= 16000000) {
    std::vector<uint64_t> perm(n);
    std::mt19937_64 rng(seed);
    double best = 1e300;
    for (int run = 0; run < 3; ++run) {
      std::iota(perm.begin(), perm.end(), 0);
      const auto start = Clock::now();
      std::shuffle(perm.begin(), perm.end(), rng);
      best = std::min(best, NsSince(start) / static_cast<double>(n));
      g_sink = g_sink + perm[n / 2];
    }
    shuffle_ns = best;
  }
  std::printf(
      "{\"bench\":\"order_at\",\"samples\":%llu,\"world_size\":%u,\"feistel_passes\":%.2f,"
      "\"at_ns\":%.1f,\"global_position_ns\":%.1f",
      static_cast<unsigned long long>(n), world, domain / static_cast<double>(n), at_ns,
      inverse_ns);
  if (shuffle_ns > 0) {
    std::printf(",\"ceiling\":\"std::shuffle ns per sample\",\"ceiling_ns\":%.1f,\"ratio\":%.2f",
                shuffle_ns, at_ns / shuffle_ns);
  }
  std::printf("}\n");
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  Config c;
  for (int i = 1; i + 1 < argc; i += 2) {
    const uint64_t value = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--samples") == 0) {
      c.samples = value;
    } else if (std::strcmp(argv[i], "--shards") == 0) {
      c.shards = value;
    } else if (std::strcmp(argv[i], "--batch") == 0) {
      c.batch = value;
    } else if (std::strcmp(argv[i], "--seed") == 0) {
      c.seed = value;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (c.shards == 0 || c.batch == 0 || c.samples < c.shards || c.samples < c.batch) {
    std::fprintf(stderr, "need samples >= shards >= 1 and samples >= batch >= 1\n");
    return 2;
  }
  for (uint32_t locality : {0u, 1u, 4u, 16u}) QualityLine(c, locality);
  for (uint64_t n : {uint64_t{1000000}, (uint64_t{1} << 20) + 1, uint64_t{1} << 20,
                     (uint64_t{1} << 32) + 1, uint64_t{1} << 63}) {
    AtLine(n, 1, c.seed);
  }
  AtLine(1000000, 8, c.seed);
  return 0;
}

}  // namespace
}  // namespace granary

int main(int argc, char** argv) { return granary::Main(argc, argv); }
