// The conventional pipeline (baseline::Pipeline) on one GPU against the float64 CPU reference
// (label gpu). Every case draws fresh inputs, poisons y, and checks: y finite everywhere, the
// relative error over tokens without a gate near-tie, their expert ids, and the drop count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "baseline/baseline.hpp"
#include "bench/device_problem.hpp"
#include "gpu_problem.hpp"
#include "gpu_test.hpp"
#include "layer_gpu_test.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

// Tokens whose k-th and (k+1)-th gate probabilities are closer than this may route differently
// on the GPU (fp32 gate vs float64 reference); they are left out of the comparison.
constexpr double kNearTie = 1e-4;

// The layer tests' small config with room for 256 tokens (the baseline has no kernel wait bound).
LayerConfig small(DType dtype, Activation act) {
  LayerConfig c = test::small_layer_config(dtype, act);
  c.max_tokens = 256;
  return c;
}

struct Case {
  std::string name;
  LayerConfig cfg;
  std::int64_t tokens;
  std::int64_t skew_expert = -1;  // >= 0: every token picks this expert first
};

reference::Problem make(const Case& tc, std::uint64_t seed) {
  reference::Problem pr = reference::make_problem(tc.cfg, {tc.tokens}, seed);
  if (tc.skew_expert >= 0) reference::skew_gate_towards(pr, tc.skew_expert, 50.f);
  return pr;
}

// With capacity limits one token's routing changes which later tokens are kept, so a near-tie
// anywhere could change the drops: such cases take the first seed from `seed` without one.
std::uint64_t seed_without_near_ties(const Case& tc, std::uint64_t seed) {
  for (int tries = 0; tries < 100; ++tries, ++seed) {
    const reference::Result ref = reference::run(make(tc, seed));
    bool tie = false;
    for (double m : ref.ranks[0].topk_margin) tie = tie || m <= kNearTie;
    if (!tie) return seed;
  }
  ADD_FAILURE() << tc.name << ": no seed without gate near-ties in 100 tries";
  return seed;
}

// Compares one forward()'s y and routing ([tokens, k] experts and weights) with the reference.
void expect_matches(const reference::Problem& pr, const reference::RankResult& ref,
                    const std::vector<float>& y, const std::vector<std::int32_t>& experts,
                    const std::vector<float>& weights) {
  const LayerConfig& c = pr.config;
  const std::size_t tokens = ref.topk_margin.size();
  const std::size_t k = static_cast<std::size_t>(c.topk);
  ASSERT_EQ(y.size(), tokens * static_cast<std::size_t>(c.hidden));
  ASSERT_EQ(experts.size(), tokens * k);
  ASSERT_EQ(weights.size(), tokens * k);
  std::size_t not_finite = 0;
  for (float v : y) not_finite += std::isfinite(v) ? 0 : 1;
  EXPECT_EQ(not_finite, 0u) << "output elements not finite (unwritten or broken)";

  std::vector<std::uint8_t> mask(tokens, 0);
  std::size_t compared = 0, route_mismatch = 0;
  double weight_error = 0.0;
  for (std::size_t t = 0; t < tokens; ++t) {
    if (ref.topk_margin[t] <= kNearTie) continue;
    mask[t] = 1;
    ++compared;
    for (std::size_t j = 0; j < k; ++j) {
      if (experts[t * k + j] != ref.topk_expert[t * k + j]) {
        if (route_mismatch++ < 5) {
          ADD_FAILURE() << "token " << t << " choice " << j << ": expert " << experts[t * k + j]
                        << ", reference " << ref.topk_expert[t * k + j];
        }
      }
      weight_error =
          std::max(weight_error, std::abs(weights[t * k + j] - ref.topk_weight[t * k + j]));
    }
  }
  EXPECT_EQ(route_mismatch, 0u);
  EXPECT_GT(compared, 0u) << "every token is a near-tie: nothing was compared";
  EXPECT_LT(weight_error, 1e-5) << "largest gate weight error";
  const double err = reference::relative_error(y, ref.y, c.hidden, mask);
  EXPECT_LT(err, bench::tolerance(c.dtype))
      << "relative error over " << compared << " of " << tokens << " tokens";
}

