// The fused kernel on one GPU against the float64 CPU reference (label gpu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/device_problem.hpp"
#include "device/split.hpp"
#include "gpu_problem.hpp"
#include "gpu_test.hpp"
#include "layer_gpu_test.hpp"
#include "monomoe/monomoe.hpp"
#include "poison_check.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

struct Case {
  const char* name;
  LayerConfig cfg;
  std::int64_t tokens;
  std::int64_t skew_expert = -1;  // >= 0: every token picks this expert first
  bool given_routing = false;     // a random router's routing passed to forward() (no gate)
  double max_error = 0.0;         // > 0: a bound on the relative error tighter than the tolerance
};

LayerConfig small(DType dtype, Activation act) { return test::small_layer_config(dtype, act); }

// The last forward() of `layer` (its output y) against the reference rank `ref`, with the routing
// the layer reads back.
bench::Comparison compare_last(MoELayer& layer, const reference::Problem& pr,
                               const reference::RankResult& ref, const std::vector<float>& y) {
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
  layer.routing(experts, weights);
  return bench::compare(pr, ref, y, experts);
}

// A call of `tokens` tokens of config c (inputs from `seed`), twice, each into a poisoned y: the
// first must match the reference, the second be bit-identical to the first (`repeat` says what
// that shows). `checked` sees each call's stats() (a split the test expects) and returns what to
// print with a failed comparison.
template <class Checked>
void expect_matched_then_repeated(const LayerConfig& c, std::int64_t tokens, std::uint64_t seed,
                                  const char* repeat, Checked&& checked) {
  SCOPED_TRACE(std::string(c.describe()) + " tokens " + std::to_string(tokens));
  const reference::Problem pr = reference::make_problem(c, {tokens}, seed);
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(c, test::single_gpu(), dev.weights());
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    dev.poison_y();
    dev.forward(layer);
    const std::string note = checked(layer.stats());
    const std::vector<float> y = dev.y_host();
    if (run == 0) {
      const auto cmp = compare_last(layer, pr, ref.ranks[0], y);
      EXPECT_TRUE(cmp.passed) << cmp.summary() << note;
      first = y;
    } else {
      EXPECT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * sizeof(float))) << repeat;
    }
  }
}
using test::expect_config_error;
using test::expect_each_weight_refused;
using test::single_gpu;
using test::WeightField;

// Runs the layer once on fresh inputs and compares every token with the reference.
void check_case(const Case& tc, std::uint64_t seed) {
  SCOPED_TRACE(tc.name);
  reference::Problem pr = reference::make_problem(tc.cfg, {tc.tokens}, seed);
  if (tc.skew_expert >= 0) reference::skew_gate_towards(pr, tc.skew_expert, 50.f);
  if (tc.given_routing) reference::give_random_routing(pr, seed);
  const bench::Comparison cmp = test::forward_and_compare(pr, tc.given_routing).cmp;
  if (tc.max_error > 0.0) EXPECT_LE(cmp.rel_error, tc.max_error) << cmp.summary();
}

TEST(LayerGpu, EveryPrecisionAndActivation) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 100;
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
      const std::string name = std::string(to_string(d)) + "/" + std::string(to_string(a));
      check_case({name.c_str(), small(d, a), 300}, seed++);
    }
  }
}

// Weights in PyTorch's nn.Linear layout ([out, in]): every precision and activation, a shape whose
// widths are not multiples of the 256-column tiles, and capacity drops.
TEST(LayerGpu, OutInWeightLayout) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 400;
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
      LayerConfig c = small(d, a);
      c.weight_layout = WeightLayout::out_in;
      const std::string name = "out-in " + std::string(to_string(d)) + "/" + std::string(to_string(a));
      check_case({name.c_str(), c, 300}, seed++);
    }
    LayerConfig c = small(d, Activation::gelu);
    c.weight_layout = WeightLayout::out_in;
    c.hidden = 384;
    c.ffn = 640;
    c.experts = 16;
    c.capacity_factor = 0.5;
    check_case({"out-in, hidden 384, ffn 640, capacity 0.5", c, 512}, seed++);
  }
}

// tf32 with [out, in] weights runs on wgmma (128 x 256 expert tiles, the weights as the register
// operand rounded to nearest tf32 in registers, the token rows rounded before; GEMM1's operands by
// TMA): widths of 128, 384 and 640 (K of 4, 12 and 20 k-tiles of 32 against a 4-stage pipeline; 1
// to 3 column tiles of 256, partial ones, SwiGLU halves), token counts that leave partial row
// tiles,
// with and without biases. The error bound is half the tf32 tolerance: a float64 simulation of
// these six cases (gate, softmax, top-2 and FFN, operands rounded as the GPU would, 5 seeds each)
// gives 4.3e-4 to 6.3e-4 with operands rounded to nearest and 1.5e-3 to 2.3e-3 with truncated ones
// (what the tensor cores do to unrounded fp32), so a lost rounding fails here.
TEST(LayerGpu, Tf32OutInWgmmaShapes) {
  MONOMOE_REQUIRE_GPU();
  struct Shape {
    std::int64_t hidden, ffn, tokens;
    Activation act;
    bool bias;
  };
  const Shape shapes[] = {
      {128, 128, 3, Activation::gelu, true},    {128, 640, 129, Activation::swiglu, true},
      {384, 640, 300, Activation::gelu, false}, {640, 384, 385, Activation::swiglu, true},
      {640, 128, 200, Activation::relu, true},  {384, 384, 511, Activation::silu, false},
  };
  // And calls of more than 4 token tiles, routed by the grid: where the plan gives tf32 x_rows,
  // GEMM0 reads its tokens by TMA from that copy, rounded to tf32 on the way (route.cuh).
  const Shape grid_shapes[] = {{384, 640, 700, Activation::swiglu, true},
                               {640, 384, 1000, Activation::gelu, false}};
  std::uint64_t seed = 700;
  for (const auto& set : {std::make_pair(shapes, std::size(shapes)),
                          std::make_pair(grid_shapes, std::size(grid_shapes))}) {
    for (std::size_t i = 0; i < set.second; ++i) {
      const Shape& sh = set.first[i];
      LayerConfig c = small(DType::tf32, sh.act);
      c.weight_layout = WeightLayout::out_in;
      c.hidden = sh.hidden;
      c.ffn = sh.ffn;
      c.bias = sh.bias;
      c.max_tokens = std::max<std::int64_t>(c.max_tokens, sh.tokens);
      const std::string name = "tf32 out-in, hidden " + std::to_string(sh.hidden) + ", ffn " +
                               std::to_string(sh.ffn) + ", " + std::to_string(sh.tokens) +
                               " tokens, " + std::string(to_string(sh.act)) +
                               (sh.bias ? "" : ", no bias");
      check_case({name.c_str(), c, sh.tokens, -1, false, 1e-3}, seed++);
    }
  }
}

