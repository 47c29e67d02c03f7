// DType::fp8 in the fused layer on one GPU against the float64 CPU reference (label gpu): E4M3
// expert weights in [out, in] with an fp32 scale per 128 x 128 block, bf16 x, y, gate and biases,
// the activations quantized per token per 128 channels before each expert GEMM (docs/fp8.md). The
// reference quantizes exactly as the layer must, so what the comparison sees is the kernel's own
// difference (fp32 accumulation, bf16 output rounding): bench::tolerance(fp8), bf16's 2e-2. Every
// case draws fresh inputs, poisons y before the run, and checks every output element, the routing
// and the drop counts. Small shapes (hidden 256/384, ffn 256/512, 8-16 experts): the reference
// stays fast. The expert-parallel fp8 cases are in test_virtual_ranks.cu and
// test_layer_multi_gpu.cu (ep_cases.hpp, ep_fp8_cases).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "bench/device_problem.hpp"
#include "device/params.cuh"
#include "gpu_test.hpp"
#include "layer_gpu_test.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

using test::expect_config_error;
using test::expect_each_weight_refused;
using test::single_gpu;
using test::WeightField;

// The layer tests' small config (512 tokens at most, hidden = ffn = 256, 8 experts, top-2) in fp8,
// whose weights are [out, in] only.
LayerConfig fp8_config(Activation act) {
  LayerConfig c = test::small_layer_config(DType::fp8, act);
  c.weight_layout = WeightLayout::out_in;
  return c;
}

std::string act_name(Activation a) { return std::string(to_string(a)); }

struct Case {
  std::string name;
  LayerConfig cfg;
  std::int64_t tokens;
  std::int64_t skew_expert = -1;  // >= 0: every token picks this expert first
  bool given_routing = false;     // a random router's routing passed to forward() (no gate)
};

reference::Problem make(const Case& tc, std::uint64_t seed) {
  reference::Problem pr = reference::make_problem(tc.cfg, {tc.tokens}, seed);
  if (tc.skew_expert >= 0) reference::skew_gate_towards(pr, tc.skew_expert, 50.f);
  if (tc.given_routing) reference::give_random_routing(pr, seed);
  return pr;
}

// One forward of a fresh layer into a poisoned y: every token against the reference, the routing
// (a given one read back bit for bit), the drops in total and per expert. Returns the call's stats.
ForwardStats check_case(const Case& tc, std::uint64_t seed) {
  SCOPED_TRACE(tc.name + ", seed " + std::to_string(seed));
  const test::CheckedForward f = test::forward_and_compare(make(tc, seed), tc.given_routing);
  std::printf("%s: %s dropped=%lld k_split=%lld\n", tc.name.c_str(), f.cmp.summary().c_str(),
              static_cast<long long>(f.stats.dropped), static_cast<long long>(f.stats.k_split));
  return f.stats;
}

// Every activation, biases on and off, the default widths and wider ones (hidden 384 = 3 scale
// blocks of K, ffn 512 = 4; swiglu's W1 8 blocks of rows), renormalized and not.
TEST(LayerGpu, Fp8MatchesReference) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 8100;
  for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
    for (bool bias : {true, false}) {
      LayerConfig c = fp8_config(a);
      c.bias = bias;
      check_case({"fp8 " + act_name(a) + (bias ? "" : ", no bias"), c, 300}, seed++);
      c.hidden = 384;
      c.ffn = 512;
      c.experts = 16;
      c.renormalize = !bias;
      check_case({"fp8 " + act_name(a) + ", hidden 384, ffn 512, 16 experts" +
                      (bias ? "" : ", no bias, no renormalization"),
                  c, 257},
                 seed++);
    }
  }
}