// A non-blocking stream, destroyed with the scope (also when a check throws).
struct Stream {
  cudaStream_t s = nullptr;
  Stream() {
    test::check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// Runs one case on a fresh pipeline, on a stream of its own (its expert GEMMs on CUTLASS's grouped
// GEMM when `cutlass`).
void check_case(const Case& tc, std::uint64_t seed, bool cutlass = false) {
  SCOPED_TRACE(tc.name + ", seed " + std::to_string(seed));
  const reference::Problem pr = make(tc, seed);
  const reference::Result ref = reference::run(pr);
  const test::DeviceWeights w = test::upload_weights(pr, 0);
  const test::DeviceArray x = test::upload_x(pr, 0);
  test::DeviceArray y = test::alloc_y(tc.cfg, tc.tokens);
  baseline::Pipeline pipe(tc.cfg, w.view());
  pipe.use_cutlass_grouped_gemm(cutlass);
  const Stream stream;
  pipe.forward(x.get(), tc.tokens, y.get(), stream.s);
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
  pipe.routing(experts, weights);
  const std::vector<float> out = test::download_y(y.get(), tc.tokens, tc.cfg);
  expect_matches(pr, ref.ranks[0], out, experts, weights);
  EXPECT_EQ(pipe.dropped(), ref.dropped);
}

TEST(BaselineGpu, EveryPrecisionAndActivation) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 200;
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (Activation a :
         {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
      check_case({std::string(to_string(d)) + "/" + std::string(to_string(a)), small(d, a), 256},
                 seed++);
    }
  }
}

// The expert GEMMs on CUTLASS's Hopper grouped GEMM (bf16): every activation, and groups whose
// rows are not multiples of the tile (skewed routing, odd widths).
TEST(BaselineGpu, CutlassGroupedGemm) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 600;
  for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
    check_case({"cutlass bf16/" + std::string(to_string(a)), small(DType::bf16, a), 256}, seed++,
               true);
  }
  LayerConfig c = small(DType::bf16, Activation::gelu);
  c.hidden = 384;
  c.ffn = 640;
  c.experts = 16;
  c.max_tokens = 300;
  check_case({"cutlass bf16, hidden 384, ffn 640, 16 experts", c, 300}, seed++, true);
  check_case({"cutlass bf16, skewed to expert 3", small(DType::bf16, Activation::swiglu), 256, 3},
             seed++, true);
  const reference::Problem tp = make({"tf32", small(DType::tf32, Activation::gelu), 8}, 1);
  const test::DeviceWeights tw = test::upload_weights(tp, 0);
  baseline::Pipeline tf32(tp.config, tw.view());
  EXPECT_THROW(tf32.use_cutlass_grouped_gemm(true), ConfigError);
}

// A shared expert (dense cuBLAS GEMMs over every token, added in the combine): every precision and
// activation with 1 and 2 slices of ffn, without biases, and beside CUTLASS's grouped GEMM.
TEST(BaselineGpu, SharedExpert) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 700;
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    for (Activation a :
         {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
      for (std::int64_t slices : {1, 2}) {
        LayerConfig c = small(d, a);
        c.shared_ffn = slices * c.ffn;
        check_case({"shared expert " + std::to_string(slices) + " x ffn, " +
                        std::string(to_string(d)) + "/" + std::string(to_string(a)),
                    c, 256},
                   seed++);
      }
    }
    LayerConfig c = small(d, Activation::swiglu);
    c.shared_ffn = 2 * c.ffn;
    c.bias = false;
    check_case({"shared expert, no bias, " + std::string(to_string(d)), c, 200}, seed++);
  }
  LayerConfig c = small(DType::bf16, Activation::gelu);
  c.shared_ffn = c.ffn;
  check_case({"shared expert, cutlass bf16", c, 256}, seed++, true);
}

