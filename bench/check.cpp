// `monomoe check`: random configurations against the float64 CPU reference, on one GPU, on one
// rank per GPU (forked or joined), or on W virtual ranks of one GPU.
#include <algorithm>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "bench/device_problem.hpp"
#include "bench/ranks.hpp"
#include "launch/join.hpp"
#include "launch/workers.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe::bench {

namespace {

// One random configuration of `check`, drawn for `world` ranks.
struct CheckCase {
  LayerConfig config;
  std::vector<std::int64_t> tokens;  // per rank
  bool skew = false;
  std::int64_t skew_expert = 0;
  std::uint64_t seed = 0;            // of the problem's inputs and weights
  // Every rank passes a random router's routing (reference::give_random_routing) instead of the
  // gate's: k distinct uniform experts, positive weights that need not sum to 1.
  bool given_routing = false;

  reference::Problem problem() const {
    reference::Problem pr = reference::make_problem(config, tokens, seed);
    if (skew) reference::skew_gate_towards(pr, skew_expert, 50.f);
    if (given_routing) reference::give_random_routing(pr, seed);
    return pr;
  }
  std::string describe(int rank) const {
    return config.describe() + (skew ? " skewed" : "") + (given_routing ? " given-routing" : "") +
           " tokens=" + std::to_string(tokens[static_cast<std::size_t>(rank)]) +
           " seed=" + std::to_string(seed);
  }
};

// Cases come from one generator seeded with --seed, so every rank draws the same list (the
// collective layer constructions line up).
CheckCase draw_case(std::mt19937_64& rng, int world, double timeout_seconds) {
  const auto pick = [&](std::int64_t lo, std::int64_t hi) {
    return lo + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(hi - lo + 1));
  };
  CheckCase k;
  LayerConfig& c = k.config;
  c.dtype = static_cast<DType>(pick(0, 2));
  c.activation = static_cast<Activation>(pick(0, 3));
  c.hidden = 128 * pick(1, 4);
  c.ffn = 128 * pick(1, 4);
  if (world == 1) {
    c.experts = pick(1, 2) == 1 ? pick(1, 16) : pick(17, 256);
  } else {
    c.experts = world * (pick(1, 2) == 1 ? pick(1, 4) : pick(5, 256 / world));
  }
  c.topk = pick(1, std::min<std::int64_t>(8, c.experts));
  c.max_tokens = pick(1, 700);
  c.bias = pick(0, 1) == 1;
  c.renormalize = pick(0, 3) != 0;
  c.capacity_factor = pick(0, 3) == 0 ? 0.25 * static_cast<double>(pick(1, 8)) : 0.0;
  c.timeout_seconds = timeout_seconds;
  c.world_size = world;
  k.skew = pick(0, 4) == 0;
  k.skew_expert = pick(0, c.experts - 1);
  // Tokens per rank: different on each rank, now and then none.
  k.tokens.assign(static_cast<std::size_t>(world), c.max_tokens);
  for (std::size_t r = 1; r < k.tokens.size(); ++r) {
    k.tokens[r] = pick(0, 5) == 0 ? 0 : pick(1, c.max_tokens);
  }
  k.seed = rng();
  // Drawn last, so that the cases of a seed keep the shapes they had before the layout existed.
  c.weight_layout = pick(0, 1) == 1 ? WeightLayout::out_in : WeightLayout::in_out;
  // One case in four routes outside the layer. Taken from the case's seed, not from `rng`, so that
  // every --seed still draws the cases (shapes and seeds) it drew before given routing existed.
  k.given_routing = (k.seed >> 32) % 4 == 0;
  // Half the cases carry a shared expert of 1 or 2 slices (a few MiB at these shapes), from other
  // bits of the seed for the same reason.
  const std::uint64_t shared_slices = (k.seed >> 40) % 4;
  c.shared_ffn = shared_slices < 2 ? 0 : static_cast<std::int64_t>(shared_slices - 1) * c.ffn;
  // fp8 in one case in three with [out, in] weights (the only layout it takes; LayerConfig refuses
  // fp8 with in-out), from other bits of the seed for the same reason. Its widths are multiples of
  // 128 already, as every case's.
  if (c.weight_layout == WeightLayout::out_in && (k.seed >> 48) % 3 == 0) c.dtype = DType::fp8;
  return k;
}

