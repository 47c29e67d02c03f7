#include "bench/device_problem.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "host/check.hpp"

namespace monomoe::bench {

namespace {

// A device buffer holding float values converted to the element type of `dtype`.
struct Buffer {
  void* ptr = nullptr;
  Buffer() = default;
  Buffer(const float* v, std::size_t n, DType dtype) {
    if (n == 0) return;
    const std::size_t bytes = n * element_bytes(dtype);
    MONOMOE_CUDA(cudaMalloc(&ptr, bytes));
    if (dtype == DType::bf16) {
      std::vector<__nv_bfloat16> h(n);
      for (std::size_t i = 0; i < n; ++i) h[i] = __float2bfloat16_rn(v[i]);
      MONOMOE_CUDA(cudaMemcpy(ptr, h.data(), bytes, cudaMemcpyHostToDevice));
    } else {
      MONOMOE_CUDA(cudaMemcpy(ptr, v, bytes, cudaMemcpyHostToDevice));
    }
  }
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

// Each of `count` row-major [rows, cols] matrices stored one after the other, transposed to
// [cols, rows]: the [in, out] weights of the reference as [out, in].
std::vector<float> transposed(const float* v, std::size_t count, std::size_t rows, std::size_t cols) {
  std::vector<float> out(count * rows * cols);
  for (std::size_t m = 0; m < count; ++m) {
    const float* src = v + m * rows * cols;
    float* dst = out.data() + m * rows * cols;
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::size_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
    }
  }
  return out;
}

// A device copy of host bytes (nullptr when empty).
struct Bytes {
  void* ptr = nullptr;
  Bytes() = default;
  Bytes(const void* v, std::size_t bytes) {
    if (bytes == 0) return;
    MONOMOE_CUDA(cudaMalloc(&ptr, bytes));
    MONOMOE_CUDA(cudaMemcpy(ptr, v, bytes, cudaMemcpyHostToDevice));
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
  Bytes topk_ids, topk_weights;  // int32 / float [tokens, topk] when the routing is given
  // [in, out] copies when the config's layout is [out, in]
  Buffer gate_t, w1_t, w2_t, shared_w1_t, shared_w2_t;
};

DeviceProblem::DeviceProblem(const reference::Problem& pr, int rank) : impl_(std::make_unique<Impl>()) {
  const LayerConfig& c = pr.config;
  Impl& m = *impl_;
  m.dtype = c.dtype;
  m.tokens = pr.tokens.at(static_cast<std::size_t>(rank));
  m.hidden = c.hidden;
  const std::size_t el = static_cast<std::size_t>(c.experts_per_rank());
  const std::size_t e0 = static_cast<std::size_t>(rank) * el;
  const std::size_t h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
  const std::size_t w1c = static_cast<std::size_t>(c.w1_columns());
  const auto& xr = pr.x.at(static_cast<std::size_t>(rank));
  m.x = Buffer(xr.data(), xr.size(), c.dtype);
  std::vector<float> zeros(static_cast<std::size_t>(m.tokens) * h, 0.f);
  m.y = Buffer(zeros.data(), zeros.size(), c.dtype);
  m.gate = Buffer(pr.gate.data(), pr.gate.size(), c.dtype);
  m.w1 = Buffer(pr.w1.data() + e0 * h * w1c, el * h * w1c, c.dtype);
  m.w2 = Buffer(pr.w2.data() + e0 * f * h, el * f * h, c.dtype);
  // The shared expert is replicated: every rank gets all of it.
  const std::size_t sf = static_cast<std::size_t>(c.shared_ffn);
  const std::size_t sw1c = static_cast<std::size_t>(c.shared_w1_columns());
  m.shared_w1 = Buffer(pr.shared_w1.data(), pr.shared_w1.size(), c.dtype);
  m.shared_w2 = Buffer(pr.shared_w2.data(), pr.shared_w2.size(), c.dtype);
  if (c.weight_layout == WeightLayout::out_in) {
    // The layer gets [out, in]; the [in, out] copies stay for weights_in_out() (the baseline).
    m.gate_t = std::move(m.gate);  // move-assignment swaps: m.gate is empty after
    m.w1_t = std::move(m.w1);
    m.w2_t = std::move(m.w2);
    m.shared_w1_t = std::move(m.shared_w1);
    m.shared_w2_t = std::move(m.shared_w2);
    const std::size_t e = static_cast<std::size_t>(c.experts);
    const std::vector<float> gate = transposed(pr.gate.data(), 1, h, e);
    const std::vector<float> w1 = transposed(pr.w1.data() + e0 * h * w1c, el, h, w1c);
    const std::vector<float> w2 = transposed(pr.w2.data() + e0 * f * h, el, f, h);
    m.gate = Buffer(gate.data(), gate.size(), c.dtype);
    m.w1 = Buffer(w1.data(), w1.size(), c.dtype);
    m.w2 = Buffer(w2.data(), w2.size(), c.dtype);
    if (sf > 0) {
      const std::vector<float> sw1 = transposed(pr.shared_w1.data(), 1, h, sw1c);
      const std::vector<float> sw2 = transposed(pr.shared_w2.data(), 1, sf, h);
      m.shared_w1 = Buffer(sw1.data(), sw1.size(), c.dtype);
      m.shared_w2 = Buffer(sw2.data(), sw2.size(), c.dtype);
    }
  }
  if (c.bias) {
    m.b1 = Buffer(pr.b1.data() + e0 * w1c, el * w1c, c.dtype);
    m.b2 = Buffer(pr.b2.data() + e0 * h, el * h, c.dtype);
    m.shared_b1 = Buffer(pr.shared_b1.data(), pr.shared_b1.size(), c.dtype);
    m.shared_b2 = Buffer(pr.shared_b2.data(), pr.shared_b2.size(), c.dtype);
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
                       .shared_b2 = m.shared_b2.ptr};
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
  if (impl_->dtype == DType::bf16) {
    std::vector<__nv_bfloat16> h(n);
    MONOMOE_CUDA(cudaMemcpy(h.data(), impl_->y.ptr, n * 2, cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < n; ++i) out[i] = __bfloat162float(h[i]);
  } else {
    MONOMOE_CUDA(cudaMemcpy(out.data(), impl_->y.ptr, n * 4, cudaMemcpyDeviceToHost));
  }
  return out;
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
  reference::Problem s;
  s.config = pr.config;
  s.config.world_size = 1;
  s.config.rank = 0;
  s.config.max_tokens = std::max<std::int64_t>(1, static_cast<std::int64_t>(tokens.size()));
  s.tokens = {static_cast<std::int64_t>(tokens.size())};
  const std::size_t h = static_cast<std::size_t>(pr.config.hidden);
  s.x.resize(1);
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
  s.gate = pr.gate;
  s.w1 = pr.w1;
  s.b1 = pr.b1;
  s.w2 = pr.w2;
  s.b2 = pr.b2;
  s.shared_w1 = pr.shared_w1;
  s.shared_b1 = pr.shared_b1;
  s.shared_w2 = pr.shared_w2;
  s.shared_b2 = pr.shared_b2;
  return s;
}

}  // namespace monomoe::bench