// DType::fp8 as bench runs its baseline, which has no fp8 grouped GEMM: bf16 on the fp8 weights
// dequantized (bench::baseline_config, DeviceProblem::weights_in_out: E4M3 x block scale in fp32,
// rounded to bf16, [in, out]), against the reference of that bf16 problem
// (bench::baseline_problem): every activation, a shared expert, without biases, with capacity
// drops, on cuBLAS's and on CUTLASS's grouped GEMM. It also prints how far that reference is from
// the fp8 one (fp8's quantization, docs/fp8.md: why the baseline is not compared with the fp8
// reference).
TEST(BaselineGpu, Fp8RunsBf16OnDequantizedWeights) {
  MONOMOE_REQUIRE_GPU();
  std::uint64_t seed = 900;
  struct Fp8Case {
    std::string name;
    Activation act;
    std::int64_t shared_slices;
    bool bias;
    double capacity;
  };
  const Fp8Case cases[] = {
      {"relu", Activation::relu, 0, true, 0.0},
      {"gelu, shared expert 2 x ffn", Activation::gelu, 2, true, 0.0},
      {"silu, no bias", Activation::silu, 0, false, 0.0},
      {"swiglu, shared expert 1 x ffn, capacity 0.5", Activation::swiglu, 1, true, 0.5},
  };
  for (const Fp8Case& k : cases) {
    for (bool cutlass : {false, true}) {
      LayerConfig c = small(DType::fp8, k.act);
      c.weight_layout = WeightLayout::out_in;
      c.shared_ffn = k.shared_slices * c.ffn;
      c.bias = k.bias;
      c.capacity_factor = k.capacity;
      const std::string name = "fp8 " + k.name + (cutlass ? ", cutlass" : ", cublas");
      SCOPED_TRACE(name);
      // With capacity a near-tie anywhere could move the drops (the gate is the same in both
      // problems): such a case takes a seed without one.
      const std::uint64_t s = k.capacity > 0 ? seed_without_near_ties({name, c, 256}, seed) : seed;
      ++seed;
      const reference::Problem pr = reference::make_problem(c, {256}, s);
      const reference::Problem bpr = bench::baseline_problem(pr);
      ASSERT_EQ(bpr.config.dtype, DType::bf16);
      ASSERT_EQ(bpr.config.weight_layout, WeightLayout::in_out);
      ASSERT_TRUE(bpr.w1_scale.empty());
      const reference::Result ref = reference::run(bpr);
      bench::DeviceProblem dev(pr, 0);
      baseline::Pipeline pipe(bench::baseline_config(c), dev.weights_in_out());
      pipe.use_cutlass_grouped_gemm(cutlass);
      const Stream stream;
      dev.poison_y();
      // The poison runs on the legacy stream, which a non-blocking stream does not wait for.
      MONOMOE_ASSERT_CUDA(cudaDeviceSynchronize());
      pipe.forward(dev.x(), 256, dev.y(), stream.s);
      std::vector<std::int32_t> experts;
      std::vector<float> weights;
      pipe.routing(experts, weights);
      expect_matches(bpr, ref.ranks[0], dev.y_host(), experts, weights);
      EXPECT_EQ(pipe.dropped(), ref.dropped);
      if (!cutlass) {
        const reference::Result fp8_ref = reference::run(pr);
        std::vector<float> bf16_y(ref.ranks[0].y.begin(), ref.ranks[0].y.end());
        std::printf("%s: the bf16 reference on the dequantized weights is %.4f from the fp8 one\n",
                    name.c_str(), reference::relative_error(bf16_y, fp8_ref.ranks[0].y));
      }
    }
  }
}

TEST(BaselineGpu, NoBiasNoRenormalize) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    LayerConfig c = small(d, Activation::swiglu);
    c.bias = false;
    c.renormalize = false;
    check_case({"no bias, no renormalize", c, 200}, 31);
  }
}

TEST(BaselineGpu, RoutingEdgeCases) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    check_case({"one token", small(d, Activation::gelu), 1}, 41);
  }
  {
    LayerConfig c = small(DType::fp32, Activation::swiglu);
    c.experts = 7;
    c.topk = 3;
    check_case({"7 experts, top-3", c, 255}, 42);
  }
  {
    // Top-1 so that the skew leaves no near-tie: every token goes to expert 3, the others idle.
    LayerConfig c = small(DType::bf16, Activation::silu);
    c.topk = 1;
    check_case({"skewed: all tokens to expert 3", c, 256, 3}, 43);
  }
  {
    LayerConfig c = small(DType::fp32, Activation::relu);
    c.experts = 64;
    c.topk = 8;
    check_case({"64 experts, top-8, most experts idle", c, 9}, 44);
  }
  {
    LayerConfig c = small(DType::tf32, Activation::gelu);
    c.hidden = 384;
    c.ffn = 640;
    check_case({"non-square 384 x 640", c, 129}, 45);
  }
}