// Routing given by the caller, from a random router (k distinct uniform experts, positive weights
// that do not sum to 1): every precision, gelu and swiglu, both weight layouts, dropless and with
// capacity drops (the reference drops by the same rule and keeps the weights as given).
TEST(LayerGpu, GivenRouting) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 600;
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (Activation a : {Activation::gelu, Activation::swiglu}) {
      for (WeightLayout layout : {WeightLayout::in_out, WeightLayout::out_in}) {
        for (double capacity : {0.0, 0.5}) {
          LayerConfig c = small(d, a);
          c.topk = 3;
          c.weight_layout = layout;
          c.capacity_factor = capacity;
          const std::string name = "given routing " + std::string(to_string(d)) + "/" +
                                   std::string(to_string(a)) + " " +
                                   std::string(to_string(layout)) +
                                   (capacity > 0 ? " capacity 0.5" : " dropless");
          check_case({name.c_str(), c, 300, -1, true}, seed++);
        }
      }
    }
  }
  // Edge cases: one token, every expert chosen by every token, many experts.
  {
    LayerConfig c = small(DType::fp32, Activation::gelu);
    check_case({"given routing, one token", c, 1, -1, true}, seed++);
    c.experts = 4;
    c.topk = 4;
    check_case({"given routing, top-4 of 4 experts", c, 200, -1, true}, seed++);
    c = small(DType::bf16, Activation::swiglu);
    c.experts = 255;
    c.topk = 8;
    c.capacity_factor = 1.0;
    check_case({"given routing, 255 experts, top-8, capacity 1.0", c, 512, -1, true}, seed++);
  }
}

// The shared expert (a dense FFN every token runs, added with weight 1; it runs as slices of the
// routed experts' width): every precision, activation and weight layout with 1 and 2 slices of
// ffn, with and without biases; one token (few rows); with capacity drops (the shared expert drops
// nothing, and the drop counts stay the routed experts'); with a routing given by the caller.
TEST(LayerGpu, SharedExpert) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 1100;
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
      for (WeightLayout layout : {WeightLayout::in_out, WeightLayout::out_in}) {
        for (std::int64_t slices : {1, 2}) {
          for (bool bias : {true, false}) {
            LayerConfig c = small(d, a);
            c.weight_layout = layout;
            c.shared_ffn = slices * c.ffn;
            c.bias = bias;
            const std::string name = "shared expert " + std::to_string(slices) + " x ffn, " +
                                     std::string(to_string(d)) + "/" + std::string(to_string(a)) +
                                     " " + std::string(to_string(layout)) +
                                     (bias ? "" : ", no bias");
            check_case({name.c_str(), c, 200}, seed++);
          }
        }
      }
    }
    LayerConfig c = small(d, Activation::swiglu);
    c.shared_ffn = 2 * c.ffn;
    check_case({"shared expert 2 x ffn, one token", c, 1}, seed++);
  }
  {
    LayerConfig c = small(DType::bf16, Activation::gelu);
    c.shared_ffn = 2 * c.ffn;
    c.capacity_factor = 0.5;
    check_case({"shared expert 2 x ffn, capacity 0.5", c, 512}, seed++);
  }
  {
    LayerConfig c = small(DType::fp32, Activation::swiglu);
    c.topk = 3;
    c.weight_layout = WeightLayout::out_in;
    c.shared_ffn = c.ffn;
    check_case({"shared expert 1 x ffn, given routing", c, 300, -1, true}, seed++);
  }
}

// Ids the kernel cannot use (out of range either way, repeated within a token): the call raises
// KernelError naming topk_ids, the token, the choice and the value; every other choice of that call
// still runs (the other tokens' outputs match the reference); routing() shows the skipped choice as
// expert -1; the same layer then works for a good given routing and for its own gate.
TEST(LayerGpu, GivenRoutingBadIdsAreReported) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = small(DType::fp32, Activation::gelu);
  reference::Problem pr = reference::make_problem(c, {256}, 61);
  reference::give_random_routing(pr, 62);
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(c, single_gpu(), dev.weights());
  struct Bad {
    std::int64_t token, choice;
    std::int32_t id;
    std::string message;
  };
  const std::int32_t repeat = pr.topk_ids[0][7 * 2];
  const std::vector<Bad> bad = {
      {5, 1, 8, "topk_ids[5, 1] = 8 is not an expert id in [0, 8)"},
      {200, 0, -3, "topk_ids[200, 0] = -3 is not an expert id in [0, 8)"},
      {7, 1, repeat,
       "topk_ids[7, 1] = " + std::to_string(repeat) + " repeats an expert that token 7"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.message);
    reference::Problem wrong = pr;
    const std::size_t slot = static_cast<std::size_t>(b.token * c.topk + b.choice);
    wrong.topk_ids[0][slot] = b.id;
    bench::DeviceProblem wdev(wrong, 0);  // the same x and weights; its ids hold the bad one
    wdev.poison_y();
    layer.forward(wdev.x(), 256, wdev.y(), nullptr, wdev.routing());
    try {
      layer.synchronize();
      ADD_FAILURE() << "expected a KernelError";
    } catch (const KernelError& e) {
      std::printf("expected error: %s\n", e.what());
      EXPECT_NE(std::string(e.what()).find(b.message), std::string::npos) << e.what();
    }
    std::vector<std::int32_t> experts;
    std::vector<float> weights;
    layer.routing(experts, weights);  // the error was read: this call does not raise it again
    EXPECT_EQ(experts[slot], -1);
    EXPECT_EQ(weights[slot], 0.f);
    std::vector<std::uint8_t> others(256, 1);
    others[static_cast<std::size_t>(b.token)] = 0;
    const double err = reference::relative_error(wdev.y_host(), ref.ranks[0].y, c.hidden, others);
    EXPECT_LE(err, bench::tolerance(c.dtype)) << "the other tokens of the call";
  }
  dev.poison_y();
  dev.forward(layer);
  std::string detail;
  EXPECT_TRUE(bench::check_forward(layer, dev, pr, ref.ranks[0], 0, detail)) << detail;
  reference::Problem gated = pr;  // the same layer routing with its own gate again
  gated.topk_ids.clear();
  gated.topk_weights.clear();
  dev.poison_y();
  layer.forward(dev.x(), 256, dev.y(), nullptr);
  EXPECT_TRUE(bench::check_forward(layer, dev, gated, reference::run(gated).ranks[0], 0, detail))
      << detail;
}

