// The expert-parallel cases that every multi-rank test runs, on real GPUs (test_layer_multi_gpu.cu,
// one forked process per GPU) and on virtual ranks of one GPU (test_virtual_ranks.cu): every
// precision and activation, uneven and empty ranks, skewed routing, capacity with drops, 1 and 32
// experts per rank, a few tokens per rank at top-8, and routing given by the caller (each rank its
// own tokens'). Small shapes: the float64 reference of all ranks stays fast. ep_fp8_cases: the same
// kinds of case in DType::fp8.
#pragma once

#include <cstdint>
#include <vector>

#include "monomoe/config.hpp"

namespace monomoe::test {

struct EpCase {
  const char* name;
  LayerConfig cfg;                    // world_size / rank filled per rank
  std::vector<std::int64_t> tokens;   // per rank (resized to the world with the last value)
  std::int64_t skew_expert = -1;
  // Every rank passes a random router's routing of its tokens to forward() (no gate); the problem
  // gets it from reference::give_random_routing(problem, kGivenRoutingSeed).
  bool given_routing = false;
};

inline constexpr std::uint64_t kGivenRoutingSeed = 4321;

inline LayerConfig ep_base(DType dtype, Activation act, std::int64_t experts, std::int64_t topk) {
  LayerConfig c;
  c.max_tokens = 384;
  c.hidden = 256;
  c.ffn = 256;
  c.experts = experts;
  c.topk = topk;
  c.dtype = dtype;
  c.activation = act;
  c.timeout_seconds = 10.0;
  return c;
}

// ep_base as rank `rank` of `world` builds it.
inline LayerConfig ep_rank_config(DType dtype, Activation act, std::int64_t experts,
                                  std::int64_t topk, int world, int rank) {
  LayerConfig c = ep_base(dtype, act, experts, topk);
  c.world_size = world;
  c.rank = rank;
  return c;
}

// The cases for `w` ranks, tokens already resized to w entries.
inline std::vector<EpCase> ep_cases(int w) {
  std::vector<EpCase> v;
  v.push_back({"bf16 gelu", ep_base(DType::bf16, Activation::gelu, 4 * w, 2), {300, 200, 384, 1}});
  v.push_back({"fp32 swiglu", ep_base(DType::fp32, Activation::swiglu, 4 * w, 2), {129, 256, 7, 300}});
  v.push_back({"tf32 relu top-8", ep_base(DType::tf32, Activation::relu, 8 * w, 8), {200, 100, 150, 50}});
  v.push_back({"bf16 silu, a rank with 0 tokens", ep_base(DType::bf16, Activation::silu, 4 * w, 2),
               {0, 300, 0, 128}});
  v.push_back({"bf16 skewed to the last expert", ep_base(DType::bf16, Activation::gelu, 4 * w, 2),
               {384, 384, 384, 384}, 4 * w - 1});
  {
    LayerConfig c = ep_base(DType::bf16, Activation::gelu, 4 * w, 2);
    c.capacity_factor = 0.5;
    v.push_back({"bf16 capacity 0.5 with drops", c, {384, 200, 384, 100}, 0});
  }
  v.push_back({"fp32 one expert per rank, top-1", ep_base(DType::fp32, Activation::gelu, w, 1),
               {250, 251, 252, 253}});
  // One expert per rank and a rank without tokens (`monomoe check --seed 11` drew it on 2 GPUs).
  v.push_back({"bf16 one expert per rank, top-1, a rank with 0 tokens",
               ep_base(DType::bf16, Activation::gelu, w, 1), {384, 0}});
  v.push_back({"bf16 32 experts per rank, top-4", ep_base(DType::bf16, Activation::swiglu, 32 * w, 4),
               {384, 333, 222, 111}});
  // A few tokens per rank at top-8 (the decode shape, docs/ep-pack.md): most experts get a row or
  // a few from several ranks, packed into one row tile; tokens send several rows to one rank.
  v.push_back({"bf16 swiglu top-8, a few tokens per rank",
               ep_base(DType::bf16, Activation::swiglu, 16 * w, 8), {9, 3, 0, 17}});
  for (DType d : {DType::bf16, DType::tf32}) {
    LayerConfig c = ep_base(d, Activation::swiglu, 4 * w, 2);
    c.weight_layout = WeightLayout::out_in;
    v.push_back({d == DType::bf16 ? "bf16 out-in weights" : "tf32 out-in weights", c,
                 {300, 17, 384, 200}});
  }
  // Routing given by the caller.
  v.push_back({"bf16 gelu, given routing", ep_base(DType::bf16, Activation::gelu, 4 * w, 2),
               {300, 200, 384, 1}, -1, true});
  {
    LayerConfig c = ep_base(DType::fp32, Activation::swiglu, 4 * w, 3);
    c.capacity_factor = 0.5;
    v.push_back({"fp32 swiglu top-3, given routing, capacity 0.5 with drops", c,
                 {384, 200, 384, 100}, -1, true});
  }
  {
    LayerConfig c = ep_base(DType::tf32, Activation::swiglu, 4 * w, 2);
    c.weight_layout = WeightLayout::out_in;
    v.push_back({"tf32 out-in weights, given routing, a rank with 0 tokens", c, {0, 300, 17, 200},
                 -1, true});
  }
  v.push_back({"bf16 one expert per rank, top-1, given routing",
               ep_base(DType::bf16, Activation::gelu, w, 1), {250, 0, 384, 7}, -1, true});
  for (EpCase& c : v) {
    c.cfg.world_size = w;
    c.tokens.resize(static_cast<std::size_t>(w), c.tokens.back());
  }
  return v;
}

// Cases with a shared expert (replicated; every rank runs it on its own tokens) for `w` ranks:
// every precision, 1 and 2 slices of ffn, both weight layouts, without biases, with capacity
// drops, a routing given by the caller, a few tokens at top-8, and ranks without tokens.
inline std::vector<EpCase> ep_shared_expert_cases(int w) {
  const auto with_shared = [](LayerConfig c, std::int64_t slices) {
    c.shared_ffn = slices * c.ffn;
    return c;
  };
  std::vector<EpCase> v;
  v.push_back({"bf16 gelu, shared expert 1 x ffn",
               with_shared(ep_base(DType::bf16, Activation::gelu, 4 * w, 2), 1),
               {300, 200, 384, 1}});
  {
    LayerConfig c = with_shared(ep_base(DType::fp32, Activation::swiglu, 4 * w, 2), 2);
    c.weight_layout = WeightLayout::out_in;
    v.push_back({"fp32 swiglu out-in, shared expert 2 x ffn, rank 0 without tokens", c,
                 {0, 300, 17, 200}});
  }
  {
    LayerConfig c = with_shared(ep_base(DType::tf32, Activation::relu, 8 * w, 8), 2);
    c.bias = false;
    v.push_back({"tf32 relu top-8, shared expert 2 x ffn, no bias", c, {200, 100, 150, 50}});
  }
  {
    LayerConfig c = with_shared(ep_base(DType::tf32, Activation::swiglu, 4 * w, 2), 1);
    c.weight_layout = WeightLayout::out_in;
    v.push_back({"tf32 swiglu out-in, shared expert 1 x ffn", c, {129, 256, 7, 300}});
  }
  {
    LayerConfig c = with_shared(ep_base(DType::bf16, Activation::silu, 4 * w, 2), 2);
    c.capacity_factor = 0.5;
    v.push_back({"bf16 silu, shared expert 2 x ffn, capacity 0.5 with drops", c,
                 {384, 200, 384, 100}, 0});
  }
  v.push_back({"bf16 swiglu, shared expert 1 x ffn, given routing, rank 1 without tokens",
               with_shared(ep_base(DType::bf16, Activation::swiglu, 4 * w, 2), 1),
               {300, 0, 384, 7}, -1, true});
  v.push_back({"bf16 gelu top-8, shared expert 2 x ffn, a few tokens per rank",
               with_shared(ep_base(DType::bf16, Activation::gelu, 16 * w, 8), 2), {9, 3, 0, 17}});
  for (EpCase& c : v) {
    c.cfg.world_size = w;
    c.tokens.resize(static_cast<std::size_t>(w), c.tokens.back());
  }
  return v;
}

// fp8 SwiGLU with so few rows per rank that its GEMM tasks split K (split.hpp: two experts a rank,
// a handful of tokens, so one row tile per expert; hidden 512 and ffn 384, 4 and 3 scale blocks,
// which 2 slices do not divide evenly) on up to 4 virtual ranks of one GPU: each slice stores its
// gate and up results, the last sums both. With a shared expert (its tiles split too), and
// without biases. Part of ep_fp8_cases; the virtual-rank test also runs them alone and requires
// a split.
inline std::vector<EpCase> ep_fp8_swiglu_split_cases(int w) {
  const auto swiglu = [w] {
    LayerConfig c = ep_base(DType::fp8, Activation::swiglu, 2 * w, 2);
    c.weight_layout = WeightLayout::out_in;
    c.hidden = 512;
    c.ffn = 384;
    return c;
  };
  std::vector<EpCase> v;
  v.push_back({"fp8 swiglu, split K, a few tokens per rank", swiglu(), {3, 1, 0, 5}});
  {
    LayerConfig c = swiglu();
    c.shared_ffn = c.ffn;
    c.bias = false;
    v.push_back({"fp8 swiglu, split K, shared expert 1 x ffn, no bias", c, {1, 4, 2, 0}});
  }
  for (EpCase& c : v) {
    c.cfg.world_size = w;
    c.tokens.resize(static_cast<std::size_t>(w), c.tokens.back());
  }
  return v;
}

// DType::fp8 cases for `w` ranks (E4M3 experts with 128 x 128 block scales, [out, in] weights,
// the only layout fp8 takes): every activation, uneven ranks and a rank without tokens, capacity
// with drops (by the natural routing: the skew's bias would not be a bf16 value of the gate), 32
// experts per rank, a few tokens per rank at top-8, a shared expert, routing given by the caller
// (with drops), no biases, and SwiGLU tasks split in K (ep_fp8_swiglu_split_cases).
inline std::vector<EpCase> ep_fp8_cases(int w) {
  const auto fp8 = [](Activation act, std::int64_t experts, std::int64_t topk) {
    LayerConfig c = ep_base(DType::fp8, act, experts, topk);
    c.weight_layout = WeightLayout::out_in;
    return c;
  };
  std::vector<EpCase> v;
  v.push_back({"fp8 relu", fp8(Activation::relu, 4 * w, 2), {300, 200, 384, 1}});
  v.push_back(
      {"fp8 gelu, a rank with 0 tokens", fp8(Activation::gelu, 4 * w, 2), {0, 300, 0, 128}});
  v.push_back({"fp8 silu top-3", fp8(Activation::silu, 4 * w, 3), {129, 256, 7, 300}});
  v.push_back({"fp8 swiglu", fp8(Activation::swiglu, 4 * w, 2), {384, 333, 222, 111}});
  {
    LayerConfig c = fp8(Activation::gelu, 4 * w, 2);
    c.capacity_factor = 0.5;
    v.push_back({"fp8 gelu, capacity 0.5 with drops", c, {384, 200, 384, 100}});
  }
  v.push_back({"fp8 swiglu 32 experts per rank, top-4", fp8(Activation::swiglu, 32 * w, 4),
               {384, 333, 222, 111}});
  v.push_back({"fp8 swiglu top-8, a few tokens per rank", fp8(Activation::swiglu, 16 * w, 8),
               {9, 3, 0, 17}});
  {
    LayerConfig c = fp8(Activation::silu, 4 * w, 2);
    c.shared_ffn = 2 * c.ffn;
    v.push_back({"fp8 silu, shared expert 2 x ffn, rank 1 without tokens", c, {300, 0, 384, 7}});
  }
  {
    LayerConfig c = fp8(Activation::gelu, 4 * w, 3);
    c.capacity_factor = 0.5;
    v.push_back({"fp8 gelu top-3, given routing, capacity 0.5 with drops", c,
                 {384, 200, 384, 100}, -1, true});
  }
  {
    LayerConfig c = fp8(Activation::relu, 4 * w, 2);
    c.bias = false;
    v.push_back({"fp8 relu, no bias", c, {200, 100, 150, 50}});
  }
  for (EpCase& c : v) {
    c.cfg.world_size = w;
    c.tokens.resize(static_cast<std::size_t>(w), c.tokens.back());
  }
  for (const EpCase& c : ep_fp8_swiglu_split_cases(w)) v.push_back(c);
  return v;
}

// Two layers for the tests of layers sharing their communicator's workspace and window ("Many
// layers", include/monomoe/layer.hpp), for `w` ranks: different precisions, activations, weight
// layouts and shapes, the second larger in everything that sizes the shared memory (task slots,
// arrival flags per source, the layers' areas of the workspace and of the window), so that
// building it after the first ran grows everything under the first.
inline std::vector<EpCase> shared_workspace_pair(int w) {
  std::vector<EpCase> v;
  v.push_back({"bf16 gelu in-out, 384 tokens", ep_base(DType::bf16, Activation::gelu, 4 * w, 2),
               {300, 200, 384, 1}});
  LayerConfig big = ep_base(DType::tf32, Activation::swiglu, 8 * w, 4);
  big.max_tokens = 768;
  big.hidden = 384;
  big.ffn = 384;
  big.weight_layout = WeightLayout::out_in;
  v.push_back({"tf32 swiglu out-in, 768 tokens, hidden 384, top-4", big, {700, 513, 0, 768}});
  for (EpCase& c : v) {
    c.cfg.world_size = w;
    c.tokens.resize(static_cast<std::size_t>(w), c.tokens.back());
  }
  return v;
}

}  // namespace monomoe::test