// The shared expert (a dense FFN every token runs, as slices of the routed experts' width) in
// fp8: its E4M3 matrices and block scales (ExpertWeights.shared_*_scale), 2 x ffn, every
// activation; without biases; one token; 1 x ffn at a wider hidden.
TEST(LayerGpu, Fp8SharedExpert) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 8200;
  for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
    LayerConfig c = fp8_config(a);
    c.shared_ffn = 2 * c.ffn;
    check_case({"fp8 shared expert 2 x ffn, " + act_name(a), c, 200}, seed++);
  }
  LayerConfig c = fp8_config(Activation::swiglu);
  c.shared_ffn = 2 * c.ffn;
  c.bias = false;
  check_case({"fp8 shared expert 2 x ffn, swiglu, no bias", c, 200}, seed++);
  c.bias = true;
  check_case({"fp8 shared expert 2 x ffn, swiglu, one token", c, 1}, seed++);
  c = fp8_config(Activation::gelu);
  c.hidden = 384;
  c.ffn = 512;
  c.shared_ffn = c.ffn;
  check_case({"fp8 shared expert 1 x ffn, hidden 384, ffn 512", c, 300}, seed++);
}

// Capacity limits drop rows (the first capacity(tokens) choices of each expert in token order are
// kept): the layer's drop counts, total and per expert, equal the reference's, and the kept rows'
// outputs match. Natural routing, routing skewed to one expert (most of its rows dropped), a
// shared expert beside the drops (it drops nothing).
TEST(LayerGpu, Fp8CapacityDrops) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 8300;
  const auto expect_drops = [](const ForwardStats& st) {
    EXPECT_GT(st.dropped, 0) << "the case should drop rows";
  };
  LayerConfig c = fp8_config(Activation::gelu);
  c.experts = 16;
  c.capacity_factor = 0.5;
  expect_drops(check_case({"fp8 gelu, capacity 0.5", c, 512}, seed++));
  expect_drops(check_case({"fp8 gelu, capacity 0.5, skewed to expert 3", c, 512, 3}, seed++));
  c = fp8_config(Activation::swiglu);
  c.capacity_factor = 0.25;
  c.topk = 3;
  expect_drops(check_case({"fp8 swiglu top-3, capacity 0.25", c, 400}, seed++));
  c.shared_ffn = 2 * c.ffn;
  expect_drops(check_case({"fp8 swiglu top-3, capacity 0.25, shared expert 2 x ffn", c, 400},
                          seed++));
}

// Routing given by the caller (k distinct uniform experts, weights that do not sum to 1; the gate
// is skipped): gelu and swiglu, dropless and with capacity drops, and with a shared expert.
TEST(LayerGpu, Fp8GivenRouting) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 8400;
  for (Activation a : {Activation::gelu, Activation::swiglu}) {
    for (double capacity : {0.0, 0.5}) {
      LayerConfig c = fp8_config(a);
      c.topk = 3;
      c.capacity_factor = capacity;
      check_case({"fp8 given routing " + act_name(a) +
                      (capacity > 0 ? ", capacity 0.5" : ", dropless"),
                  c, 300, -1, true},
                 seed++);
    }
  }
  LayerConfig c = fp8_config(Activation::silu);
  c.topk = 3;
  c.shared_ffn = c.ffn;
  check_case({"fp8 given routing silu, shared expert 1 x ffn", c, 300, -1, true}, seed++);
}

// One layer of c, two calls of `tokens` tokens into a poisoned y: the first against the reference,
// the second bit-identical to it (a split task's slices are summed in slice order, whichever block
// finishes it). Returns the first call's stats.
ForwardStats check_repeated(const std::string& name, const LayerConfig& c, std::int64_t tokens,
                            std::uint64_t seed) {
  SCOPED_TRACE(name);
  const reference::Problem pr = make({name, c, tokens}, seed);
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(c, single_gpu(), dev.weights());
  std::vector<float> first;
  ForwardStats first_stats;
  for (int call = 0; call < 2; ++call) {
    dev.poison_y();
    dev.forward(layer);
    const ForwardStats st = layer.stats();
    const std::vector<float> y = dev.y_host();
    if (call == 0) {
      std::vector<std::int32_t> experts;
      std::vector<float> weights;
      layer.routing(experts, weights);
      const bench::Comparison cmp = bench::compare(pr, ref.ranks[0], y, experts);
      EXPECT_TRUE(cmp.passed) << cmp.summary() << " (k_split " << st.k_split << ")";
      std::printf("%s: %s k_split=%lld\n", name.c_str(), cmp.summary().c_str(),
                  static_cast<long long>(st.k_split));
      first = y;
      first_stats = st;
    } else {
      EXPECT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * sizeof(float)))
          << "the second call's output differs bitwise";
    }
  }
  return first_stats;
}

