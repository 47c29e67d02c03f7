#include "bench/soak.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iomanip>
#include <memory>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "bench/device_problem.hpp"
#include "bench/ranks.hpp"
#include "host/check.hpp"
#include "launch/workers.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe::bench {

namespace {

constexpr int kInputSets = 3;  // x rotates over this many sets, all over the same weights
// Device memory may move by the driver's page size without a leak behind it.
constexpr long long kMemorySlack = 2ll << 20;

struct Tally {
  std::int64_t calls = 0, repeats = 0, repeat_mismatches = 0, checks = 0, check_failures = 0;
  double max_rel_error = 0.0;
  std::vector<double> latency_ms;
  // The calls right after a repeat or a reference check, apart: every rank does that host work at
  // the same call index, for a different time (its own token count), and with several ranks a
  // rank's next call waits inside the kernel for its peers, so its events time their host work too.
  std::vector<double> after_host_work_ms;
};

// min / median / max of v (sorted here), "-" when empty.
std::string spread(std::vector<double> v) {
  if (v.empty()) return "-";
  std::sort(v.begin(), v.end());
  const auto at = [&](double q) {
    return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
  };
  std::ostringstream s;
  s << std::fixed << std::setprecision(3) << "min " << at(0.0) << "  median " << at(0.5)
    << "  max " << at(1.0);
  return s.str();
}

// Tokens of call i on this rank: 0 and max_tokens now and then, otherwise any count in between.
std::int64_t tokens_of(std::int64_t i, std::int64_t max, std::mt19937_64& rng) {
  if (i % 97 == 0) return 0;
  if (i % 89 == 1) return max;
  return 1 + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(max));
}

// The first `tokens` rows of y as bytes (for bit-identity) after the stream is done.
std::vector<unsigned char> y_bytes(DeviceProblem& dev, std::int64_t tokens, const LayerConfig& c,
                                   cudaStream_t stream) {
  std::vector<unsigned char> out(static_cast<std::size_t>(tokens * c.hidden) *
                                 element_bytes(c.dtype));
  MONOMOE_CUDA(cudaStreamSynchronize(stream));
  if (!out.empty()) {
    MONOMOE_CUDA(cudaMemcpy(out.data(), dev.y(), out.size(), cudaMemcpyDeviceToHost));
  }
  return out;
}

