// The CPU reference: the exact MoE layer of docs/design (DESIGN.md) for all W ranks at once, in
// float64, and seeded generators for its inputs. The GPU paths are checked against this.
#pragma once

#include <cstdint>
#include <vector>

#include "monomoe/config.hpp"

namespace monomoe::reference {

// Inputs of one forward() over all ranks. All values are float; when the problem is made for
// DType::bf16 every value is already rounded to bf16, so the GPU sees exactly the same numbers.
struct Problem {
  LayerConfig config;                        // world_size ranks; config.rank is ignored
  std::vector<std::int64_t> tokens;          // [world] tokens of each rank in this call
  std::vector<std::vector<float>> x;         // [world][tokens[r] * hidden]
  std::vector<float> gate;                   // [hidden, experts]
  std::vector<float> w1;                     // [experts, hidden, w1_columns] (global expert order)
  std::vector<float> b1;                     // [experts, w1_columns] (empty when !config.bias)
  std::vector<float> w2;                     // [experts, ffn, hidden]
  std::vector<float> b2;                     // [experts, hidden] (empty when !config.bias)
};

// Makes a problem with fresh inputs from `seed`: x ~ U(-1, 1); weights scaled by 1/sqrt(fan-in) so
// that logits, activations and outputs are O(1). Rounded to bf16 when config.dtype is bf16.
Problem make_problem(const LayerConfig& config, const std::vector<std::int64_t>& tokens,
                     std::uint64_t seed);

// Routing skew for tests: adds `bias` to gate column `expert` (every token then picks it first).
void skew_gate_towards(Problem& p, std::int64_t expert, float bias);

struct RankResult {
  std::vector<double> y;                     // [tokens, hidden]
  std::vector<std::int32_t> topk_expert;     // [tokens, topk], in descending probability
  std::vector<double> topk_weight;           // [tokens, topk], renormalized if configured
  std::vector<std::uint8_t> kept;            // [tokens, topk]: 0 where capacity dropped the choice
  // Gap between the k-th and (k+1)-th gate probability of each token (1.0 when k == experts):
  // where it is tiny, a GPU's fp32 gate may legitimately pick the other expert.
  std::vector<double> topk_margin;           // [tokens]
  std::vector<std::int64_t> dropped_per_expert;  // [experts], this rank as the source
};

struct Result {
  std::vector<RankResult> ranks;
  std::vector<std::int64_t> dropped_per_expert;  // [experts], summed over ranks
  std::int64_t dropped = 0;
};

// Runs the layer. threads = 0 uses std::thread::hardware_concurrency(). The result does not depend
// on the thread count.
Result run(const Problem& p, int threads = 0);

// bf16 round-to-nearest-even of a float (what __float2bfloat16_rn does).
float round_bf16(float v);

// ||a - b|| / ||b|| over the elements where mask is non-zero (all when mask is empty).
double relative_error(const std::vector<float>& a, const std::vector<double>& b,
                      std::int64_t row_width = 1, const std::vector<std::uint8_t>& row_mask = {});

}  // namespace monomoe::reference