// Calls of more than kRouteAloneTiles token tiles, routed by the grid: on one rank fp8's GEMM0
// reads its routed tiles' rows by TMA from x_rows, the copy of x's quantized rows in the experts'
// order that the placement writes (docs/fp8.md), where the calls above (at most 512 tokens)
// gather. Every activation, biases off, a wider shape, capacity drops (rows with no x_rows row),
// the shared expert (its tiles still gather from x_quant), a given routing; one case repeated bit
// for bit.
TEST(LayerGpu, Fp8RowsByTma) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 8800;
  const auto big = [](Activation a) {
    LayerConfig c = fp8_config(a);
    c.max_tokens = 1024;
    return c;
  };
  const auto routed_by_grid = [](std::int64_t tokens) {
    EXPECT_GT(tokens, device::kRouteAloneTiles * device::kTileRows)
        << "a call routed alone gathers";
    return tokens;
  };
  for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
    check_case({"fp8 x_rows " + act_name(a), big(a), routed_by_grid(1000)}, seed++);
  }
  LayerConfig c = big(Activation::swiglu);
  c.bias = false;
  c.hidden = 384;
  c.ffn = 512;
  c.experts = 16;
  check_case({"fp8 x_rows swiglu, no bias, hidden 384, ffn 512, 16 experts", c,
              routed_by_grid(700)},
             seed++);
  c = big(Activation::gelu);
  c.capacity_factor = 0.5;
  const ForwardStats dropped =
      check_case({"fp8 x_rows gelu, capacity 0.5", c, routed_by_grid(900)}, seed++);
  EXPECT_GT(dropped.dropped, 0) << "the case should drop rows";
  c = big(Activation::swiglu);
  c.shared_ffn = c.ffn;
  check_case({"fp8 x_rows swiglu, shared expert 1 x ffn", c, routed_by_grid(600)}, seed++);
  c = big(Activation::silu);
  c.topk = 3;
  check_case({"fp8 x_rows given routing silu, top-3", c, routed_by_grid(800), -1, true}, seed++);
  check_repeated("fp8 x_rows gelu, repeated", big(Activation::gelu), routed_by_grid(1024),
                 seed++);
}

// Few tokens (the decode shape): 1 and 100 tokens, one or a few token tiles, few rows per expert
// (where the kernel may split a GEMM task's K, in whole 128-deep scale blocks), at the small shape
// and at a deeper one with top-8; each call against the reference, then repeated into a poisoned y
// and bit-identical.
TEST(LayerGpu, Fp8Decode) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 8500;
  LayerConfig small = fp8_config(Activation::gelu);
  small.max_tokens = 128;
  LayerConfig deep = fp8_config(Activation::swiglu);
  deep.max_tokens = 128;
  deep.hidden = 1024;
  deep.ffn = 512;
  deep.experts = 16;
  deep.topk = 8;
  for (const LayerConfig& c : {small, deep}) {
    for (std::int64_t tokens : {1, 100}) {
      check_repeated("fp8 decode, " + std::to_string(tokens) + " tokens, hidden " +
                         std::to_string(c.hidden) + ", top-" + std::to_string(c.topk),
                     c, tokens, seed++);
    }
  }
}