// The gate is read at every forward like the other weights: a gate changed in place between two
// calls (as an optimizer step or a checkpoint load does) routes the second call, in both layouts.
TEST(LayerGpu, GateChangedBetweenCallsTakesEffect) {
  MONOMOE_REQUIRE_GPU();
  for (WeightLayout layout : {WeightLayout::in_out, WeightLayout::out_in}) {
    SCOPED_TRACE(std::string(to_string(layout)));
    LayerConfig c = small(DType::bf16, Activation::gelu);
    c.weight_layout = layout;
    // skew_gate_towards also pins feature 0 of every token to 1: the first call's problem gets
    // the same x with a zero skew, so that the two calls differ only in the gate.
    reference::Problem pr = reference::make_problem(c, {300}, 77);
    reference::Problem skewed = pr;
    reference::skew_gate_towards(pr, 5, 0.f);
    reference::skew_gate_towards(skewed, 5, 50.f);  // every token's first choice becomes expert 5
    bench::DeviceProblem dev(pr, 0);
    const bench::DeviceProblem new_gate(skewed, 0);
    MoELayer layer(c, single_gpu(), dev.weights());
    layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
    const auto first = compare_last(layer, pr, reference::run(pr).ranks[0], dev.y_host());
    EXPECT_TRUE(first.passed) << "first call, old gate: " << first.summary();
    const reference::Result ref = reference::run(skewed);
    const std::size_t gate_bytes = static_cast<std::size_t>(c.hidden * c.experts) * element_bytes(c.dtype);
    MONOMOE_ASSERT_CUDA(cudaMemcpy(const_cast<void*>(dev.weights().gate), new_gate.weights().gate,
                                   gate_bytes, cudaMemcpyDeviceToDevice));
    dev.poison_y();
    layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
    const auto cmp = compare_last(layer, skewed, ref.ranks[0], dev.y_host());
    EXPECT_TRUE(cmp.passed) << cmp.summary();
  }
}

TEST(LayerGpu, NoBiasNoRenormalize) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::fp32}) {
    LayerConfig c = small(d, Activation::gelu);
    c.bias = false;
    c.renormalize = false;
    check_case({"no-bias", c, 257}, 7);
  }
}

TEST(LayerGpu, RoutingEdgeCases) {
  MONOMOE_REQUIRE_GPU();
  {
    LayerConfig c = small(DType::bf16, Activation::silu);
    c.experts = 16;
    check_case({"skewed: all tokens to expert 5", c, 512, 5}, 11);
  }
  {
    LayerConfig c = small(DType::fp32, Activation::relu);
    c.experts = 64;
    check_case({"experts without tokens", c, 10}, 12);
  }
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    check_case({"one token", small(d, Activation::gelu), 1}, 13);
  }
  {
    LayerConfig c = small(DType::bf16, Activation::swiglu);
    c.experts = 7;
    c.topk = 3;
    check_case({"odd experts 7, top-3", c, 333}, 14);
  }
  {
    LayerConfig c = small(DType::fp32, Activation::gelu);
    c.experts = 1;
    c.topk = 1;
    check_case({"one expert", c, 200}, 15);
  }
  {
    LayerConfig c = small(DType::bf16, Activation::gelu);
    c.experts = 255;
    c.topk = 8;
    check_case({"255 experts, top-8", c, 512}, 16);
  }
  {
    LayerConfig c = small(DType::bf16, Activation::relu);
    c.experts = 16;
    c.capacity_factor = 0.5;
    check_case({"capacity 0.5 drops rows", c, 512, 3}, 17);
  }
  {
    LayerConfig c = small(DType::tf32, Activation::gelu);
    c.hidden = 384;
    c.ffn = 640;
    check_case({"non-square 384 x 640", c, 129}, 18);
  }
}

// Token counts change between calls on one layer, with no reallocation.
TEST(LayerGpu, VariableTokensPerCall) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = small(DType::bf16, Activation::gelu);
  std::uint64_t seed = 40;
  reference::Problem base = reference::make_problem(c, {c.max_tokens}, seed);
  bench::DeviceProblem dev(base, 0);
  MoELayer layer(c, single_gpu(), dev.weights());
  for (std::int64_t tokens : {100, 37, 512, 1, 0, 255}) {
    SCOPED_TRACE(tokens);
    reference::Problem pr = base;
    pr.tokens = {tokens};
    pr.x[0].resize(static_cast<std::size_t>(tokens * c.hidden));
    const reference::Result ref = reference::run(pr);
    dev.poison_y();
    layer.forward(dev.x(), tokens, dev.y(), nullptr);
    std::vector<float> y = dev.y_host();
    y.resize(static_cast<std::size_t>(tokens * c.hidden));
    const auto cmp = compare_last(layer, pr, ref.ranks[0], y);
    EXPECT_TRUE(cmp.passed) << cmp.summary();
  }
}

// The few-rows path: a call with fewer GEMM tasks than blocks cuts each task's K range into slices
// (split K; the last slice sums the partial tiles in slice order). Every precision, both weight
// layouts, a plain and a gated activation, K depths that the slices do not divide evenly (hidden
// 1024 = 8 steps of 128, ffn 768 = 6): against the reference, bit-identical when repeated, and the
// split reported by stats(). Tiles of 64 and 65 rows (the one-warpgroup MMA boundary). A larger
// call keeps whole tasks.
TEST(LayerGpu, FewRowsSplitK) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (WeightLayout layout : {WeightLayout::in_out, WeightLayout::out_in}) {
      for (Activation act : {Activation::gelu, Activation::swiglu}) {
        LayerConfig c = small(d, act);
        c.hidden = 1024;
        c.ffn = 768;
        c.max_tokens = 64;
        c.weight_layout = layout;
        std::uint64_t seed = 900;
        for (std::int64_t tokens : {1, 3, 17}) {
          expect_matched_then_repeated(
              c, tokens, ++seed, "the split sum is not deterministic",
              [&](const ForwardStats& stats) {
                // One token: 2 row tiles, at most 24 tasks a phase: split on any GPU of 48+ blocks.
                if (tokens == 1) EXPECT_GT(stats.k_split, 1) << "one token should split K";
                return " (k_split " + std::to_string(stats.k_split) + ")";
              });
        }
      }
    }
  }
  // Tiles of 64 and 65 rows (a given routing: tokens 0..63 to expert 0, 64..128 to expert 1, 129 to
  // expert 2): at most 64 rows, the wgmma paths leave their second warpgroup's MMAs out.
  for (DType d : {DType::bf16, DType::tf32}) {
    for (WeightLayout layout : {WeightLayout::in_out, WeightLayout::out_in}) {
      LayerConfig c = small(d, Activation::swiglu);
      c.topk = 1;
      c.weight_layout = layout;
      SCOPED_TRACE(c.describe());
      reference::Problem pr = reference::make_problem(c, {130}, 950);
      pr.topk_ids = {std::vector<std::int32_t>(130)};
      pr.topk_weights = {std::vector<float>(130)};
      for (int t = 0; t < 130; ++t) {
        pr.topk_ids[0][static_cast<std::size_t>(t)] = t < 64 ? 0 : t < 129 ? 1 : 2;
        pr.topk_weights[0][static_cast<std::size_t>(t)] = 0.5f + 0.004f * static_cast<float>(t);
      }
      const reference::Result ref = reference::run(pr);
      bench::DeviceProblem dev(pr, 0);
      MoELayer layer(c, single_gpu(), dev.weights());
      dev.poison_y();
      dev.forward(layer);
      const auto cmp = compare_last(layer, pr, ref.ranks[0], dev.y_host());
      EXPECT_TRUE(cmp.passed) << cmp.summary();
    }
  }
  // Enough tasks for every block: whole tasks.
  LayerConfig c = small(DType::bf16, Activation::gelu);
  c.hidden = 1024;
  c.experts = 32;
  reference::Problem pr = reference::make_problem(c, {512}, 77);
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(c, single_gpu(), dev.weights());
  dev.poison_y();
  dev.forward(layer);
  EXPECT_EQ(layer.stats().k_split, 1);
  const auto cmp = compare_last(layer, pr, ref.ranks[0], dev.y_host());
  EXPECT_TRUE(cmp.passed) << cmp.summary();
}

