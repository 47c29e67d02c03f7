#include "bench/device_problem.hpp"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "bench/host_convert.hpp"
#include "host/check.hpp"
#include "monomoe/error.hpp"
#include "reference/fp8.hpp"

namespace monomoe::bench {

namespace {

// How a tensor is stored on the device.
enum class Elem { bf16, f32, e4m3 };

// x, y, the gate and the biases: bf16 for bf16 and fp8, float for tf32 and fp32.
Elem activation_elem(DType d) {
  return d == DType::bf16 || d == DType::fp8 ? Elem::bf16 : Elem::f32;
}
// The expert matrices (routed and shared): E4M3 for fp8, else as the activations.
Elem matrix_elem(DType d) { return d == DType::fp8 ? Elem::e4m3 : activation_elem(d); }

std::size_t elem_bytes(Elem e) {
  return e == Elem::e4m3 ? 1 : e == Elem::bf16 ? 2 : 4;
}

// A device buffer holding n float values converted to `elem` (nullptr when n is 0). `what` names
// the tensor in the error of an E4M3 conversion that is not exact.
struct Buffer {
  void* ptr = nullptr;
  Buffer() = default;
  Buffer(const float* v, std::size_t n, Elem elem, const char* what = "a tensor") {
    if (n == 0) return;
    // Converted before allocating, so that a conversion that throws leaves nothing to free.
    std::vector<__nv_bfloat16> bf16;
    std::vector<__nv_fp8_e4m3> e4m3;
    const void* src = v;
    if (elem == Elem::bf16) {
      bf16 = to_bf16(v, n);
      src = bf16.data();
    } else if (elem == Elem::e4m3) {
      e4m3 = to_e4m3(v, n, what);
      src = e4m3.data();
    }
    const std::size_t bytes = n * elem_bytes(elem);
    MONOMOE_CUDA(cudaMalloc(&ptr, bytes));
    const cudaError_t copied = cudaMemcpy(ptr, src, bytes, cudaMemcpyHostToDevice);
    if (copied != cudaSuccess) {
      cudaFree(ptr);  // the destructor of a half-built Buffer does not run
      ptr = nullptr;
      MONOMOE_CUDA(copied);
    }
  }
  Buffer(const std::vector<float>& v, Elem elem, const char* what = "a tensor")
      : Buffer(v.data(), v.size(), elem, what) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    return *this;
  }
  ~Buffer() {
    if (ptr) cudaFree(ptr);
  }
};

constexpr std::size_t kScaleBlock = static_cast<std::size_t>(reference::fp8::kBlock);

// An fp8 problem's vector must have the size its config gives (a problem built by hand may not).
void require_values(const char* name, const std::vector<float>& v, std::size_t n) {
  if (v.size() != n) {
    throw ConfigError("bench::DeviceProblem: Problem." + std::string(name) + " has " +
                      std::to_string(v.size()) + " values, the config needs " + std::to_string(n));
  }
}

// A config's extents as sizes: experts (all ranks'), hidden, ffn, W1's columns, shared_ffn and
// the shared W1's columns.
struct Extents {
  std::size_t experts, hidden, ffn, w1_columns, shared_ffn, shared_w1_columns;
};
Extents extents_of(const LayerConfig& c) {
  const auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  return {u(c.experts), u(c.hidden), u(c.ffn), u(c.w1_columns()), u(c.shared_ffn),
          u(c.shared_w1_columns())};
}

// An fp8 problem's four block-scale vectors, each the size its matrix needs: one scale per
// 128 x 128 block of every expert's W1 and W2 and of the shared expert's.
void require_fp8_scales(const reference::Problem& pr) {
  const LayerConfig& c = pr.config;
  const auto [e, h, f, w1c, sf, sw1c] = extents_of(c);
  const std::size_t blk = kScaleBlock * kScaleBlock;
  require_values("w1_scale", pr.w1_scale, e * h * w1c / blk);
  require_values("w2_scale", pr.w2_scale, e * f * h / blk);
  require_values("shared_w1_scale", pr.shared_w1_scale, h * sw1c / blk);
  require_values("shared_w2_scale", pr.shared_w2_scale, sf * h / blk);
}

// A device copy of host bytes (nullptr when empty).
struct Bytes {
  void* ptr = nullptr;
  Bytes() = default;
  Bytes(const void* v, std::size_t bytes) {
    if (bytes == 0) return;
    MONOMOE_CUDA(cudaMalloc(&ptr, bytes));
    const cudaError_t copied = cudaMemcpy(ptr, v, bytes, cudaMemcpyHostToDevice);
    if (copied != cudaSuccess) {
      cudaFree(ptr);
      ptr = nullptr;
      MONOMOE_CUDA(copied);
    }
  }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  Bytes& operator=(Bytes&& o) noexcept {
    std::swap(ptr, o.ptr);
    return *this;
  }
  ~Bytes() {
    if (ptr) cudaFree(ptr);
  }
};

}  // namespace