TEST(BaselineGpu, CapacityDropsRows) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::fp32}) {
    LayerConfig c = small(d, Activation::gelu);
    c.capacity_factor = 0.5;  // half the mean load per expert: about half the rows drop
    const Case tc{"capacity 0.5", c, 256};
    check_case(tc, seed_without_near_ties(tc, 51));
  }
  {
    // At capacity 1.0 only the experts above the mean load drop rows: the count depends on the
    // routing (with 0.5 every expert is full and exactly half the rows drop, whatever the routing).
    LayerConfig c = small(DType::tf32, Activation::silu);
    c.capacity_factor = 1.0;
    const Case tc{"capacity 1.0", c, 256};
    check_case(tc, seed_without_near_ties(tc, 53));
  }
  {
    // Every token's only choice is expert 3, which keeps 16: the other 240 tokens get y = 0.
    LayerConfig c = small(DType::bf16, Activation::relu);
    c.topk = 1;
    c.capacity_factor = 0.5;
    check_case({"capacity 0.5, skewed: whole tokens dropped", c, 256, 3}, 52);
  }
}

// Token counts change between calls of one pipeline (no reallocation), including 0.
TEST(BaselineGpu, VariableTokensPerCall) {
  MONOMOE_REQUIRE_GPU();
  const LayerConfig c = small(DType::bf16, Activation::gelu);
  const reference::Problem base = reference::make_problem(c, {c.max_tokens}, 61);
  const test::DeviceWeights w = test::upload_weights(base, 0);
  const test::DeviceArray x = test::upload_x(base, 0);
  test::DeviceArray y = test::alloc_y(c, c.max_tokens);
  baseline::Pipeline pipe(c, w.view());
  for (std::int64_t tokens : {100, 37, 256, 1, 0, 255}) {
    SCOPED_TRACE("tokens " + std::to_string(tokens));
    reference::Problem pr = base;
    pr.tokens = {tokens};
    pr.x[0].resize(static_cast<std::size_t>(tokens * c.hidden));
    const reference::Result ref = reference::run(pr);
    test::poison(y);
    pipe.forward(x.get(), tokens, y.get(), nullptr);
    std::vector<std::int32_t> experts;
    std::vector<float> weights;
    pipe.routing(experts, weights);
    const std::vector<float> out = test::download_y(y.get(), tokens, c);
    if (tokens == 0) {
      EXPECT_TRUE(experts.empty());
      EXPECT_EQ(pipe.dropped(), 0);
      continue;
    }
    expect_matches(pr, ref.ranks[0], out, experts, weights);
  }
  // No tokens needs no buffers at all.
  EXPECT_NO_THROW(pipe.forward(nullptr, 0, nullptr, nullptr));
}

// Same inputs, bit-identical outputs.
TEST(BaselineGpu, Deterministic) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    const LayerConfig c = small(d, Activation::swiglu);
    const reference::Problem pr = reference::make_problem(c, {256}, 71);
    const test::DeviceWeights w = test::upload_weights(pr, 0);
    const test::DeviceArray x = test::upload_x(pr, 0);
    test::DeviceArray y = test::alloc_y(c, 256);
    baseline::Pipeline pipe(c, w.view());
    std::vector<float> first;
    for (int run = 0; run < 3; ++run) {
      test::poison(y);
      pipe.forward(x.get(), 256, y.get(), nullptr);
      const std::vector<float> out = test::download_y(y.get(), 256, c);
      if (run == 0) {
        first = out;
      } else {
        ASSERT_EQ(0, std::memcmp(first.data(), out.data(), out.size() * sizeof(float)))
            << to_string(d) << ", run " << run;
      }
    }
  }
}