int soak_rank(const SoakOptions& o, const launch::WorkerContext& w, std::ostream& out,
              std::ostream& progress) {
  const int rank = w.rank;
  const int world = w.world;
  const LayerConfig cfg = rank_config(o.config, rank, world);
  const std::int64_t max = cfg.max_tokens;
  const std::string tag = rank_tag(rank, world);
  const auto t0 = std::chrono::steady_clock::now();

  // kInputSets x max_tokens tokens per rank in one problem: the weights depend on the seed only,
  // so every set of x comes with the same weights (reference/problem.cpp).
  LayerConfig wide = cfg;
  wide.max_tokens = kInputSets * max;
  reference::Problem pr = reference::make_problem(
      wide, std::vector<std::int64_t>(static_cast<std::size_t>(world), wide.max_tokens), o.seed);
  std::vector<std::vector<float>> xs;  // this rank's sets
  const std::size_t set_floats = static_cast<std::size_t>(max * cfg.hidden);
  for (int k = 0; k < kInputSets; ++k) {
    const float* from = pr.x[static_cast<std::size_t>(rank)].data() + k * set_floats;
    xs.emplace_back(from, from + set_floats);
  }
  pr.config = cfg;
  pr.tokens.assign(static_cast<std::size_t>(world), max);
  for (auto& x : pr.x) x.resize(set_floats);

  Communicator comm(w.id, rank, world, w.device);
  std::vector<std::unique_ptr<DeviceProblem>> dev;
  for (int k = 0; k < kInputSets; ++k) {
    pr.x[static_cast<std::size_t>(rank)] = xs[static_cast<std::size_t>(k)];
    dev.push_back(std::make_unique<DeviceProblem>(pr, rank));
  }
  MoELayer layer(cfg, comm, dev[0]->weights());
  cudaStream_t stream = nullptr;
  MONOMOE_CUDA(cudaStreamCreate(&stream));
  cudaEvent_t start = nullptr, stop = nullptr;
  MONOMOE_CUDA(cudaEventCreate(&start));
  MONOMOE_CUDA(cudaEventCreate(&stop));
  // Reference checks: a sample of tokens (valid when dropless: a token's output depends on it
  // alone), or every token of a one-GPU call with a capacity limit; none with a capacity limit on
  // several ranks (the drops of a rank's tokens would need every rank's call).
  const bool can_check = cfg.capacity_factor <= 0.0 || world == 1;

  std::mt19937_64 rng(o.seed * 7919 + static_cast<std::uint64_t>(rank));
  Tally t;
  std::size_t memory_start = 0, memory_end = 0, total = 0;
  std::string failure;
  const std::int64_t report_every = std::max<std::int64_t>(100, o.calls / 20);
  try {
    for (std::int64_t i = 0; i < o.calls; ++i) {
      const std::int64_t tokens = tokens_of(i, max, rng);
      DeviceProblem& d = *dev[static_cast<std::size_t>(i % kInputSets)];
      MONOMOE_CUDA(cudaEventRecord(start, stream));
      layer.forward(d.x(), tokens, d.y(), stream);
      MONOMOE_CUDA(cudaEventRecord(stop, stream));
      MONOMOE_CUDA(cudaEventSynchronize(stop));
      layer.synchronize();  // a kernel error ends the soak here
      float ms = 0.f;
      MONOMOE_CUDA(cudaEventElapsedTime(&ms, start, stop));
      const auto did = [&](int every, std::int64_t call) {
        return every > 0 && call >= 0 && call % every == every - 1;
      };
      (did(o.repeat_every, i - 1) || did(o.check_every, i - 1) ? t.after_host_work_ms
                                                                : t.latency_ms)
          .push_back(ms);
      ++t.calls;
      if (i == 0) MONOMOE_CUDA(cudaMemGetInfo(&memory_start, &total));

      if (o.repeat_every > 0 && i % o.repeat_every == o.repeat_every - 1) {
        const std::vector<unsigned char> first = y_bytes(d, tokens, cfg, stream);
        d.poison_y();
        layer.forward(d.x(), tokens, d.y(), stream);
        layer.synchronize();
        ++t.repeats;
        if (first != y_bytes(d, tokens, cfg, stream)) {
          ++t.repeat_mismatches;
          out << tag << "call " << i << ": the repeat with the same input (" << tokens
              << " tokens) is not bit-identical" << std::endl;
        }
      }
      if (can_check && o.check_every > 0 && i % o.check_every == o.check_every - 1 &&
          tokens > 0) {
        pr.x[static_cast<std::size_t>(rank)] = xs[static_cast<std::size_t>(i % kInputSets)];
        pr.tokens[static_cast<std::size_t>(rank)] = tokens;
        std::vector<std::int32_t> experts;
        std::vector<float> weights;
        layer.routing(experts, weights);
        // This call's rows only: the rows past them hold an earlier call's output (or a repeat's
        // NaN poison).
        std::vector<float> y = d.y_host();
        y.resize(static_cast<std::size_t>(tokens * cfg.hidden));
        Comparison cmp;
        if (cfg.capacity_factor > 0.0) {
          reference::Problem one = pr;  // world == 1 here
          one.x[0].resize(static_cast<std::size_t>(tokens * cfg.hidden));
          cmp = compare(one, reference::run(one).ranks[0], y, experts, {}, 0);
        } else {
          std::vector<std::int64_t> sample;
          for (int s = 0; s < o.sample_tokens; ++s) {
            sample.push_back(static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(tokens)));
          }
          const reference::Problem sub = sample_tokens(pr, sample, rank);
          cmp = compare(sub, reference::run(sub).ranks[0], y, experts, sample, rank);
        }
        pr.tokens[static_cast<std::size_t>(rank)] = max;
        ++t.checks;
        t.max_rel_error = std::max(t.max_rel_error, cmp.rel_error);
        if (!cmp.passed) {
          ++t.check_failures;
          out << tag << "call " << i << " (" << tokens << " tokens) differs from the reference: "
              << cmp.summary() << std::endl;
        }
      }
      if (rank == 0 && (i + 1) % report_every == 0) {
        progress << "[soak] " << i + 1 << "/" << o.calls << " calls, "
                 << t.repeat_mismatches + t.check_failures << " mismatches, max rel. error "
                 << t.max_rel_error << ", last " << std::fixed << std::setprecision(3) << ms
                 << " ms" << std::defaultfloat << std::endl;
      }
      if (o.seconds > 0.0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >
              o.seconds) {
        break;
      }
    }
    MONOMOE_CUDA(cudaDeviceSynchronize());
    MONOMOE_CUDA(cudaMemGetInfo(&memory_end, &total));
  } catch (const Error& e) {
    failure = e.what();
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);

  // Device memory this process took during the soak (its own allocations only change it; the
  // layer and the inputs were allocated before the first reading).
  const long long grown = static_cast<long long>(memory_start) - static_cast<long long>(memory_end);
  const std::int64_t mismatches = t.repeat_mismatches + t.check_failures;
  const bool ok = failure.empty() && mismatches == 0 && grown <= kMemorySlack;
  if (rank == 0 || !ok) {
    out << tag << "soak: " << cfg.describe() << "\n"
        << tag << "  calls " << t.calls << " (token counts 0.." << max << "), repeats "
        << t.repeats << " (" << t.repeat_mismatches << " not bit-identical), reference checks "
        << t.checks << (can_check ? "" : " (none: capacity with several ranks)") << " ("
        << t.check_failures << " failed, max rel. error " << t.max_rel_error << ")\n"
        << tag << "  latency ms " << spread(t.latency_ms) << "; device memory grown by "
        << (failure.empty() ? grown : 0) << " bytes\n"
        << tag << "  latency ms of the " << t.after_host_work_ms.size()
        << " calls right after a repeat or a reference check (host work"
        << (world > 1 ? " on every rank, waited for by the peers in the kernel" : "")
        << "): " << spread(t.after_host_work_ms) << "\n";
    if (!failure.empty()) out << tag << "  stopped by an error: " << failure << "\n";
    out << tag << (ok ? "PASS" : "FAIL") << std::endl;
  }
  return ok ? 0 : 1;
}

}  // namespace

int run_soak(const SoakOptions& o, std::ostream& out, std::ostream& progress) {
  if (o.gpus == 1) {
    launch::WorkerContext w;
    w.id = UniqueId::create();
    return soak_rank(o, w, out, progress);
  }
  if (o.seconds > 0.0) {
    throw ConfigError("soak: --seconds needs --gpus 1 (every rank must make the same number of "
                      "calls, and a time limit would differ between ranks)");
  }
  std::ostringstream quiet;
  return launch::run_local_workers(
      o.gpus,
      [&](const launch::WorkerContext& w) {
        return soak_rank(o, w, out, w.rank == 0 ? progress : quiet);
      },
      supervision(o.config.timeout_seconds));
}

}  // namespace monomoe::bench