struct DeviceProblem::Impl {
  DType dtype;
  std::int64_t tokens = 0, hidden = 0;
  bool routing_given = false;
  Buffer x, y, gate, w1, b1, w2, b2;
  Buffer shared_w1, shared_b1, shared_w2, shared_b2;  // empty when the config has no shared expert
  Buffer w1_scale, w2_scale, shared_w1_scale, shared_w2_scale;  // fp8 only: fp32 block scales
  Bytes topk_ids, topk_weights;  // int32 / float [tokens, topk] when the routing is given
  // [in, out] copies for the baseline when the config's layout is [out, in] (fp8: always, bf16
  // dequantized)
  Buffer gate_t, w1_t, w2_t, shared_w1_t, shared_w2_t;

  // The gate and the expert matrices (routed and shared) of rank `rank`: the layer's and the
  // baseline's copies.
  void upload_matrices(const reference::Problem& pr, int rank);
  void upload_fp8_matrices(const reference::Problem& pr, int rank);
};

void DeviceProblem::Impl::upload_matrices(const reference::Problem& pr, int rank) {
  const LayerConfig& c = pr.config;
  const Elem el_type = matrix_elem(c.dtype);
  const std::size_t el = static_cast<std::size_t>(c.experts_per_rank());
  const std::size_t e0 = static_cast<std::size_t>(rank) * el;
  const auto [e, h, f, w1c, sf, sw1c] = extents_of(c);
  gate = Buffer(pr.gate, el_type);
  w1 = Buffer(pr.w1.data() + e0 * h * w1c, el * h * w1c, el_type);
  w2 = Buffer(pr.w2.data() + e0 * f * h, el * f * h, el_type);
  // The shared expert is replicated: every rank gets all of it.
  shared_w1 = Buffer(pr.shared_w1, el_type);
  shared_w2 = Buffer(pr.shared_w2, el_type);
  if (c.weight_layout == WeightLayout::out_in) {
    // The layer gets [out, in]; the [in, out] copies stay for weights_in_out() (the baseline).
    gate_t = std::move(gate);  // move-assignment swaps: gate is empty after
    w1_t = std::move(w1);
    w2_t = std::move(w2);
    shared_w1_t = std::move(shared_w1);
    shared_w2_t = std::move(shared_w2);
    gate = Buffer(transposed(pr.gate.data(), 1, h, e), el_type);
    w1 = Buffer(transposed(pr.w1.data() + e0 * h * w1c, el, h, w1c), el_type);
    w2 = Buffer(transposed(pr.w2.data() + e0 * f * h, el, f, h), el_type);
    if (sf > 0) {
      shared_w1 = Buffer(transposed(pr.shared_w1.data(), 1, h, sw1c), el_type);
      shared_w2 = Buffer(transposed(pr.shared_w2.data(), 1, sf, h), el_type);
    }
  }
}

