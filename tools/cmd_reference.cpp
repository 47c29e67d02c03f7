// `monomoe reference`: runs the float64 CPU reference of the layer over all ranks, without a GPU.
// Useful to see routing/drop behaviour of a configuration and as the ground truth bench/check use.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/metrics.hpp"
#include "commands.hpp"
#include "reference/reference.hpp"

namespace monomoe::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Multiply-adds x2 of the gate, of the k expert FFNs and of the shared expert of every token (what
// the layer computes).
double layer_flops(const LayerConfig& c, std::int64_t total_tokens) {
  const double gate = bench::gemm_flop(total_tokens, c.experts, c.hidden);
  return gate + bench::ffn_flop(total_tokens * c.topk, c) + bench::shared_flop(total_tokens, c);
}

// "none", or "e3:12 e17:4" for the experts that dropped anything.
std::string compact_drops(const std::vector<std::int64_t>& per_expert) {
  std::ostringstream os;
  for (std::size_t e = 0; e < per_expert.size(); ++e) {
    if (per_expert[e] == 0) continue;
    if (os.tellp() > 0) os << ' ';
    os << 'e' << e << ':' << per_expert[e];
  }
  return os.tellp() > 0 ? os.str() : "none";
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

int run_reference(const ParsedArgs& args) {
  const LayerFlags flags = parse_layer_flags(args);
  const LayerConfig& config = flags.config;
  const int threads = static_cast<int>(args.int_in("--threads", 0, 0, 4096));
  const int used_threads =
      threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const std::vector<std::int64_t> tokens(static_cast<std::size_t>(config.world_size),
                                         config.max_tokens);
  const std::int64_t total_tokens = config.max_tokens * config.world_size;
  const double flops = layer_flops(config, total_tokens);

  std::cout << "config      " << config.describe() << "\n"
            << "run         seed " << flags.seed << ", " << used_threads
            << (used_threads == 1 ? " thread, " : " threads, ") << config.max_tokens
            << " tokens on each of " << config.world_size << " rank(s), "
            << fmt("%.2f", flops * 1e-9) << " GFLOP in float64\n"
            << std::flush;

  const auto t0 = Clock::now();
  const reference::Problem problem = reference::make_problem(config, tokens, flags.seed);
  const double make_s = seconds_since(t0);
  const auto t1 = Clock::now();
  const reference::Result result = reference::run(problem, threads);
  const double run_s = std::max(seconds_since(t1), 1e-9);

  double sum_sq = 0.0;
  double sum_abs = 0.0;
  std::int64_t values = 0;
  std::int64_t not_finite = 0;
  for (const reference::RankResult& r : result.ranks) {
    for (double v : r.y) {
      if (!std::isfinite(v)) ++not_finite;
      sum_sq += v * v;
      sum_abs += std::abs(v);
    }
    values += static_cast<std::int64_t>(r.y.size());
  }
  const double mean_abs = values > 0 ? sum_abs / static_cast<double>(values) : 0.0;

  std::cout << "wall time   " << fmt("%.3f", run_s) << " s (inputs " << fmt("%.3f", make_s)
            << " s)\n"
            << "output      norm ||y||_F = " << fmt("%.6e", std::sqrt(sum_sq))
            << ", mean |y| = " << fmt("%.6e", mean_abs) << " over " << values << " values\n"
            << "drops       " << result.dropped
            << " (per expert: " << compact_drops(result.dropped_per_expert) << ")\n"
            << "throughput  " << fmt("%.0f", static_cast<double>(total_tokens) / run_s)
            << " tokens/s, " << fmt("%.2f", flops / run_s * 1e-9) << " GFLOP/s\n";
  if (not_finite > 0) {
    std::cerr << "monomoe reference: error: " << not_finite << " output values are not finite\n";
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace

Command reference_command() {
  return {
      .name = "reference",
      .summary = "Run the float64 CPU reference of the layer (all ranks, no GPU needed).",
      .details =
          "Every rank gets --tokens tokens of random inputs from --seed. Prints the config, the "
          "wall\n"
          "time, the output's Frobenius norm and mean |y|, the capacity drops (total and per "
          "expert)\n"
          "and tokens/s. Example:\n"
          "  monomoe reference --tokens 512 --hidden 256 --ffn 512 --experts 8 --topk 2",
      .options = with_layer_options({
          {"--threads", "T", "CPU threads; 0 = all hardware threads (default 0)"},
      }),
      .run = run_reference,
  };
}

}  // namespace monomoe::cli