// fp8 SwiGLU GEMM0 tasks split K as the other tasks do (docs/fp8.md): each slice stores its gate
// and up results (two tiles a slot), the last to arrive sums both in slice order. Few tokens (1, 3,
// 17) at K depths the slices do not divide evenly (hidden 1024 = 8 scale blocks, ffn 768 = 6),
// with and without biases, and with a shared expert (its tiles split too): against the reference,
// repeated bit-identical, and one token must split.
TEST(LayerGpu, Fp8SwigluSplitK) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 8700;
  LayerConfig c = fp8_config(Activation::swiglu);
  c.max_tokens = 64;
  c.hidden = 1024;
  c.ffn = 768;
  for (std::int64_t shared : {0, 2}) {
    for (bool bias : {true, false}) {
      c.shared_ffn = shared * c.ffn;
      c.bias = bias;
      for (std::int64_t tokens : {1, 3, 17}) {
        const ForwardStats st = check_repeated(
            "fp8 swiglu split K, " + std::to_string(tokens) + " tokens" +
                (shared > 0 ? ", shared expert 2 x ffn" : "") + (bias ? "" : ", no bias"),
            c, tokens, seed++);
        // One token at top-2: 2 routed row tiles (and 2 of the shared expert) x at most 8 column
        // tiles a phase: split on any GPU of 64+ blocks.
        if (tokens == 1) EXPECT_GT(st.k_split, 1) << "one token should split K";
      }
    }
  }
}

// What fp8 refuses, naming the field: [in, out] weights (LayerConfig.weight_layout); a block-scale
// pointer that is null, misaligned or host memory (checked as every weight pointer is); the shared
// expert's scales without a shared expert; scales given to another precision (the config was
// likely forgotten). A good construction still works after the refusals.
TEST(LayerGpu, Fp8RefusesInOutLayoutAndBadScales) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = fp8_config(Activation::gelu);
  c.shared_ffn = c.ffn;
  const reference::Problem pr = reference::make_problem(c, {16}, 8600);
  const bench::DeviceProblem dev(pr, 0);
  const ExpertWeights good = dev.weights();

  LayerConfig in_out = c;
  in_out.weight_layout = WeightLayout::in_out;
  expect_config_error([&] { MoELayer layer(in_out, single_gpu(), good); },
                      {"weight_layout", "in-out"});

  const std::vector<WeightField> scales = {{"w1_scale", &ExpertWeights::w1_scale},
                                           {"w2_scale", &ExpertWeights::w2_scale},
                                           {"shared_w1_scale", &ExpertWeights::shared_w1_scale},
                                           {"shared_w2_scale", &ExpertWeights::shared_w2_scale}};
  expect_each_weight_refused(c, good, scales);
  // The shared expert's scales with shared_ffn = 0 (its weights left out too).
  LayerConfig no_shared = c;
  no_shared.shared_ffn = 0;
  for (const auto& [name, field] : {scales[2], scales[3]}) {
    SCOPED_TRACE(name);
    ExpertWeights w = good;
    w.shared_w1 = w.shared_b1 = w.shared_w2 = w.shared_b2 = nullptr;
    w.shared_w1_scale = w.shared_w2_scale = nullptr;
    w.*field = good.*field;
    expect_config_error([&] { MoELayer layer(no_shared, single_gpu(), w); },
                        {"ExpertWeights.shared_", "shared_ffn = 0"});
  }
  // Scales given to a bf16 layer.
  LayerConfig bf16 = test::small_layer_config(DType::bf16, Activation::gelu);
  const reference::Problem bpr = reference::make_problem(bf16, {16}, 8601);
  const bench::DeviceProblem bdev(bpr, 0);
  for (const auto& [name, field] : {scales[0], scales[1]}) {
    SCOPED_TRACE(name);
    ExpertWeights w = bdev.weights();
    w.*field = good.*field;
    expect_config_error([&] { MoELayer layer(bf16, single_gpu(), w); },
                        {"_scale", "LayerConfig.dtype = bf16"});
  }
  MoELayer layer(c, single_gpu(), good);  // the good weights still build
}

}  // namespace
}  // namespace monomoe