void DeviceProblem::Impl::upload_fp8_matrices(const reference::Problem& pr, int rank) {
  const LayerConfig& c = pr.config;
  const std::size_t el = static_cast<std::size_t>(c.experts_per_rank());
  const std::size_t e0 = static_cast<std::size_t>(rank) * el;
  const auto [e, h, f, w1c, sf, sw1c] = extents_of(c);
  const std::size_t blk = kScaleBlock * kScaleBlock;
  require_values("w1", pr.w1, e * h * w1c);
  require_values("w2", pr.w2, e * f * h);
  require_values("shared_w1", pr.shared_w1, h * sw1c);
  require_values("shared_w2", pr.shared_w2, sf * h);
  require_fp8_scales(pr);
  const float* w1_in_out = pr.w1.data() + e0 * h * w1c;
  const float* w2_in_out = pr.w2.data() + e0 * f * h;
  const float* w1_s = pr.w1_scale.data() + e0 * h * w1c / blk;
  const float* w2_s = pr.w2_scale.data() + e0 * f * h / blk;
  // The layer's: the gate bf16 and every matrix E4M3, [out, in] (fp8 takes no other layout), with
  // the scales as the problem holds them ([out / 128, in / 128] per matrix already).
  gate = Buffer(transposed(pr.gate.data(), 1, h, e), Elem::bf16);
  w1 = Buffer(transposed(w1_in_out, el, h, w1c), Elem::e4m3, "w1");
  w2 = Buffer(transposed(w2_in_out, el, f, h), Elem::e4m3, "w2");
  w1_scale = Buffer(w1_s, el * h * w1c / blk, Elem::f32);
  w2_scale = Buffer(w2_s, el * f * h / blk, Elem::f32);
  if (sf > 0) {
    shared_w1 = Buffer(transposed(pr.shared_w1.data(), 1, h, sw1c), Elem::e4m3, "shared_w1");
    shared_w2 = Buffer(transposed(pr.shared_w2.data(), 1, sf, h), Elem::e4m3, "shared_w2");
    shared_w1_scale = Buffer(pr.shared_w1_scale, Elem::f32);
    shared_w2_scale = Buffer(pr.shared_w2_scale, Elem::f32);
  }
  // The baseline's (weights_in_out): [in, out] and bf16, dequantized as baseline_problem() does.
  gate_t = Buffer(pr.gate, Elem::bf16);
  w1_t = Buffer(dequantized_bf16(w1_in_out, w1_s, el, h, w1c), Elem::bf16);
  w2_t = Buffer(dequantized_bf16(w2_in_out, w2_s, el, f, h), Elem::bf16);
  if (sf > 0) {
    shared_w1_t = Buffer(
        dequantized_bf16(pr.shared_w1.data(), pr.shared_w1_scale.data(), 1, h, sw1c), Elem::bf16);
    shared_w2_t = Buffer(
        dequantized_bf16(pr.shared_w2.data(), pr.shared_w2_scale.data(), 1, sf, h), Elem::bf16);
  }
}

DeviceProblem::DeviceProblem(const reference::Problem& pr, int rank) : impl_(std::make_unique<Impl>()) {
  const LayerConfig& c = pr.config;
  Impl& m = *impl_;
  m.dtype = c.dtype;
  m.tokens = pr.tokens.at(static_cast<std::size_t>(rank));
  m.hidden = c.hidden;
  const Elem act = activation_elem(c.dtype);
  const std::size_t el = static_cast<std::size_t>(c.experts_per_rank());
  const std::size_t e0 = static_cast<std::size_t>(rank) * el;
  const std::size_t h = static_cast<std::size_t>(c.hidden);
  const std::size_t w1c = static_cast<std::size_t>(c.w1_columns());
  m.x = Buffer(pr.x.at(static_cast<std::size_t>(rank)), act);
  m.y = Buffer(std::vector<float>(static_cast<std::size_t>(m.tokens) * h, 0.f), act);
  if (c.dtype == DType::fp8) {
    m.upload_fp8_matrices(pr, rank);
  } else {
    m.upload_matrices(pr, rank);
  }
  if (c.bias) {
    m.b1 = Buffer(pr.b1.data() + e0 * w1c, el * w1c, act);
    m.b2 = Buffer(pr.b2.data() + e0 * h, el * h, act);
    m.shared_b1 = Buffer(pr.shared_b1, act);
    m.shared_b2 = Buffer(pr.shared_b2, act);
  }
  m.routing_given = pr.routing_given();
  if (m.routing_given) {
    const auto& ids = pr.topk_ids.at(static_cast<std::size_t>(rank));
    const auto& weights = pr.topk_weights.at(static_cast<std::size_t>(rank));
    m.topk_ids = Bytes(ids.data(), ids.size() * sizeof(std::int32_t));
    m.topk_weights = Bytes(weights.data(), weights.size() * sizeof(float));
  }
}

