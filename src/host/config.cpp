#include "monomoe/config.hpp"

#include <cmath>

#include "host/checked.hpp"
#include "host/text.hpp"
#include "host/workspace.hpp"
#include "monomoe/error.hpp"

namespace monomoe {

std::string_view to_string(Activation a) {
  switch (a) {
    case Activation::relu: return "relu";
    case Activation::gelu: return "gelu";
    case Activation::silu: return "silu";
    case Activation::swiglu: return "swiglu";
  }
  return "?";
}

std::string_view to_string(DType d) {
  switch (d) {
    case DType::bf16: return "bf16";
    case DType::tf32: return "tf32";
    case DType::fp32: return "fp32";
    case DType::fp8: return "fp8";
  }
  return "?";
}

std::string_view to_string(WeightLayout l) {
  switch (l) {
    case WeightLayout::in_out: return "in-out";
    case WeightLayout::out_in: return "out-in";
  }
  return "?";
}

std::optional<WeightLayout> parse_weight_layout(std::string_view s) {
  for (auto l : {WeightLayout::in_out, WeightLayout::out_in}) {
    if (s == to_string(l)) return l;
  }
  return std::nullopt;
}

std::optional<Activation> parse_activation(std::string_view s) {
  for (auto a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
    if (s == to_string(a)) return a;
  }
  return std::nullopt;
}

std::optional<DType> parse_dtype(std::string_view s) {
  for (auto d : {DType::bf16, DType::tf32, DType::fp32, DType::fp8}) {
    if (s == to_string(d)) return d;
  }
  return std::nullopt;
}

std::size_t element_bytes(DType d) {
  return d == DType::bf16 || d == DType::fp8 ? 2 : 4;
}
std::size_t weight_element_bytes(DType d) {
  return d == DType::fp8 ? 1 : element_bytes(d);
}

std::int64_t LayerConfig::capacity(std::int64_t tokens) const {
  if (capacity_factor <= 0.0) return tokens;
  const double c = std::ceil(capacity_factor * static_cast<double>(tokens) *
                             static_cast<double>(topk) / static_cast<double>(experts));
  const double bounded = std::min(c, static_cast<double>(tokens));
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(bounded));
}

