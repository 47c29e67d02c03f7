// Shared by the one-GPU layer tests (test_layer_gpu.cu, test_graph_gpu.cu, test_layer_fp8_gpu.cu,
// ...): a small layer config, the one-rank communicator every test of a process reuses, one
// checked forward, and the checks of refused arguments.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "bench/device_problem.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe::test {

// The kernel's wait bound in these tests: 10 s, or MONOMOE_TEST_TIMEOUT seconds when set
// (scripts/sanitize.sh raises it: under compute-sanitizer the blocks run many times slower, and a
// bounded wait must not fire for that).
inline double test_timeout_seconds() {
  const char* s = std::getenv("MONOMOE_TEST_TIMEOUT");
  const double v = s ? std::atof(s) : 0.0;
  return v > 0.0 && v <= 3600.0 ? v : 10.0;
}

// 512 tokens at most, hidden = ffn = 256, 8 experts, top-2, test_timeout_seconds().
inline LayerConfig small_layer_config(DType dtype, Activation act) {
  LayerConfig c;
  c.max_tokens = 512;
  c.hidden = 256;
  c.ffn = 256;
  c.experts = 8;
  c.topk = 2;
  c.dtype = dtype;
  c.activation = act;
  c.timeout_seconds = test_timeout_seconds();
  return c;
}

// One NCCL communicator of one rank on GPU 0, made on first use.
inline Communicator& single_gpu() {
  static Communicator comm(UniqueId::create(), 0, 1, 0);
  return comm;
}

// One forward of a fresh layer of pr's config into a poisoned y, compared with the float64
// reference: every token, the routing read back (`given`: the problem's given routing, bit for
// bit), the drops in total and per expert. Returns the comparison and the call's stats.
struct CheckedForward {
  bench::Comparison cmp;
  ForwardStats stats;
};
inline CheckedForward forward_and_compare(const reference::Problem& pr, bool given) {
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(pr.config, single_gpu(), dev.weights());
  dev.poison_y();
  dev.forward(layer);
  CheckedForward out{{}, layer.stats()};
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
  layer.routing(experts, weights);
  out.cmp = bench::compare(pr, ref.ranks[0], dev.y_host(), experts);
  EXPECT_TRUE(out.cmp.passed) << out.cmp.summary();
  if (given) {
    EXPECT_EQ(experts, pr.topk_ids[0]);
    EXPECT_EQ(weights, pr.topk_weights[0]);
  }
  EXPECT_EQ(out.stats.dropped, ref.dropped);
  EXPECT_EQ(out.stats.dropped_per_expert.size(), ref.dropped_per_expert.size());
  for (std::size_t e = 0;
       e < ref.dropped_per_expert.size() && e < out.stats.dropped_per_expert.size(); ++e) {
    EXPECT_EQ(out.stats.dropped_per_expert[e], ref.dropped_per_expert[e]) << "expert " << e;
  }
  return out;
}

// `fn` throws ConfigError whose message contains every piece of `names`.
template <class Fn>
void expect_config_error(Fn&& fn, std::initializer_list<const char*> names) {
  try {
    fn();
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    for (const char* n : names)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

// A pointer field of ExpertWeights and its name.
using WeightField = std::pair<const char*, const void * ExpertWeights::*>;

// Each of `fields` of `good` (valid weights of c) made null, misaligned or host memory in turn:
// the layer's construction refuses it, naming it.
inline void expect_each_weight_refused(const LayerConfig& c, const ExpertWeights& good,
                                       const std::vector<WeightField>& fields) {
  std::vector<unsigned char> host(64);
  for (const auto& [name, field] : fields) {
    SCOPED_TRACE(name);
    const std::string full = std::string("ExpertWeights.") + name;
    for (int kind = 0; kind < 3; ++kind) {
      ExpertWeights w = good;
      w.*field = kind == 0   ? nullptr
                 : kind == 1 ? static_cast<const char*>(w.*field) + 2
                             : static_cast<const void*>(host.data());
      expect_config_error([&] { MoELayer layer(c, single_gpu(), w); },
                          {full.c_str(), kind == 0   ? "null"
                                         : kind == 1 ? "aligned"
                                                     : "not CUDA memory"});
    }
  }
}

}  // namespace monomoe::test