DeviceProblem::~DeviceProblem() = default;

ExpertWeights DeviceProblem::weights() const {
  const Impl& m = *impl_;
  return ExpertWeights{.gate = m.gate.ptr,
                       .w1 = m.w1.ptr,
                       .b1 = m.b1.ptr,
                       .w2 = m.w2.ptr,
                       .b2 = m.b2.ptr,
                       .shared_w1 = m.shared_w1.ptr,
                       .shared_b1 = m.shared_b1.ptr,
                       .shared_w2 = m.shared_w2.ptr,
                       .shared_b2 = m.shared_b2.ptr,
                       .w1_scale = m.w1_scale.ptr,
                       .w2_scale = m.w2_scale.ptr,
                       .shared_w1_scale = m.shared_w1_scale.ptr,
                       .shared_w2_scale = m.shared_w2_scale.ptr};
}
ExpertWeights DeviceProblem::weights_in_out() const {
  const Impl& m = *impl_;
  if (!m.w1_t.ptr) return weights();
  ExpertWeights w = weights();
  w.gate = m.gate_t.ptr;
  w.w1 = m.w1_t.ptr;
  w.w2 = m.w2_t.ptr;
  w.shared_w1 = m.shared_w1_t.ptr;
  w.shared_w2 = m.shared_w2_t.ptr;
  // fp8: the copies are dequantized bf16, which carry no scales.
  w.w1_scale = w.w2_scale = w.shared_w1_scale = w.shared_w2_scale = nullptr;
  return w;
}
const void* DeviceProblem::x() const { return impl_->x.ptr; }
void* DeviceProblem::y() { return impl_->y.ptr; }
std::int64_t DeviceProblem::tokens() const { return impl_->tokens; }
Routing DeviceProblem::routing() const {
  return Routing{static_cast<const std::int32_t*>(impl_->topk_ids.ptr),
                 static_cast<const float*>(impl_->topk_weights.ptr)};
}
bool DeviceProblem::routing_given() const { return impl_->routing_given; }

void DeviceProblem::forward(MoELayer& layer, cudaStream_t stream) {
  if (impl_->routing_given) {
    layer.forward(x(), tokens(), y(), stream, routing());
  } else {
    layer.forward(x(), tokens(), y(), stream);
  }
}

void DeviceProblem::poison_y() {
  // 0xFF bytes are a NaN in both bf16 and fp32.
  if (impl_->y.ptr) {
    MONOMOE_CUDA(cudaMemset(impl_->y.ptr, 0xFF,
                            impl_->tokens * impl_->hidden * element_bytes(impl_->dtype)));
  }
}

