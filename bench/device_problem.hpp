// Device copies of a reference::Problem for one rank, and the comparison of a GPU output with the
// CPU reference. Shared by the GPU tests and the `bench` / `check` commands.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "monomoe/layer.hpp"
#include "reference/reference.hpp"

namespace monomoe::bench {

// Owns device buffers holding rank `rank`'s x and experts of `problem` and the whole shared expert
// (replicated: every rank holds all of it) in the layouts of include/monomoe/layer.hpp, in the
// config's weight_layout, plus an output buffer, and the rank's given routing when the problem has
// one. Element types: bf16 for DType::bf16, float for tf32 and fp32; for fp8 the expert matrices
// (routed and shared) as E4M3 bytes with their fp32 block scales (ExpertWeights.*_scale), and x, y,
// the gate and the biases bf16. An fp8 problem's matrices must hold E4M3 values (make_problem's
// do): every value is checked to convert exactly, and Error names the tensor and the element that
// does not.
class DeviceProblem {
 public:
  DeviceProblem(const reference::Problem& problem, int rank);
  ~DeviceProblem();
  DeviceProblem(const DeviceProblem&) = delete;
  DeviceProblem& operator=(const DeviceProblem&) = delete;

  ExpertWeights weights() const;  // in the problem's LayerConfig.weight_layout
  // The weights for the baseline pipeline, which takes [in, out] weights only, in the precision of
  // baseline_config(): the same weights stored [in, out] (a second copy on the device when the
  // problem's layout is [out, in]); for fp8, a bf16 copy of the expert matrices dequantized as
  // baseline_problem() does (the scale pointers null), with the bf16 gate and biases.
  ExpertWeights weights_in_out() const;
  const void* x() const;
  void* y();
  std::int64_t tokens() const;
  // The rank's given routing (Problem.topk_ids / topk_weights) on the device; null pointers when
  // the problem has none or the rank has no tokens.
  Routing routing() const;
  bool routing_given() const;
  // forward() of `layer` on this rank's x and y, with the given routing when the problem has one.
  void forward(MoELayer& layer, cudaStream_t stream = nullptr);
  void poison_y();                  // fills y with NaN so that unwritten outputs show
  std::vector<float> y_host() const;  // y as float (synchronizes)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The baseline pipeline (src/baseline) of a layer config: [in, out] weights (all it takes), and for
// fp8 bf16, because the baseline has no fp8 grouped GEMM: it runs bf16 on the fp8 weights
// dequantized (baseline_problem). Other precisions keep theirs.
LayerConfig baseline_config(const LayerConfig& config);
// What the baseline computes, as a problem for the reference: `problem` itself, except for fp8 a
// bf16 problem (baseline_config) whose expert matrices are the E4M3 values times their block scales
// in fp32, rounded to bf16 (x, the gate and the biases are bf16 already), and which quantizes no
// activation. The baseline is compared with this problem's reference at bf16's tolerance: against
// the fp8 reference it would differ by fp8's quantization error itself (some 3.6 %, docs/fp8.md),
// which is not a fault of either path.
reference::Problem baseline_problem(const reference::Problem& problem);
// How bench names the baseline's math when it differs from the layer's ("" when it does not).
std::string baseline_note(DType dtype);

// Tolerance on ||y - ref|| / ||ref|| for a precision: fp32 1e-5, tf32 2e-3, bf16 2e-2, fp8 2e-2
// (against the fp8 reference, which quantizes as the layer does).
double tolerance(DType dtype);
// Tokens whose gate margin (k-th minus (k+1)-th probability) is below this may legitimately route
// differently on the GPU (fp32 gate vs float64 reference); they are left out of the comparison.
double margin_threshold(DType dtype);

struct Comparison {
  double rel_error = 0.0;        // over the compared tokens
  std::int64_t compared = 0;     // tokens compared
  std::int64_t ambiguous = 0;    // tokens left out for a near-tie in the gate
  std::int64_t not_finite = 0;   // output elements that are NaN/inf (unwritten or broken)
  std::int64_t route_mismatch = 0;  // compared tokens whose expert choices differ
  // Capacity-limited configs: near-tied tokens where the GPU chose other experts; the reference
  // was rerun with the GPU's choices there (others' drops depend on them) and they are compared.
  std::int64_t forced = 0;
  // Drops of the rank in the reference compared against (-1 when only a sample was compared).
  std::int64_t expected_dropped = -1;
  bool passed = false;
  std::string summary() const;
};

// Compares y (all tokens of rank `rank`) and, when non-empty, the GPU routing ([tokens, k] expert
// ids) with the reference. When `tokens_checked` is empty, ref covers all tokens; otherwise ref row
// i is token tokens_checked[i] (a sample_tokens() problem). Every element of y is checked for being
// finite. With a capacity limit and all tokens checked, near-tied tokens that the GPU routed
// differently are forced into a rerun of the reference (see Comparison::forced).
Comparison compare(const reference::Problem& problem, const reference::RankResult& ref,
                   const std::vector<float>& y, const std::vector<std::int32_t>& gpu_experts,
                   const std::vector<std::int64_t>& tokens_checked = {}, int rank = 0);

// The whole check of rank `rank`'s last forward() of `layer` (its output in dev.y()): every token
// against `ref` as compare() does, the routing, and the drop count. Synchronizes. `summary` gets
// the comparison's summary and "dropped=<layer>/<reference>".
bool check_forward(MoELayer& layer, const DeviceProblem& dev, const reference::Problem& problem,
                   const reference::RankResult& ref, int rank, std::string& summary);

// A one-rank sub-problem holding only the listed tokens of `rank` and all experts (valid for
// dropless configs, where a token's output does not depend on the other tokens): lets large configs
// be checked on a sample.
reference::Problem sample_tokens(const reference::Problem& problem,
                                 const std::vector<std::int64_t>& tokens, int rank = 0);

}  // namespace monomoe::bench