// A call of a few tokens splits the gate GEMM's K over many blocks (device/split.hpp,
// gate_split_for: up to 32 slices of 64), whose partial logits the routing adds in slice order:
// every precision and weight layout, a deep gate (hidden 2048: 32 slices at one token) and uneven
// slices (hidden 1152 = 18 steps of 64 over 16 slices), 128 and 256 gate columns, against the
// reference, bit-identical when repeated, and the split reported by stats(). 16, 40 and 128 tokens:
// more than kRouteAloneSpreadRows, so their rows are routed on several blocks (route_alone.cuh).
TEST(LayerGpu, FewTokensGateSplit) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 1200;
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (WeightLayout layout : {WeightLayout::in_out, WeightLayout::out_in}) {
      for (std::int64_t hidden : {2048, 1152}) {
        for (std::int64_t experts : {64, 130}) {  // 128 and 256 gate columns
          LayerConfig c = small(d, Activation::gelu);
          c.hidden = hidden;
          c.ffn = 128;  // small expert weights: the gate is what this test is about
          c.experts = experts;
          c.max_tokens = 128;
          c.weight_layout = layout;
          for (std::int64_t tokens : {1, 5, 16, 40, 128}) {  // 128: one full tile in 8 slices
            expect_matched_then_repeated(
                c, tokens, ++seed, "the gate's split sum is not deterministic",
                [&](const ForwardStats& stats) {
                  // One token: min(32 slices, hidden / 64) on any GPU of 32+ blocks.
                  if (tokens == 1) {
                    EXPECT_EQ(stats.gate_splits, std::min<std::int64_t>(32, hidden / 64));
                  }
                  return " (gate_splits " + std::to_string(stats.gate_splits) + ")";
                });
          }
        }
      }
    }
  }
}

// A call of at most 4 token tiles is routed by one block, with no grid barrier (route_alone.cuh);
// a larger one over the grid, between barriers. Both place the same choices in the same rows: the
// first 512 tokens of a 640-token call (5 tiles) and a 512-token call of the same tokens (4 tiles),
// with the same gate and expert K splits, give the same routing and bit-identical outputs, with
// the gate and with a given routing (with capacity drops: both calls keep the same rows of an
// expert only when dropless, so dropless here), and both match the reference.
TEST(LayerGpu, RoutingAloneMatchesTheGridPath) {
  MONOMOE_REQUIRE_GPU();
  // fp8 (and tf32 with [out, in] weights where the plan gives it x_rows): the grid's call reads
  // GEMM0's rows by TMA from x_rows, the single block's gathers them: the same operands must reach
  // the same MMAs.
  const std::pair<DType, WeightLayout> precisions[] = {{DType::bf16, WeightLayout::in_out},
                                                       {DType::fp8, WeightLayout::out_in},
                                                       {DType::tf32, WeightLayout::out_in}};
  for (const auto& [dtype, layout] : precisions) {
    for (bool given : {false, true}) {
      SCOPED_TRACE(std::string(to_string(dtype)) + (given ? ", given routing" : ", gate"));
      LayerConfig c = small(dtype, Activation::gelu);
      c.weight_layout = layout;
      c.max_tokens = 640;
      reference::Problem pr = reference::make_problem(c, {640}, given ? 1301 : 1300);
      if (given) reference::give_random_routing(pr, 1302);
      bench::DeviceProblem dev(pr, 0);
      MoELayer layer(c, single_gpu(), dev.weights());
      std::vector<float> y[2];
      std::vector<std::int32_t> experts[2];
      std::int64_t k_split[2] = {0, 0}, gate_splits[2] = {0, 0};
      for (int call = 0; call < 2; ++call) {
        const std::int64_t tokens = call == 0 ? 640 : 512;
        reference::Problem part = pr;
        part.tokens = {tokens};
        part.x[0].resize(static_cast<std::size_t>(tokens * c.hidden));
        if (given) {
          part.topk_ids[0].resize(static_cast<std::size_t>(tokens * c.topk));
          part.topk_weights[0].resize(static_cast<std::size_t>(tokens * c.topk));
        }
        const reference::Result ref = reference::run(part);
        dev.poison_y();
        if (given) {
          layer.forward(dev.x(), tokens, dev.y(), nullptr, dev.routing());
        } else {
          layer.forward(dev.x(), tokens, dev.y(), nullptr);
        }
        const ForwardStats stats = layer.stats();
        k_split[call] = stats.k_split;
        gate_splits[call] = stats.gate_splits;
        std::vector<float> weights;
        layer.routing(experts[call], weights);
        y[call] = dev.y_host();
        y[call].resize(static_cast<std::size_t>(tokens * c.hidden));
        const auto cmp = bench::compare(part, ref.ranks[0], y[call], experts[call]);
        EXPECT_TRUE(cmp.passed) << cmp.summary() << " (" << tokens << " tokens)";
      }
      ASSERT_EQ(k_split[0], k_split[1]) << "the test needs the same expert K split in both calls";
      ASSERT_EQ(gate_splits[0], gate_splits[1]);
      experts[0].resize(experts[1].size());
      EXPECT_EQ(experts[0], experts[1]);
      EXPECT_EQ(0, std::memcmp(y[0].data(), y[1].data(), y[1].size() * sizeof(float)))
          << "the same tokens' outputs differ between the grid's and the single block's routing";
    }
  }
}

// Same inputs, bit-identical outputs.
TEST(LayerGpu, Deterministic) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::fp32}) {
    LayerConfig c = small(d, Activation::gelu);
    c.experts = 16;
    reference::Problem pr = reference::make_problem(c, {512}, 77);
    bench::DeviceProblem dev(pr, 0);
    MoELayer layer(c, single_gpu(), dev.weights());
    std::vector<float> first;
    for (int run = 0; run < 5; ++run) {
      dev.poison_y();
      layer.forward(dev.x(), 512, dev.y(), nullptr);
      layer.synchronize();
      const std::vector<float> y = dev.y_host();
      if (run == 0) {
        first = y;
      } else {
        ASSERT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * sizeof(float))) << "run " << run;
      }
    }
  }
}