std::vector<float> DeviceProblem::y_host() const {
  const std::size_t n = static_cast<std::size_t>(impl_->tokens * impl_->hidden);
  std::vector<float> out(n);
  if (n == 0) return out;
  MONOMOE_CUDA(cudaDeviceSynchronize());
  if (activation_elem(impl_->dtype) == Elem::bf16) {  // bf16 and fp8
    std::vector<__nv_bfloat16> h(n);
    MONOMOE_CUDA(cudaMemcpy(h.data(), impl_->y.ptr, n * 2, cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < n; ++i) out[i] = __bfloat162float(h[i]);
  } else {
    MONOMOE_CUDA(cudaMemcpy(out.data(), impl_->y.ptr, n * 4, cudaMemcpyDeviceToHost));
  }
  return out;
}

LayerConfig baseline_config(const LayerConfig& config) {
  LayerConfig c = config;
  c.weight_layout = WeightLayout::in_out;
  if (c.dtype == DType::fp8) c.dtype = DType::bf16;
  return c;
}

reference::Problem baseline_problem(const reference::Problem& pr) {
  if (pr.config.dtype != DType::fp8) return pr;
  const LayerConfig& c = pr.config;
  const auto [e, h, f, w1c, sf, sw1c] = extents_of(c);
  require_fp8_scales(pr);
  reference::Problem b = pr;
  b.config = baseline_config(c);
  b.w1 = dequantized_bf16(pr.w1.data(), pr.w1_scale.data(), e, h, w1c);
  b.w2 = dequantized_bf16(pr.w2.data(), pr.w2_scale.data(), e, f, h);
  if (sf > 0) {
    b.shared_w1 = dequantized_bf16(pr.shared_w1.data(), pr.shared_w1_scale.data(), 1, h, sw1c);
    b.shared_w2 = dequantized_bf16(pr.shared_w2.data(), pr.shared_w2_scale.data(), 1, sf, h);
  }
  b.w1_scale.clear();
  b.w2_scale.clear();
  b.shared_w1_scale.clear();
  b.shared_w2_scale.clear();
  return b;
}

std::string baseline_note(DType dtype) {
  return dtype == DType::fp8
             ? "bf16 on dequantized fp8 weights: no fp8 grouped GEMM in the baseline"
             : "";
}

double tolerance(DType dtype) {
  switch (dtype) {
    case DType::fp32: return 1e-5;
    case DType::tf32: return 2e-3;
    case DType::bf16: return 2e-2;
    // The reference quantizes as the layer does (docs/fp8.md): what is left is bf16's output
    // rounding and fp32 accumulation, as for bf16.
    case DType::fp8: return 2e-2;
  }
  return 0.0;
}

// Logit gaps below this may flip on the GPU (fp32 accumulation; tf32 rounds the gate's inputs).
double margin_threshold(DType dtype) { return dtype == DType::tf32 ? 5e-3 : 1e-4; }

std::string Comparison::summary() const {
  std::ostringstream os;
  os << (passed ? "PASS" : "FAIL") << " rel_err=" << rel_error << " compared=" << compared
     << " ambiguous=" << ambiguous << " not_finite=" << not_finite
     << " route_mismatch=" << route_mismatch;
  if (forced > 0) os << " ties_forced=" << forced;
  return os.str();
}

// GCC 13 reports a false free-nonheap-object on inlined vector code here (GCC bug 108088).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
Comparison compare(const reference::Problem& pr, const reference::RankResult& ref,
                   const std::vector<float>& y, const std::vector<std::int32_t>& gpu_experts,
                   const std::vector<std::int64_t>& tokens_checked, int rank) {
  const LayerConfig& c = pr.config;
  const std::size_t h = static_cast<std::size_t>(c.hidden);
  const std::size_t k = static_cast<std::size_t>(c.topk);
  // Equal as sets of k ids each (both ways, so that a repeated id cannot pass).
  const auto same_set = [&](const std::int32_t* a, const std::int32_t* b) {
    for (std::size_t i = 0; i < k; ++i) {
      if (std::find(b, b + k, a[i]) == b + k || std::find(a, a + k, b[i]) == a + k) return false;
    }
    return true;
  };
  if (c.capacity_factor > 0.0 && tokens_checked.empty() && !gpu_experts.empty()) {
    reference::ForcedRoutes forced;
    forced.rank = rank;
    for (std::size_t t = 0; t < ref.topk_margin.size(); ++t) {
      if (ref.topk_margin[t] >= margin_threshold(c.dtype)) continue;
      if (same_set(gpu_experts.data() + t * k, ref.topk_expert.data() + t * k)) continue;
      forced.tokens.push_back(static_cast<std::int64_t>(t));
      forced.experts.insert(forced.experts.end(), gpu_experts.begin() + t * k,
                            gpu_experts.begin() + (t + 1) * k);
    }
    if (!forced.tokens.empty()) {
      const reference::Result rerun = reference::run(pr, 0, forced);
      Comparison out = compare(pr, rerun.ranks.at(static_cast<std::size_t>(rank)), y, gpu_experts,
                               tokens_checked, rank);
      out.forced = static_cast<std::int64_t>(forced.tokens.size());
      return out;
    }
  }
  Comparison out;
  if (tokens_checked.empty()) {
    out.expected_dropped = 0;
    for (std::int64_t d : ref.dropped_per_expert) out.expected_dropped += d;
  }
  for (float v : y) out.not_finite += std::isfinite(v) ? 0 : 1;
  const std::size_t n = tokens_checked.empty() ? ref.topk_margin.size() : tokens_checked.size();
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t t = tokens_checked.empty() ? i : static_cast<std::size_t>(tokens_checked[i]);
    if (ref.topk_margin[i] < margin_threshold(c.dtype)) {
      ++out.ambiguous;
      continue;
    }
    ++out.compared;
    if (!gpu_experts.empty()) {
      // The chosen set must match; the order among chosen experts of nearly equal weight may not.
      out.route_mismatch +=
          same_set(gpu_experts.data() + t * k, ref.topk_expert.data() + i * k) ? 0 : 1;
    }
    for (std::size_t q = 0; q < h; ++q) {
      const double d = static_cast<double>(y[t * h + q]) - ref.y[i * h + q];
      num += d * d;
      den += ref.y[i * h + q] * ref.y[i * h + q];
    }
  }
  out.rel_error = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (!std::isfinite(out.rel_error)) out.rel_error = std::numeric_limits<double>::infinity();
  out.passed = out.not_finite == 0 && out.route_mismatch == 0 &&
               out.rel_error <= tolerance(c.dtype) && (out.compared > 0 || n == 0);
  return out;
}