// The random cases of one rank; each rank checks its own tokens.
int check_rank(const CheckOptions& o, const launch::WorkerContext& w, std::ostream& out) {
  const int rank = w.rank;
  const int world = w.world;
  std::mt19937_64 rng(o.seed);
  const std::string tag = rank_tag(rank, world);
  Communicator comm(w.id, rank, world, w.device);
  launch::finish_rendezvous(w);
  int failed = 0;
  for (int i = 0; i < o.cases; ++i) {
    CheckCase k = draw_case(rng, world, o.timeout_seconds);
    k.config.rank = rank;
    const reference::Problem pr = k.problem();
    const reference::Result ref = reference::run(pr);
    bool ok = false;
    std::string detail;
    try {
      DeviceProblem dev(pr, rank);
      MoELayer layer(k.config, comm, dev.weights());
      dev.poison_y();
      dev.forward(layer);
      ok = check_forward(layer, dev, pr, ref.ranks[static_cast<std::size_t>(rank)], rank, detail);
    } catch (const Error& e) {
      detail = std::string("error: ") + e.what();
    }
    failed += ok ? 0 : 1;
    if (rank == 0 || !ok) {
      out << tag << "case " << i + 1 << "/" << o.cases << " " << (ok ? "PASS" : "FAIL") << "  "
          << k.describe(rank) << "  " << detail << std::endl;
    }
  }
  out << tag << (o.cases - failed) << " passed, " << failed << " failed" << std::endl;
  return failed == 0 ? 0 : 1;
}

// The same cases with W virtual ranks in this process on one GPU: every rank's output is checked.
int check_virtual(const CheckOptions& o, std::ostream& out) {
  const int world = o.virtual_ranks;
  std::mt19937_64 rng(o.seed);
  int failed = 0;
  for (int i = 0; i < o.cases; ++i) {
    const CheckCase k = draw_case(rng, world, o.timeout_seconds);
    const reference::Problem pr = k.problem();
    const reference::Result ref = reference::run(pr);
    std::vector<bool> ok(static_cast<std::size_t>(world), false);
    std::vector<std::string> detail(static_cast<std::size_t>(world));
    try {
      std::vector<std::unique_ptr<DeviceProblem>> dev;
      std::vector<ExpertWeights> weights;
      std::vector<const void*> x;
      std::vector<std::int64_t> tokens;
      std::vector<void*> y;
      std::vector<Routing> routing;
      for (int r = 0; r < world; ++r) {
        dev.push_back(std::make_unique<DeviceProblem>(pr, r));
        dev.back()->poison_y();
        weights.push_back(dev.back()->weights());
        x.push_back(dev.back()->x());
        tokens.push_back(dev.back()->tokens());
        y.push_back(dev.back()->y());
        if (k.given_routing) routing.push_back(dev.back()->routing());
      }
      VirtualRanks vr(k.config, o.device, weights);
      vr.forward(x, tokens, y, {}, routing);
      vr.synchronize();
      for (int r = 0; r < world; ++r) {
        const auto i_r = static_cast<std::size_t>(r);
        ok[i_r] = check_forward(vr.layer(r), *dev[i_r], pr, ref.ranks[i_r], r, detail[i_r]);
      }
    } catch (const Error& e) {
      for (std::string& d : detail) d = std::string("error: ") + e.what();
    }
    bool all = true;
    for (int r = 0; r < world; ++r) {
      const auto i_r = static_cast<std::size_t>(r);
      all = all && ok[i_r];
      if (r == 0 || !ok[i_r]) {
        out << "[virtual rank " << r << "/" << world << "] case " << i + 1 << "/" << o.cases << " "
            << (ok[i_r] ? "PASS" : "FAIL") << "  " << k.describe(r) << "  " << detail[i_r]
            << std::endl;
      }
    }
    failed += all ? 0 : 1;
  }
  out << "virtual ranks " << world << ": " << (o.cases - failed) << " passed, " << failed
      << " failed" << std::endl;
  return failed == 0 ? 0 : 1;
}

}  // namespace

int run_check(const CheckOptions& o, std::ostream& out) {
  if (o.virtual_ranks > 0) return check_virtual(o, out);
  if (o.join.enabled) return check_rank(o, joined(o.join), out);
  if (o.gpus == 1) {
    launch::WorkerContext w;
    w.id = UniqueId::create();
    return check_rank(o, w, out);
  }
  return launch::run_local_workers(
      o.gpus, [&](const launch::WorkerContext& w) { return check_rank(o, w, out); },
      supervision(o.timeout_seconds));
}

}  // namespace monomoe::bench
