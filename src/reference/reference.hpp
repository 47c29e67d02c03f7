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
  // The shared expert (config.shared_ffn > 0; empty otherwise), the same on every rank, [in, out]:
  std::vector<float> shared_w1;              // [hidden, shared_w1_columns]
  std::vector<float> shared_b1;              // [shared_w1_columns] (empty when !config.bias)
  std::vector<float> shared_w2;              // [shared_ffn, hidden]
  std::vector<float> shared_b2;              // [hidden] (empty when !config.bias)
  // DType::fp8 (empty otherwise): w1, w2 and the shared W1, W2 hold E4M3 values, and each matrix
  // one fp32 scale per 128 x 128 block of its [out, in] orientation, [out / 128, in / 128]
  // row-major, the value meant being e4m3 * scale (ExpertWeights' *_scale; docs/fp8.md).
  std::vector<float> w1_scale;         // [experts, w1_columns / 128, hidden / 128]
  std::vector<float> w2_scale;         // [experts, hidden / 128, ffn / 128]
  std::vector<float> shared_w1_scale;  // [shared_w1_columns / 128, hidden / 128]
  std::vector<float> shared_w2_scale;  // [hidden / 128, shared_ffn / 128]
  // Routing given by the caller (MoELayer::forward with a Routing), or both empty: the gate routes.
  // [world][tokens[r] * topk]: each token's expert ids (distinct, in [0, experts)) and weights,
  // used as they are: no softmax, no renormalization; the gate is not read.
  std::vector<std::vector<std::int32_t>> topk_ids;
  std::vector<std::vector<float>> topk_weights;

  bool routing_given() const { return !topk_ids.empty(); }
};

// Makes a problem with fresh inputs from `seed`: x ~ U(-1, 1); weights scaled by 1/sqrt(fan-in) so
// that logits, activations and outputs are O(1). Rounded to bf16 when config.dtype is bf16; for
// fp8, x, the gate and the biases rounded to bf16 and every expert matrix (the shared one too)
// quantized per 128 x 128 block (fp8::quantize_weight_blocks) into E4M3 values and scales.
Problem make_problem(const LayerConfig& config, const std::vector<std::int64_t>& tokens,
                     std::uint64_t seed);

// Routing skew for tests: sets feature 0 of every token of every rank to 1.0 and adds `bias` to
// gate[0, expert] (rounded to bf16 for bf16 and fp8 problems, whose gate is bf16), so that logit
// `expert` of every token grows by `bias`. A gate change alone cannot do this: x ~ U(-1, 1) flips
// the sign of any column's contribution. With bias ~50 every token picks `expert` first (p ~ 1),
// and its other choices get weights ~ e^-50 with tiny margins. Throws ConfigError if expert is not
// in [0, experts).
void skew_gate_towards(Problem& p, std::int64_t expert, float bias);

// Gives every token of every rank a routing from a router other than the softmax gate: k distinct
// experts drawn uniformly, weights uniform in [0.1, 1) (not summing to 1), from `seed` (the same
// values for any thread count). Sets p.topk_ids and p.topk_weights.
void give_random_routing(Problem& p, std::uint64_t seed);

struct RankResult {
  std::vector<double> y;                     // [tokens, hidden]
  std::vector<std::int32_t> topk_expert;     // [tokens, topk], in descending probability (or given)
  // [tokens, topk], renormalized over the k choices if configured (given weights: as given); a
  // dropped choice keeps its weight here but contributes nothing, and the kept ones are not
  // renormalized again.
  std::vector<double> topk_weight;
  std::vector<std::uint8_t> kept;            // [tokens, topk]: 0 where capacity dropped the choice
  // Gap between the k-th and (k+1)-th gate logit of each token (1.0 when k == experts or the
  // routing is given): where it is tiny, a GPU's fp32 gate may legitimately pick the other expert.
  std::vector<double> topk_margin;           // [tokens]
  std::vector<std::int64_t> dropped_per_expert;  // [experts], this rank as the source
};

struct Result {
  std::vector<RankResult> ranks;
  std::vector<std::int64_t> dropped_per_expert;  // [experts], summed over ranks
  std::int64_t dropped = 0;
};

// Runs the layer. threads = 0 uses std::thread::hardware_concurrency(). The result does not depend
// on the thread count (bit-identical). Top-k ties go to the lower expert index; with a given
// routing (Problem.topk_ids) the tokens take it as it is (margin 1.0). With capacity_factor > 0,
// each (source rank, expert) keeps the first config.capacity(tokens[r]) of its choices in ascending
// token order. y_t sums kept w_j * FFN_{e_j}(x_t) over j = 0..k-1 in that order, then adds
// FFN_shared(x_t) when config.shared_ffn > 0. For fp8 every FFN takes its input quantized per 128
// channels (fp8::quantize_group: x, then the activation h, each rounded to float first) and its
// weights dequantized (e4m3 * scale), both exactly as the layer defines them; the sums stay
// float64. Throws ConfigError when the config or a tensor's size is invalid.
Result run(const Problem& p, int threads = 0);

// Choices decided elsewhere for some tokens of one rank: a GPU's fp32 gate may pick another expert
// where the reference's top-k is a near-tie, and with a capacity limit that moves other tokens of
// the same (source, expert) across the capacity line. Rerunning the reference with the GPU's
// choices on those tokens gives the result the GPU should match.
struct ForcedRoutes {
  int rank = 0;
  std::vector<std::int64_t> tokens;   // tokens of `rank` whose choices are forced
  std::vector<std::int32_t> experts;  // [tokens.size(), topk]: their experts
};
// run() with `forced` choices: those tokens take the listed experts, weighted by the reference's
// own probabilities of them (renormalized over them when configured); margin 1.0. Throws
// ConfigError on an out-of-range rank, token or expert, or a repeated expert within a token; and
// when the problem's routing is given (there is no near-tie to force).
Result run(const Problem& p, int threads, const ForcedRoutes& forced);

// bf16 round-to-nearest-even of a float (what __float2bfloat16_rn does).
float round_bf16(float v);

// ||a - b|| / ||b|| over the rows (of row_width elements) whose mask byte is non-zero (all rows
// when mask is empty); ||a - b|| when ||b|| is 0; +inf if a compared value of a is NaN or inf.
double relative_error(const std::vector<float>& a, const std::vector<double>& b,
                      std::int64_t row_width = 1, const std::vector<std::uint8_t>& row_mask = {});

}  // namespace monomoe::reference