// A large config checked on a random sample of tokens, plus every output written.
TEST(LayerGpu, LargeSampled) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c;
  c.max_tokens = 4096;
  c.hidden = 1024;
  c.ffn = 1024;
  c.experts = 32;
  c.topk = 2;
  reference::Problem pr = reference::make_problem(c, {4096}, 5);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(c, single_gpu(), dev.weights());
  dev.poison_y();
  layer.forward(dev.x(), 4096, dev.y(), nullptr);
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
  layer.routing(experts, weights);
  std::mt19937_64 rng(9);
  std::vector<std::int64_t> sample;
  for (int i = 0; i < 512; ++i) sample.push_back(static_cast<std::int64_t>(rng() % 4096));
  const reference::Result ref = reference::run(bench::sample_tokens(pr, sample));
  const auto cmp = bench::compare(pr, ref.ranks[0], dev.y_host(), experts, sample);
  EXPECT_TRUE(cmp.passed) << cmp.summary();
}

// Kernel-side failures become exceptions, and the layer works again afterwards. The failure here:
// a given routing with an expert id out of range (a NaN in x is not one: it routes by a defined
// rule, see PoisonedRowIsIsolated).
TEST(LayerGpu, KernelErrorsReachTheHost) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = small(DType::fp32, Activation::gelu);
  reference::Problem pr = reference::make_problem(c, {256}, 3);
  reference::Problem given = pr;
  reference::give_random_routing(given, 4);
  given.topk_ids[0][5 * static_cast<std::size_t>(c.topk) + 1] = static_cast<std::int32_t>(c.experts);
  bench::DeviceProblem bad(given, 0);
  MoELayer layer(c, single_gpu(), bad.weights());
  layer.forward(bad.x(), 256, bad.y(), nullptr, bad.routing());
  try {
    layer.synchronize();
    ADD_FAILURE() << "expected a KernelError";
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("topk_ids[5, 1]"), std::string::npos) << e.what();
  }
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem good(pr, 0);  // same weights and x, the layer's own gate
  good.poison_y();
  layer.forward(good.x(), 256, good.y(), nullptr);
  EXPECT_TRUE(compare_last(layer, pr, ref.ranks[0], good.y_host()).passed);
}

// A call whose waits all give up (a 100 ns bound: the first grid barrier or routing wait times out
// and every block leaves early) ends and reports a kernel error instead of hanging, also in the
// bf16 kernels, whose producer warpgroup (producer.cuh) must be told to stop on every way out of
// the workers' part; then a layer with the default bound computes the same problem right.
TEST(LayerGpu, AbortedCallEndsWithTheProducer) {
  MONOMOE_REQUIRE_GPU();
  for (const WeightLayout layout : {WeightLayout::in_out, WeightLayout::out_in}) {
    SCOPED_TRACE(layout == WeightLayout::in_out ? "in-out" : "out-in");
    LayerConfig c = small(DType::bf16, Activation::gelu);
    c.weight_layout = layout;
    reference::Problem pr = reference::make_problem(c, {2048}, 11);
    bench::DeviceProblem dev(pr, 0);
    LayerConfig hasty = c;
    hasty.timeout_seconds = 1e-7;
    {
      MoELayer layer(hasty, single_gpu(), dev.weights());
      layer.forward(dev.x(), 2048, dev.y(), nullptr);
      EXPECT_THROW(layer.synchronize(), KernelError);
    }
    const reference::Result ref = reference::run(pr);
    MoELayer layer(c, single_gpu(), dev.weights());
    dev.poison_y();
    layer.forward(dev.x(), 2048, dev.y(), nullptr);
    EXPECT_TRUE(compare_last(layer, pr, ref.ranks[0], dev.y_host()).passed);
  }
}

// The profiling trace: one record per block, its phases in time order, every task counted, and
// the output of a traced forward still right.
TEST(LayerGpu, TraceIsOrderedAndCountsEveryTask) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = small(DType::bf16, Activation::silu);
  c.experts = 16;
  reference::Problem pr = reference::make_problem(c, {512}, 21);
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(c, single_gpu(), dev.weights());
  EXPECT_TRUE(layer.trace().empty());  // off by default
  layer.set_trace(true);
  dev.poison_y();
  layer.forward(dev.x(), 512, dev.y(), nullptr);
  const std::vector<BlockTrace> tr = layer.trace();
  ASSERT_FALSE(tr.empty());
  std::int64_t tasks = 0;
  for (std::size_t b = 0; b < tr.size(); ++b) {
    SCOPED_TRACE("block " + std::to_string(b));
    const BlockTrace& t = tr[b];
    EXPECT_GE(t.gate_done, 0);
    EXPECT_LE(t.gate_done, t.routed);
    EXPECT_LE(t.routed, t.first_task);
    EXPECT_LE(t.first_task, t.end);
    EXPECT_LE(t.routed, t.last_gemm_end);
    EXPECT_LE(t.last_gemm_end, t.end);
    EXPECT_LE(t.gemm_ns + t.combine_ns, t.end - t.routed);
    // Alone: no block plays an expert-parallel role.
    EXPECT_EQ(t.dispatch_start, -1);
    EXPECT_EQ(t.dispatch_end, -1);
    EXPECT_EQ(t.headers_seen, -1);
    EXPECT_EQ(t.tiles_listed, -1);
    EXPECT_EQ(t.own_published, -1);
    EXPECT_EQ(t.peer_published, -1);
    EXPECT_EQ(t.combine_published, -1);
    tasks += t.tasks;
  }
  // 512 tokens x top-2 over 16 experts: every GEMM0, GEMM1 and combine task ran exactly once.
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
  layer.routing(experts, weights);
  std::vector<std::int64_t> rows(static_cast<std::size_t>(c.experts), 0);
  for (std::int32_t e : experts) ++rows[static_cast<std::size_t>(e)];
  std::int64_t row_tiles = 0;
  for (std::int64_t r : rows) row_tiles += (r + 127) / 128;
  // Small calls split each GEMM task's K range (the few-rows path): k_split tasks per tile.
  const std::int64_t k_split = layer.stats().k_split;
  // Combine tasks: 4 token tiles, each in column tiles of combine_cols_for (device/split.hpp).
  const int combine_cols = device::combine_cols_for(512 / 128, static_cast<int>(c.hidden));
  const std::int64_t combine_col_tiles = (c.hidden + combine_cols - 1) / combine_cols;
  const std::int64_t expected =
      row_tiles * (c.ffn / 256 + c.hidden / 256) * k_split + (512 / 128) * combine_col_tiles;
  EXPECT_EQ(tasks, expected);
  EXPECT_TRUE(bench::compare(pr, ref.ranks[0], dev.y_host(), experts).passed);

  // The task records: every task once (fewer than kTaskTraceRecords per block here), each inside
  // its block's task loop and after the block's previous task, a GEMM task's tile GEMM inside the
  // task and a combine task without one; the counts by type and every combine task's (token
  // tile, column tile) as planned.
  const std::vector<TaskTrace> recs = layer.task_trace();
  ASSERT_EQ(static_cast<std::int64_t>(recs.size()), tasks);
  std::int64_t gemm0 = 0, gemm1 = 0;
  std::vector<int> combined(static_cast<std::size_t>((512 / 128) * combine_col_tiles), 0);
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const TaskTrace& t = recs[i];
    SCOPED_TRACE("task record " + std::to_string(i) + " of block " + std::to_string(t.block));
    ASSERT_GE(t.block, 0);
    ASSERT_LT(static_cast<std::size_t>(t.block), tr.size());
    const BlockTrace& b = tr[static_cast<std::size_t>(t.block)];
    EXPECT_LE(b.first_task, t.start);
    EXPECT_LE(t.start, t.end);
    EXPECT_LE(t.end, b.end);
    if (i > 0 && recs[i - 1].block == t.block) EXPECT_LE(recs[i - 1].end, t.start);
    if (t.type == TaskTrace::Type::combine) {
      EXPECT_EQ(t.math_start, -1);
      EXPECT_EQ(t.math_end, -1);
    } else {
      EXPECT_LE(t.start, t.math_start);
      EXPECT_LE(t.math_start, t.math_end);
      EXPECT_LE(t.math_end, t.end);
    }
    switch (t.type) {
      case TaskTrace::Type::gemm0: ++gemm0; break;
      case TaskTrace::Type::gemm1: ++gemm1; break;
      case TaskTrace::Type::combine:  // (token tile a, column tile b), each once
        ASSERT_GE(t.a, 0);
        ASSERT_LT(t.a, 512 / 128);
        ASSERT_GE(t.b, 0);
        ASSERT_LT(t.b, combine_col_tiles);
        ++combined[static_cast<std::size_t>(t.a * combine_col_tiles + t.b)];
        break;
      default: ADD_FAILURE() << "task type " << static_cast<int>(t.type);
    }
  }
  EXPECT_EQ(gemm0, row_tiles * (c.ffn / 256) * k_split);
  EXPECT_EQ(gemm1, row_tiles * (c.hidden / 256) * k_split);
  for (int n : combined) EXPECT_EQ(n, 1);

  layer.set_trace(false);
  EXPECT_TRUE(layer.trace().empty());
  EXPECT_TRUE(layer.task_trace().empty());
}

