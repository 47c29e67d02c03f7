// Device copies of a reference::Problem for GPU tests: one rank's weights in the layouts of
// include/monomoe/layer.hpp, its x, an output buffer, and y read back as float. Header-only, so
// that any GPU test (.cpp or .cu) can use it without another library.
//
//   test::DeviceWeights w = test::upload_weights(problem, rank);   // w.view() -> ExpertWeights
//   test::DeviceArray x = test::upload_x(problem, rank);
//   test::DeviceArray y = test::alloc_y(problem.config, tokens);    // poisoned with NaN
//   ... forward(x.get(), tokens, y.get(), stream) ...
//   std::vector<float> out = test::download_y(y.get(), tokens, problem.config);
//
// Element type: __nv_bfloat16 for DType::bf16, float otherwise. make_problem() already rounds bf16
// problems to bf16, so the conversion is exact and the GPU sees the reference's numbers.
#pragma once

#include <cuda_runtime_api.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "monomoe/config.hpp"
#include "monomoe/error.hpp"
#include "monomoe/layer.hpp"
#include "reference/reference.hpp"

namespace monomoe::test {

// Throws CudaError naming the call when a CUDA runtime call of a helper fails.
inline void check_cuda(cudaError_t err, const char* call) {
  if (err != cudaSuccess) {
    throw CudaError(std::string("tests/gpu_problem.hpp: ") + call + ": " + cudaGetErrorName(err) +
                    " (" + cudaGetErrorString(err) + ")");
  }
}

// One cudaMalloc'd allocation (nullptr when empty), freed on destruction.
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(std::size_t bytes) : bytes_(bytes) {
    if (bytes > 0) check_cuda(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  DeviceArray(DeviceArray&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (ptr_) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// The bf16 bits of a float, rounded to nearest even (exact for values already rounded to bf16).
inline std::uint16_t bf16_bits(float v) {
  return static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(reference::round_bf16(v)) >> 16);
}

// n floats converted to the element type of `dtype`, in a new device array.
inline DeviceArray upload_elements(const float* v, std::size_t n, DType dtype) {
  DeviceArray d(n * element_bytes(dtype));
  if (n == 0) return d;
  if (dtype == DType::bf16) {
    std::vector<std::uint16_t> bits(n);
    for (std::size_t i = 0; i < n; ++i) bits[i] = bf16_bits(v[i]);
    check_cuda(cudaMemcpy(d.get(), bits.data(), d.bytes(), cudaMemcpyHostToDevice), "cudaMemcpy");
  } else {
    check_cuda(cudaMemcpy(d.get(), v, d.bytes(), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  return d;
}

// Rank `rank`'s weights, [in, out]: the replicated gate and shared expert, and its experts, the
// contiguous global range [rank * E / W, (rank + 1) * E / W). Biases stay empty when config.bias
// is false, the shared expert's when config.shared_ffn is 0.
struct DeviceWeights {
  DeviceArray gate, w1, b1, w2, b2, shared_w1, shared_b1, shared_w2, shared_b2;
  ExpertWeights view() const {
    return ExpertWeights{.gate = gate.get(),
                         .w1 = w1.get(),
                         .b1 = b1.get(),
                         .w2 = w2.get(),
                         .b2 = b2.get(),
                         .shared_w1 = shared_w1.get(),
                         .shared_b1 = shared_b1.get(),
                         .shared_w2 = shared_w2.get(),
                         .shared_b2 = shared_b2.get()};
  }
};

inline DeviceWeights upload_weights(const reference::Problem& p, int rank) {
  const LayerConfig& c = p.config;
  if (rank < 0 || rank >= c.world_size) {
    throw ConfigError("test::upload_weights: rank = " + std::to_string(rank) +
                      " must be in [0, world_size = " + std::to_string(c.world_size) + ")");
  }
  const auto z = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  const std::size_t local = z(c.experts_per_rank());
  const std::size_t first = z(rank) * local;
  const std::size_t h = z(c.hidden), f = z(c.ffn), c1 = z(c.w1_columns());
  DeviceWeights w;
  w.gate = upload_elements(p.gate.data(), p.gate.size(), c.dtype);
  w.w1 = upload_elements(p.w1.data() + first * h * c1, local * h * c1, c.dtype);
  w.w2 = upload_elements(p.w2.data() + first * f * h, local * f * h, c.dtype);
  if (c.bias) {
    w.b1 = upload_elements(p.b1.data() + first * c1, local * c1, c.dtype);
    w.b2 = upload_elements(p.b2.data() + first * h, local * h, c.dtype);
  }
  const auto whole = [&](const std::vector<float>& v) {
    return upload_elements(v.data(), v.size(), c.dtype);
  };
  w.shared_w1 = whole(p.shared_w1);
  w.shared_b1 = whole(p.shared_b1);
  w.shared_w2 = whole(p.shared_w2);
  w.shared_b2 = whole(p.shared_b2);
  return w;
}

// Rank `rank`'s tokens x [tokens[rank], hidden] (an empty array when it has none).
inline DeviceArray upload_x(const reference::Problem& p, int rank) {
  const std::vector<float>& x = p.x.at(static_cast<std::size_t>(rank));
  return upload_elements(x.data(), x.size(), p.config.dtype);
}

// Fills a device array with NaN (0xFF bytes are a NaN in bf16 and in fp32), so that outputs a
// kernel forgot to write show up. Synchronous.
inline void poison(DeviceArray& a) {
  if (a.get()) check_cuda(cudaMemset(a.get(), 0xFF, a.bytes()), "cudaMemset");
}

// An output buffer y [tokens, hidden] of the config's element type, poisoned.
inline DeviceArray alloc_y(const LayerConfig& c, std::int64_t tokens) {
  DeviceArray y(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c.hidden) *
                element_bytes(c.dtype));
  poison(y);
  return y;
}

// y [tokens, hidden] of the config's element type, read back as float after a device-wide
// synchronization (so outstanding work on any stream has finished).
inline std::vector<float> download_y(const void* y, std::int64_t tokens, const LayerConfig& c) {
  const std::size_t n = static_cast<std::size_t>(tokens) * static_cast<std::size_t>(c.hidden);
  std::vector<float> out(n);
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  if (n == 0) return out;
  if (c.dtype == DType::bf16) {
    std::vector<std::uint16_t> bits(n);
    check_cuda(cudaMemcpy(bits.data(), y, n * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
    for (std::size_t i = 0; i < n; ++i) {
      out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(bits[i]) << 16);
    }
  } else {
    check_cuda(cudaMemcpy(out.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
  return out;
}

}  // namespace monomoe::test