#pragma GCC diagnostic pop

bool check_forward(MoELayer& layer, const DeviceProblem& dev, const reference::Problem& pr,
                   const reference::RankResult& ref, int rank, std::string& summary) {
  const ForwardStats st = layer.stats();
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
  layer.routing(experts, weights);
  const Comparison cmp = compare(pr, ref, dev.y_host(), experts, {}, rank);
  summary = cmp.summary() + " dropped=" + std::to_string(st.dropped) + "/" +
            std::to_string(cmp.expected_dropped);
  return cmp.passed && st.dropped == cmp.expected_dropped;
}

reference::Problem sample_tokens(const reference::Problem& pr,
                                 const std::vector<std::int64_t>& tokens, int rank) {
  // Every weight and scale as it is (a field Problem gains later comes along); this rank's
  // sampled tokens alone.
  reference::Problem s = pr;
  s.x = std::vector<std::vector<float>>(1);  // (move-assigned: the copied rows are freed)
  s.topk_ids = {};
  s.topk_weights = {};
  s.config.world_size = 1;
  s.config.rank = 0;
  s.config.max_tokens = std::max<std::int64_t>(1, static_cast<std::int64_t>(tokens.size()));
  s.tokens = {static_cast<std::int64_t>(tokens.size())};
  const std::size_t h = static_cast<std::size_t>(pr.config.hidden);
  for (std::int64_t t : tokens) {
    const float* row = pr.x.at(static_cast<std::size_t>(rank)).data() + static_cast<std::size_t>(t) * h;
    s.x[0].insert(s.x[0].end(), row, row + h);
  }
  if (pr.routing_given()) {
    const std::size_t k = static_cast<std::size_t>(pr.config.topk);
    const auto& ids = pr.topk_ids.at(static_cast<std::size_t>(rank));
    const auto& weights = pr.topk_weights.at(static_cast<std::size_t>(rank));
    s.topk_ids.resize(1);
    s.topk_weights.resize(1);
    for (std::int64_t t : tokens) {
      const std::size_t at = static_cast<std::size_t>(t) * k;
      s.topk_ids[0].insert(s.topk_ids[0].end(), ids.begin() + at, ids.begin() + at + k);
      s.topk_weights[0].insert(s.topk_weights[0].end(), weights.begin() + at,
                               weights.begin() + at + k);
    }
  }
  return s;
}

}  // namespace monomoe::bench