// rerun_expert_ffn() repeats the last forward's expert FFN alone (bench times it that way): on any
// stream, following each forward's row count as it grows, shrinks or drops to none, it leaves y,
// the routing and the next forward's output bit for bit as they were.
TEST(BaselineGpu, RerunExpertFfnAlone) {
  MONOMOE_REQUIRE_GPU();
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    LayerConfig c = small(d, Activation::swiglu);
    c.capacity_factor = d == DType::tf32 ? 0.5 : 0.0;  // once with dropped rows
    const reference::Problem pr = reference::make_problem(c, {c.max_tokens}, 91);
    const test::DeviceWeights w = test::upload_weights(pr, 0);
    const test::DeviceArray x = test::upload_x(pr, 0);
    test::DeviceArray y = test::alloc_y(c, c.max_tokens);
    baseline::Pipeline pipe(c, w.view());
    const Stream other;
    for (std::int64_t tokens : {37, 256, 0, 100}) {
      SCOPED_TRACE(std::string(to_string(d)) + ", tokens " + std::to_string(tokens));
      test::poison(y);
      pipe.forward(x.get(), tokens, y.get(), nullptr);
      const std::vector<float> first = test::download_y(y.get(), tokens, c);
      std::vector<std::int32_t> experts, experts_after;
      std::vector<float> weights, weights_after;
      pipe.routing(experts, weights);
      EXPECT_EQ(pipe.expert_ffn_rows(), tokens * c.topk - pipe.dropped());
      for (int i = 0; i < 3; ++i) pipe.rerun_expert_ffn(i == 1 ? other.s : nullptr);
      test::check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the reruns");
      const std::vector<float> after = test::download_y(y.get(), tokens, c);
      EXPECT_EQ(0, std::memcmp(first.data(), after.data(), after.size() * sizeof(float)))
          << "a rerun wrote y";
      pipe.routing(experts_after, weights_after);
      EXPECT_EQ(experts, experts_after);
      test::poison(y);
      pipe.forward(x.get(), tokens, y.get(), nullptr);
      const std::vector<float> again = test::download_y(y.get(), tokens, c);
      EXPECT_EQ(0, std::memcmp(first.data(), again.data(), again.size() * sizeof(float)))
          << "the forward after the reruns differs";
    }
  }
}

TEST(BaselineGpu, InvalidArguments) {
  MONOMOE_REQUIRE_GPU();
  const LayerConfig c = small(DType::fp32, Activation::gelu);
  const reference::Problem pr = reference::make_problem(c, {16}, 81);
  const test::DeviceWeights w = test::upload_weights(pr, 0);
  const test::DeviceArray x = test::upload_x(pr, 0);
  test::DeviceArray y = test::alloc_y(c, 16);
  baseline::Pipeline pipe(c, w.view());
  const auto message_of = [](const auto& call) -> std::string {
    try {
      call();
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "(no ConfigError)";
  };
  EXPECT_NE(
      message_of([&] { pipe.forward(x.get(), c.max_tokens + 1, y.get(), nullptr); }).find("tokens"),
      std::string::npos);
  EXPECT_THROW(pipe.forward(x.get(), -1, y.get(), nullptr), ConfigError);
  EXPECT_THROW(pipe.forward(static_cast<const char*>(x.get()) + 4, 8, y.get(), nullptr),
               ConfigError);  // rows are moved with 16-byte vector accesses

  LayerConfig two = c;
  two.world_size = 2;
  EXPECT_NE(message_of([&] { baseline::Pipeline p(two, w.view()); }).find("world_size"),
            std::string::npos);
  ExpertWeights missing = w.view();
  missing.w2 = nullptr;
  EXPECT_THROW(baseline::Pipeline(c, missing), ConfigError);

  // A config with a shared expert needs its weights; the message names the one missing.
  LayerConfig shared = c;
  shared.shared_ffn = c.ffn;
  const reference::Problem sp = reference::make_problem(shared, {16}, 82);
  const test::DeviceWeights sw = test::upload_weights(sp, 0);
  const std::pair<const void* ExpertWeights::*, const char*> fields[] = {
      {&ExpertWeights::shared_w1, "weights.shared_w1"},
      {&ExpertWeights::shared_b1, "weights.shared_b1"},
      {&ExpertWeights::shared_w2, "weights.shared_w2"},
      {&ExpertWeights::shared_b2, "weights.shared_b2"}};
  for (const auto& [field, name] : fields) {
    ExpertWeights without = sw.view();
    without.*field = nullptr;
    EXPECT_NE(message_of([&] { baseline::Pipeline p(shared, without); }).find(name),
              std::string::npos)
        << name;
  }
}

}  // namespace
}  // namespace monomoe
