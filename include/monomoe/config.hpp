// The configuration of one MoE layer, validated on the host before anything touches a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace monomoe {

enum class Activation { relu, gelu, silu, swiglu };
enum class DType {
  bf16,  // bf16 inputs and weights, tensor cores, fp32 accumulation
  tf32,  // fp32 inputs and weights, TF32 tensor-core math, fp32 accumulation
  fp32,  // fp32 inputs and weights, strict fp32 FMA math
  // E4M3 weights with an fp32 scale per 128 x 128 block (ExpertWeights.*_scale; [out, in] layout
  // only, as FP8 checkpoints store them), bf16 x, y, gate and biases; activations quantized to
  // E4M3 per token per 128 channels before each expert GEMM; fp32 accumulation. The numerics:
  // docs/fp8.md (correct today, but slower than bf16: docs/fp8.md says why). The Python op does
  // not take it yet.
  fp8,
};

// How each expert weight matrix is stored (row-major either way):
enum class WeightLayout {
  in_out,  // [in, out]: W1 [experts_per_rank, hidden, w1_columns], W2 [.., ffn, hidden],
           //            gate [hidden, experts]
  out_in,  // [out, in], PyTorch nn.Linear's `weight`: W1 [experts_per_rank, w1_columns, hidden],
           //            W2 [.., hidden, ffn], gate [experts, hidden]
};

std::string_view to_string(Activation a);
std::string_view to_string(DType d);
std::string_view to_string(WeightLayout l);  // "in-out", "out-in"
// Parse "relu"/"gelu"/"silu"/"swiglu" and "bf16"/"tf32"/"fp32"/"fp8"; nullopt when unknown.
std::optional<Activation> parse_activation(std::string_view s);
std::optional<DType> parse_dtype(std::string_view s);
std::optional<WeightLayout> parse_weight_layout(std::string_view s);  // "in-out" / "out-in"

// Bytes of one element of x, y, the gate and the biases of a dtype (2 for bf16 and fp8, 4
// otherwise), and of one expert weight element (1 for fp8, element_bytes otherwise).
std::size_t element_bytes(DType d);
std::size_t weight_element_bytes(DType d);

// Limits the kernel is built for. Shapes are runtime values within these bounds.
struct Limits {
  static constexpr std::int64_t kShapeMultiple = 128;  // hidden and ffn must be multiples of this
  static constexpr std::int64_t kMaxExperts = 256;
  static constexpr std::int64_t kMaxTopK = 8;
  static constexpr std::int64_t kMaxWorld = 64;
  static constexpr std::int64_t kMaxTokens = std::int64_t{1} << 24;  // per rank per call
  static constexpr std::int64_t kMaxHidden = 65536;
  static constexpr std::int64_t kMaxFfn = 65536;
  // LayerConfig.shared_ffn / ffn: the shared expert runs as this many slices of a routed expert's
  // width (docs/shared-experts.md). 8 covers the released models (Qwen2-57B-A14B's is 8x).
  static constexpr std::int64_t kMaxSharedSlices = 8;
};

struct LayerConfig {
  std::int64_t max_tokens = 8192;  // most tokens one rank passes to one forward()
  std::int64_t hidden = 2048;      // H: model width
  std::int64_t ffn = 2048;         // I: expert FFN width (swiglu: width of each of the two halves)
  std::int64_t experts = 64;       // E: experts over all ranks, E % world_size == 0
  std::int64_t topk = 2;           // k: experts per token, 1..min(E, 8)
  Activation activation = Activation::gelu;
  DType dtype = DType::bf16;
  WeightLayout weight_layout = WeightLayout::in_out;  // of gate, W1 and W2 (biases: [experts, out])
  bool renormalize = true;       // rescale the top-k gate weights to sum to 1
  double capacity_factor = 0.0;  // 0 = dropless; > 0 caps rows per (source rank, expert)
  bool bias = true;              // experts carry b1 and b2 (the shared expert too)
  // Width of the shared expert, a dense FFN every token of a rank passes through, its output added
  // to y with weight 1 (DeepSeek, Qwen2-MoE): 0 = none, else a multiple of ffn, at most
  // Limits::kMaxSharedSlices * ffn. Same activation as the routed experts (swiglu: two halves of
  // shared_ffn); its weights, replicated on every rank, are in ExpertWeights.shared_*.
  std::int64_t shared_ffn = 0;
  std::int64_t world_size = 1;
  std::int64_t rank = 0;
  double timeout_seconds = 5.0;  // bound on every wait inside the kernel

  std::int64_t experts_per_rank() const { return experts / world_size; }
  // Columns of W1: ffn, or 2*ffn for swiglu (gate half, then up half).
  std::int64_t w1_columns() const { return activation == Activation::swiglu ? 2 * ffn : ffn; }
  // The shared expert's: shared_ffn, or 2*shared_ffn for swiglu; and its slices (shared_ffn / ffn).
  std::int64_t shared_w1_columns() const {
    return activation == Activation::swiglu ? 2 * shared_ffn : shared_ffn;
  }
  std::int64_t shared_slices() const { return shared_ffn / ffn; }
  // Rows per (source rank, expert) kept when capacity_factor > 0, for a call with `tokens` tokens:
  // max(1, ceil(capacity_factor * tokens * topk / experts)); unbounded (tokens) when dropless.
  std::int64_t capacity(std::int64_t tokens) const;

  // Throws ConfigError naming the first invalid field, its value and the limit. When
  // device_memory_bytes > 0, also rejects a layer whose weights plus workspace exceed it.
  void validate(std::size_t device_memory_bytes = 0) const;

  // Device bytes one rank needs: its experts' weights, the replicated gate and shared expert, and the kernel's
  // workspace sized for max_tokens. Throws ConfigError if the size overflows 64 bits. The layers
  // built on one Communicator share one workspace, the size of the largest one's (layer.hpp,
  // "Many layers").
  std::size_t weight_bytes() const;
  std::size_t workspace_bytes() const;

  std::string describe() const;  // one line, for logs and benchmark headers
};

}  // namespace monomoe