namespace {

[[noreturn]] void reject(const char* field, const std::string& value, const std::string& limit) {
  throw ConfigError("invalid LayerConfig." + std::string(field) + " = " + value + ": " + limit);
}

void require_range(const char* field, std::int64_t v, std::int64_t lo, std::int64_t hi) {
  if (v < lo || v > hi) {
    reject(field, std::to_string(v),
           "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
}

}  // namespace

void LayerConfig::validate(std::size_t device_memory_bytes) const {
  require_range("max_tokens", max_tokens, 1, Limits::kMaxTokens);
  require_range("hidden", hidden, 1, Limits::kMaxHidden);
  require_range("ffn", ffn, 1, Limits::kMaxFfn);
  if (hidden % Limits::kShapeMultiple != 0) {
    reject("hidden", std::to_string(hidden),
           "must be a multiple of " + std::to_string(Limits::kShapeMultiple) + " (the kernel's tile)");
  }
  if (ffn % Limits::kShapeMultiple != 0) {
    reject("ffn", std::to_string(ffn),
           "must be a multiple of " + std::to_string(Limits::kShapeMultiple) + " (the kernel's tile)");
  }
  require_range("shared_ffn", shared_ffn, 0, Limits::kMaxSharedSlices * ffn);
  if (shared_ffn % ffn != 0) {
    reject("shared_ffn", std::to_string(shared_ffn),
           "must be 0 (no shared expert) or a multiple of ffn = " + std::to_string(ffn) +
               " (it runs as slices of a routed expert's width)");
  }
  if (dtype == DType::fp8 && weight_layout != WeightLayout::out_in) {
    reject("weight_layout", std::string(to_string(weight_layout)),
           "dtype fp8 takes [out, in] weights (weight_layout out_in), the layout of FP8 "
           "checkpoints and of their 128 x 128 block scales");
  }
  require_range("world_size", world_size, 1, Limits::kMaxWorld);
  require_range("rank", rank, 0, world_size - 1);
  require_range("experts", experts, 1, Limits::kMaxExperts);
  if (experts % world_size != 0) {
    reject("experts", std::to_string(experts),
           "must be divisible by world_size = " + std::to_string(world_size));
  }
  if (topk < 1 || topk > Limits::kMaxTopK || topk > experts) {
    reject("topk", std::to_string(topk),
           "must be in [1, min(experts, " + std::to_string(Limits::kMaxTopK) +
               ")] = [1, " + std::to_string(std::min(experts, Limits::kMaxTopK)) + "]");
  }
  if (!std::isfinite(capacity_factor) || capacity_factor < 0.0) {
    reject("capacity_factor", std::to_string(capacity_factor),
           "must be 0 (dropless) or a finite positive number");
  }
  if (!std::isfinite(timeout_seconds) || timeout_seconds <= 0.0 || timeout_seconds > 3600.0) {
    reject("timeout_seconds", std::to_string(timeout_seconds), "must be in (0, 3600]");
  }
  const std::size_t weights = weight_bytes();
  const std::size_t workspace = workspace_bytes();
  const std::size_t total = detail::checked_add(weights, workspace, "max_tokens");
  if (device_memory_bytes > 0 && total > device_memory_bytes) {
    reject("max_tokens", std::to_string(max_tokens),
           text::cat("needs ", total, " bytes of device memory (weights ", weights, " + workspace ",
                     workspace, "), more than the GPU's ", device_memory_bytes,
                     "; lower max_tokens, experts, hidden or ffn"));
  }
}

std::size_t LayerConfig::weight_bytes() const {
  using detail::checked_add;
  using detail::checked_mul;
  const auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  const std::size_t el = u(experts_per_rank());
  // Expert matrix elements: this rank's experts' W1 and W2, and the replicated shared expert's.
  std::size_t matrices =
      checked_mul(checked_mul(el, u(hidden), "hidden"), u(w1_columns() + ffn), "ffn");
  matrices = checked_add(matrices,
                         checked_mul(u(hidden), u(shared_w1_columns() + shared_ffn), "shared_ffn"),
                         "shared_ffn");
  // Elements of x's type: the replicated gate, and the biases.
  std::size_t small = checked_mul(u(hidden), u(experts), "experts");
  if (bias) {
    small = checked_add(small, checked_mul(el, u(w1_columns() + hidden), "hidden"), "hidden");
    if (shared_ffn > 0) small = checked_add(small, u(shared_w1_columns() + hidden), "shared_ffn");
  }
  std::size_t bytes = checked_add(checked_mul(matrices, weight_element_bytes(dtype), "hidden"),
                                  checked_mul(small, element_bytes(dtype), "hidden"), "hidden");
  if (dtype == DType::fp8) {  // an fp32 scale per 128 x 128 block (hidden and ffn are multiples)
    bytes = checked_add(bytes, matrices / (128 * 128) * 4, "hidden");
  }
  return bytes;
}

std::size_t LayerConfig::workspace_bytes() const { return detail::plan_workspace(*this).total; }

std::string LayerConfig::describe() const {
  std::string s = text::cat("tokens=", max_tokens, " hidden=", hidden, " ffn=", ffn,
                            " experts=", experts, " topk=", topk, " act=", to_string(activation),
                            " dtype=", to_string(dtype), " renorm=", renormalize,
                            " capacity=", capacity_factor, " bias=", bias, " world=", world_size);
  if (weight_layout != WeightLayout::in_out) s += text::cat(" weights=", to_string(weight_layout));
  if (shared_ffn > 0) s += text::cat(" shared_ffn=", shared_ffn);
  return s;
}

}  // namespace monomoe