// A call routed by the whole grid (16 token tiles, the gate computed here): the routing phases'
// stamps in time order. Blocks with gate GEMM items stamp their logits; with the gate split in K
// slices every block stamps leaving the barrier before the grid-wide routing; every block stamps
// leaving the barrier after the scan of the counts and the end of its placement items. Its output
// is still right.
TEST(LayerGpu, TraceStampsTheGridRoutingPhases) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = small(DType::bf16, Activation::gelu);
  c.max_tokens = 2048;
  c.hidden = 1024;
  c.experts = 16;
  reference::Problem pr = reference::make_problem(c, {2048}, 23);
  const reference::Result ref = reference::run(pr);
  bench::DeviceProblem dev(pr, 0);
  MoELayer layer(c, single_gpu(), dev.weights());
  layer.set_trace(true);
  dev.poison_y();
  layer.forward(dev.x(), 2048, dev.y(), nullptr);
  const std::vector<BlockTrace> tr = layer.trace();
  ASSERT_FALSE(tr.empty());
  const std::int64_t splits = layer.stats().gate_splits;
  const std::int64_t items = (2048 / 128) * splits;
  for (std::size_t b = 0; b < tr.size(); ++b) {
    SCOPED_TRACE("block " + std::to_string(b) + ", gate_splits " + std::to_string(splits));
    const BlockTrace& t = tr[b];
    EXPECT_EQ(t.logits_done >= 0, static_cast<std::int64_t>(b) < items);
    EXPECT_EQ(t.gate_barrier >= 0, splits > 1);
    if (t.logits_done >= 0) EXPECT_LE(t.logits_done, t.gate_done);
    if (t.logits_done >= 0 && t.gate_barrier >= 0) EXPECT_LE(t.logits_done, t.gate_barrier);
    if (t.gate_barrier >= 0) EXPECT_LE(t.gate_barrier, t.gate_done);
    EXPECT_GE(t.scanned, t.gate_done);
    EXPECT_GE(t.placed, t.scanned);
    EXPECT_LE(t.placed, t.routed);
  }
  EXPECT_TRUE(compare_last(layer, pr, ref.ranks[0], dev.y_host()).passed);
}

// A token whose row of x holds a NaN or an inf: its routing is defined (NaN: the k lowest experts;
// inf: by the infinite logits), its output is not finite, and every other token's output and
// routing are bit-identical to the run without the poisoned row (dropless). No kernel error.
TEST(LayerGpu, PoisonedRowIsIsolated) {
  MONOMOE_REQUIRE_GPU();
  // Every precision, and tf32 with [out, in] weights, whose operands are rounded on the way to
  // shared memory (wgmma) instead of in registers.
  const std::pair<DType, WeightLayout> kinds[] = {{DType::bf16, WeightLayout::in_out},
                                                  {DType::tf32, WeightLayout::in_out},
                                                  {DType::fp32, WeightLayout::in_out},
                                                  {DType::tf32, WeightLayout::out_in}};
  for (const auto& [d, layout] : kinds) {
    LayerConfig c = small(d, Activation::swiglu);
    c.weight_layout = layout;
    const reference::Problem clean = reference::make_problem(c, {300}, 88);
    bench::DeviceProblem dev(clean, 0);
    MoELayer layer(c, single_gpu(), dev.weights());
    dev.poison_y();
    layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
    std::vector<std::int32_t> e0, e1;
    std::vector<float> w0, w1;
    layer.routing(e0, w0);
    const std::vector<float> y0 = dev.y_host();
    const auto h = static_cast<std::size_t>(c.hidden);
    for (float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      SCOPED_TRACE(std::string(to_string(d)) + " " + std::string(to_string(layout)) +
                   (std::isnan(poison) ? " NaN" : " inf"));
      constexpr std::size_t kBad = 131;  // in the second token tile
      reference::Problem p = clean;
      p.x[0][kBad * h + 5] = poison;
      bench::DeviceProblem bad(p, 0);  // the same weights; this x has the poisoned row
      bad.poison_y();
      layer.forward(bad.x(), bad.tokens(), bad.y(), nullptr);
      layer.synchronize();  // no kernel error
      layer.routing(e1, w1);
      const std::vector<float> y1 = bad.y_host();
      EXPECT_EQ(test::poisoned_row_violations(y0, e0, y1, e1, 300, c.hidden, c.topk, c.experts,
                                              static_cast<std::int64_t>(kBad), std::isnan(poison)),
                "");
    }
  }
}

// One layer of a test that builds several on one communicator: its problem on the device, the
// reference, and its first output (later calls must repeat it bit for bit).
struct SharedCase {
  reference::Problem pr;
  reference::Result ref;
  std::unique_ptr<bench::DeviceProblem> dev;
  std::unique_ptr<MoELayer> layer;
  std::vector<float> first;

  SharedCase(const LayerConfig& c, std::int64_t tokens, std::uint64_t seed)
      : pr(reference::make_problem(c, {tokens}, seed)),
        ref(reference::run(pr)),
        dev(std::make_unique<bench::DeviceProblem>(pr, 0)) {}
  void build() { layer = std::make_unique<MoELayer>(pr.config, single_gpu(), dev->weights()); }

  // One forward into a poisoned y, checked against the reference (routing, drops, every token)
  // and against the first call's output. Returns false, with the reason added as a failure.
  bool call(const std::string& label) {
    dev->poison_y();
    layer->forward(dev->x(), dev->tokens(), dev->y(), nullptr);
    std::string detail;
    bool ok = bench::check_forward(*layer, *dev, pr, ref.ranks[0], 0, detail);
    const std::vector<float> y = dev->y_host();
    if (first.empty()) {
      first = y;
    } else if (ok && std::memcmp(first.data(), y.data(), y.size() * sizeof(float)) != 0) {
      ok = false;
      detail += " differs bitwise from this layer's first call";
    }
    std::printf("[%s] %s %s: %s\n", label.c_str(), ok ? "PASS" : "FAIL",
                pr.config.describe().c_str(), detail.c_str());
    EXPECT_TRUE(ok) << label << ": " << detail;
    return ok;
  }
};

// Layers of different configs on one communicator share its workspace ("Many layers",
// layer.hpp). The second, larger in every size of the shared memory (task slots, the layers'
// area), is built after the first ran, so the workspace grows and moves under the first; a third
// that fits is built later (no growth: the area is refilled with all ones). Then they run in
// turn, several rounds, every output checked against the float64 reference and bit-identical to
// the same layer's first call.
TEST(LayerGpu, LayersOfDifferentConfigsShareOneWorkspace) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig a = small(DType::bf16, Activation::gelu);
  a.experts = 16;
  a.capacity_factor = 0.5;  // drops counted in the shared control words
  LayerConfig b = small(DType::fp32, Activation::swiglu);
  b.max_tokens = 1024;
  b.hidden = 384;
  b.ffn = 512;
  b.experts = 20;  // gate padded to 128 columns, as a's
  b.topk = 4;
  b.weight_layout = WeightLayout::out_in;
  b.renormalize = false;
  LayerConfig c = small(DType::tf32, Activation::relu);
  c.bias = false;
  std::vector<SharedCase> layers;
  layers.emplace_back(a, 300, 61);
  layers.emplace_back(b, 1000, 62);
  layers.emplace_back(c, 200, 63);
  ASSERT_GT(b.workspace_bytes(), a.workspace_bytes());
  ASSERT_LE(c.workspace_bytes(), b.workspace_bytes());
  layers[0].build();
  layers[0].call("a alone");
  layers[1].build();  // grows the workspace under a
  // The shared area now holds b's construction poison: a's last results are gone, and say so.
  EXPECT_THROW(layers[0].layer->stats(), ConfigError);
  layers[0].call("a after b was built");
  layers[1].call("b");
  EXPECT_THROW(layers[0].layer->stats(), ConfigError);  // b ran since
  layers[2].build();
  for (int round = 0; round < 3; ++round) {
    for (std::size_t l = 0; l < layers.size(); ++l) {
      layers[l].call("round " + std::to_string(round) + ", layer " +
                     std::string(1, static_cast<char>('a' + l)));
    }
  }
  // Destroyed in another order than built: the others keep the memory.
  layers[1].layer.reset();
  layers[0].call("a after b was destroyed");
  layers[2].call("c after b was destroyed");
}

// The memory of many layers: 32 layers of the default config (hidden 2048, ffn 2048, 64 experts,
// top-2, 8192 tokens, bf16) over the same weights cost what one does: they share one workspace
// (each further layer costs its weights, counted once here, and host memory). Prints both.
TEST(LayerGpu, ManyLayersCostOneWorkspace) {
  MONOMOE_REQUIRE_GPU();
  const LayerConfig c;
  const auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  const std::size_t elem = element_bytes(c.dtype);
  const std::size_t el = u(c.experts_per_rank());
  const auto zeros = [](std::size_t bytes) {
    test::DeviceArray a(bytes);
    test::check_cuda(cudaMemset(a.get(), 0, bytes), "cudaMemset");
    return a;
  };
  const auto used = [] {
    std::size_t free = 0, total = 0;
    test::check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    return total - free;
  };
  const std::size_t at_start = used();
  // Zero weights and tokens: every logit ties, routing is defined (the lowest experts), and the
  // memory is what matters here.
  const test::DeviceArray gate = zeros(u(c.hidden * c.experts) * elem);
  const test::DeviceArray w1 = zeros(el * u(c.hidden * c.w1_columns()) * elem);
  const test::DeviceArray b1 = zeros(el * u(c.w1_columns()) * elem);
  const test::DeviceArray w2 = zeros(el * u(c.ffn * c.hidden) * elem);
  const test::DeviceArray b2 = zeros(el * u(c.hidden) * elem);
  const test::DeviceArray x = zeros(u(c.max_tokens * c.hidden) * elem);
  test::DeviceArray y(u(c.max_tokens * c.hidden) * elem);
  const ExpertWeights w{gate.get(), w1.get(), b1.get(), w2.get(), b2.get()};
  const auto run = [&](MoELayer& layer) {
    layer.forward(x.get(), c.max_tokens, y.get(), nullptr);
    layer.synchronize();
  };
  {
    MoELayer warm(c, single_gpu(), w);  // loads the kernel's code, then frees its memory
    run(warm);
  }
  const std::size_t weights_and_buffers = used() - at_start;
  const std::size_t before = used();
  std::vector<std::unique_ptr<MoELayer>> layers;
  layers.push_back(std::make_unique<MoELayer>(c, single_gpu(), w));
  run(*layers.back());
  const std::size_t one = used() - before;
  for (int i = 1; i < 32; ++i) layers.push_back(std::make_unique<MoELayer>(c, single_gpu(), w));
  for (auto& l : layers) run(*l);
  const std::size_t all = used() - before;
  const double mib = 1.0 / (1 << 20);
  std::printf("default config: %s\n", c.describe().c_str());
  std::printf("weights (shared by the layers), x and y: %.1f MiB (cudaMemGetInfo)\n",
              weights_and_buffers * mib);
  std::printf("device memory of  1 layer : %.1f MiB (%.1f MiB with the weights, x and y)\n",
              one * mib, (one + weights_and_buffers) * mib);
  std::printf("device memory of 32 layers: %.1f MiB (%.1f MiB with the weights, x and y); "
              "32 private workspaces would take %.1f MiB\n",
              all * mib, (all + weights_and_buffers) * mib, 32.0 * c.workspace_bytes() * mib);
  EXPECT_GE(one, c.workspace_bytes() / 2) << "the layer's workspace was not counted";
  EXPECT_LE(static_cast<double>(all), 1.05 * static_cast<double>(one))
      << "32 layers: " << all << " bytes, one: " << one;
}

// The subject of the argument-check tests: a small bf16 layer built over a 16-token problem.
struct ArgumentCheckLayer {
  LayerConfig c = small(DType::bf16, Activation::gelu);
  reference::Problem pr = reference::make_problem(c, {16}, 1);
  bench::DeviceProblem dev{pr, 0};
  MoELayer layer{c, single_gpu(), dev.weights()};
};

TEST(LayerGpu, InvalidTokenCounts) {
  MONOMOE_REQUIRE_GPU();
  ArgumentCheckLayer subject;
  auto& [c, pr, dev, layer] = subject;
  expect_config_error([&] { layer.forward(dev.x(), c.max_tokens + 1, dev.y(), nullptr); },
                      {"tokens", "max_tokens"});
  expect_config_error([&] { layer.forward(dev.x(), -1, dev.y(), nullptr); }, {"tokens"});
  // The layer still works after refusals.
  dev.poison_y();
  layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
  layer.synchronize();
  EXPECT_TRUE(compare_last(layer, pr, reference::run(pr).ranks[0], dev.y_host()).passed);
}

// x and y: null, misaligned, host memory, pinned host memory, another GPU's memory.
TEST(LayerGpu, InvalidForwardPointers) {
  MONOMOE_REQUIRE_GPU();
  ArgumentCheckLayer subject;
  auto& [c, pr, dev, layer] = subject;
  const auto bytes = static_cast<std::size_t>(c.max_tokens * c.hidden) * element_bytes(c.dtype);
  std::vector<unsigned char> host(bytes + 16);
  void* pinned = nullptr;
  MONOMOE_ASSERT_CUDA(cudaMallocHost(&pinned, bytes));
  char* x = static_cast<char*>(const_cast<void*>(dev.x()));
  char* y = static_cast<char*>(dev.y());
  struct Case {
    const char* what;
    const void* x;
    void* y;
    std::initializer_list<const char*> names;
  };
  const Case cases[] = {
      {"null x", nullptr, y, {"x", "null"}},
      {"null y", x, nullptr, {"y", "null"}},
      {"misaligned x", x + 2, y, {"x", "aligned"}},
      {"misaligned y", x, y + 4, {"y", "aligned"}},
      {"host x", host.data(), y, {"x", "not CUDA memory"}},
      {"host y", x, host.data(), {"y", "not CUDA memory"}},
      {"pinned x", pinned, y, {"x", "pinned host memory"}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    expect_config_error([&] { layer.forward(k.x, dev.tokens(), k.y, nullptr); }, k.names);
  }
  int gpus = 0;
  MONOMOE_ASSERT_CUDA(cudaGetDeviceCount(&gpus));
  if (gpus >= 2) {
    void* other = nullptr;
    MONOMOE_ASSERT_CUDA(cudaSetDevice(1));
    MONOMOE_ASSERT_CUDA(cudaMalloc(&other, bytes));
    MONOMOE_ASSERT_CUDA(cudaSetDevice(0));
    expect_config_error([&] { layer.forward(x, dev.tokens(), other, nullptr); },
                        {"y", "memory of GPU 1", "runs on GPU 0"});
    cudaFree(other);
  } else {
    std::printf("one GPU visible: the another-GPU case of y is not run\n");
  }
  cudaFreeHost(pinned);
  // Zero tokens need no buffers; a good call still works.
  layer.forward(nullptr, 0, nullptr, nullptr);
  layer.synchronize();
  dev.poison_y();
  layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
  layer.synchronize();
}

// Every weight pointer: null, misaligned, host memory; a bias only when the config has biases
// (expect_each_weight_refused, layer_gpu_test.hpp).

TEST(LayerGpu, InvalidWeightPointers) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = small(DType::bf16, Activation::gelu);
  reference::Problem pr = reference::make_problem(c, {16}, 1);
  bench::DeviceProblem dev(pr, 0);
  expect_each_weight_refused(c, dev.weights(),
                             {{"gate", &ExpertWeights::gate},
                              {"w1", &ExpertWeights::w1},
                              {"b1", &ExpertWeights::b1},
                              {"w2", &ExpertWeights::w2},
                              {"b2", &ExpertWeights::b2}});
  LayerConfig nb = c;
  nb.bias = false;
  ExpertWeights w = dev.weights();
  w.b1 = w.b2 = nullptr;
  MoELayer layer(nb, single_gpu(), w);  // no biases: none needed

  // The shared expert's weights: each one named when missing, misaligned or host memory while
  // shared_ffn > 0; refused when given with shared_ffn = 0 (the config was likely forgotten).
  LayerConfig sc = c;
  sc.shared_ffn = c.ffn;
  reference::Problem spr = reference::make_problem(sc, {16}, 2);
  bench::DeviceProblem sdev(spr, 0);
  const std::vector<WeightField> shared_fields = {{"shared_w1", &ExpertWeights::shared_w1},
                                                  {"shared_b1", &ExpertWeights::shared_b1},
                                                  {"shared_w2", &ExpertWeights::shared_w2},
                                                  {"shared_b2", &ExpertWeights::shared_b2}};
  expect_each_weight_refused(sc, sdev.weights(), shared_fields);
  for (const auto& [name, field] : shared_fields) {
    SCOPED_TRACE(name);
    ExpertWeights extra = dev.weights();  // c has no shared expert
    extra.*field = sdev.weights().*field;
    expect_config_error([&] { MoELayer layer(c, single_gpu(), extra); },
                        {"ExpertWeights.shared_*", "shared_ffn = 0"});
  }
}

// A given routing: null or misaligned pointers are refused, naming the argument.
TEST(LayerGpu, InvalidGivenRouting) {
  MONOMOE_REQUIRE_GPU();
  ArgumentCheckLayer subject;
  auto& [c, pr, dev, layer] = subject;
  reference::give_random_routing(pr, 2);
  const bench::DeviceProblem given(pr, 0);
  const Routing ok = given.routing();
  const auto message = [&](const Routing& r, std::int64_t tokens) -> std::string {
    try {
      layer.forward(dev.x(), tokens, dev.y(), nullptr, r);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message({nullptr, ok.topk_weights}, 16).find("Routing.topk_ids is null"),
            std::string::npos);
  EXPECT_NE(message({ok.topk_ids, nullptr}, 16).find("Routing.topk_weights is null"),
            std::string::npos);
  const auto* odd_ids = reinterpret_cast<const std::int32_t*>(
      reinterpret_cast<const char*>(ok.topk_ids) + 2);
  EXPECT_NE(message({odd_ids, ok.topk_weights}, 16).find("topk_ids is not 4-byte aligned"),
            std::string::npos);
  const auto* odd_weights = reinterpret_cast<const float*>(
      reinterpret_cast<const char*>(ok.topk_weights) + 1);
  EXPECT_NE(message({ok.topk_ids, odd_weights}, 16).find("topk_weights is not 4-byte aligned"),
            std::string::npos);
  EXPECT_EQ(message(Routing{}, 0), "");  // no tokens: nothing to route
  EXPECT_EQ(message(ok, 16), "");
  layer.synchronize();
}

}  // namespace
}  // namespace monomoe
