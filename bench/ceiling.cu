#include "bench/ceiling.hpp"

#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "baseline/check.hpp"
#include "baseline/resources.hpp"
#include "bench/metrics.hpp"
#include "host/check.hpp"

namespace monomoe::bench {

namespace {

constexpr int kFillThreads = 256;

// A counter-based generator (splitmix64 of the index): the fill needs no state and no host copy of
// 64M elements.
template <class T>
__global__ void __launch_bounds__(kFillThreads)
    fill_uniform_kernel(T* p, std::int64_t n, std::uint64_t seed) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    std::uint64_t z = seed + static_cast<std::uint64_t>(i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * 0x1p-23f - 1.0f;  // 24 bits -> [-1, 1)
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      p[i] = __float2bfloat16_rn(u);
    } else {
      p[i] = u;
    }
  }
}

template <class T>
void fill_uniform(void* p, std::int64_t n, std::uint64_t seed, cudaStream_t stream) {
  const std::int64_t blocks = std::min<std::int64_t>((n + kFillThreads - 1) / kFillThreads, 65536);
  fill_uniform_kernel<T>
      <<<static_cast<int>(blocks), kFillThreads, 0, stream>>>(static_cast<T*>(p), n, seed);
  MONOMOE_CHECK_LAUNCH(fill_uniform_kernel);
}

// The handle releases itself when a later call throws.
struct BlasHandle {
  cublasHandle_t h = nullptr;
  BlasHandle() { MONOMOE_CUBLAS(cublasCreate(&h)); }
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;
  ~BlasHandle() {
    if (h) cublasDestroy(h);
  }
};

cublasComputeType_t compute_type(DType dtype) {
  return dtype == DType::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

}  // namespace

void fill_uniform(void* p, std::int64_t n, DType dtype, std::uint64_t seed, cudaStream_t stream) {
  if (dtype == DType::bf16) {
    fill_uniform<__nv_bfloat16>(p, n, seed, stream);
  } else {
    fill_uniform<float>(p, n, seed, stream);
  }
}

DenseCeiling dense_ceiling_shape(DType dtype) {
  DenseCeiling c;
  switch (dtype) {
    case DType::bf16:
      c.m = c.n = c.k = 8192;
      c.math = "bf16 in/out, fp32 accumulate";
      break;
    case DType::tf32:
      c.m = c.n = c.k = 8192;
      c.math = "tf32 tensor cores, fp32 in/out";
      break;
    case DType::fp32:
      // Plain fp32 runs on the FMA units at a fraction of the tensor-core rate: 4096^3 keeps one
      // call near the others' time and still gives every SM many tiles.
      c.m = c.n = c.k = 4096;
      c.math = "fp32 FMA, no tensor cores";
      break;
    case DType::fp8:  // bench refuses fp8 before this (the kernel does not run it yet)
      throw ConfigError("dense ceiling: no fp8 GEMM measured yet (docs/fp8.md)");
  }
  return c;
}

DenseCeiling measure_dense_ceiling(DType dtype, int warmup, int iterations, cudaStream_t stream) {
  DenseCeiling c = dense_ceiling_shape(dtype);
  const std::size_t elem = element_bytes(dtype);
  const auto bytes = [&](std::int64_t rows, std::int64_t cols) {
    return static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) * elem;
  };
  const baseline::DeviceBuffer a(bytes(c.m, c.k)), b(bytes(c.k, c.n)), out(bytes(c.m, c.n));
  if (dtype == DType::bf16) {
    fill_uniform<__nv_bfloat16>(a.as(), c.m * c.k, 1, stream);
    fill_uniform<__nv_bfloat16>(b.as(), c.k * c.n, 2, stream);
  } else {
    fill_uniform<float>(a.as(), c.m * c.k, 1, stream);
    fill_uniform<float>(b.as(), c.k * c.n, 2, stream);
  }
  BlasHandle blas;
  MONOMOE_CUBLAS(cublasSetStream(blas.h, stream));
  // The baseline's handle setting: split-K reductions stay in fp32 even with a bf16 output, so
  // the ceiling is the same kind of cuBLAS call as the baseline's GEMMs.
  MONOMOE_CUBLAS(cublasSetMathMode(
      blas.h, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                        CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  const cudaDataType_t type = dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasComputeType_t compute = compute_type(dtype);
  const float one = 1.f, zero = 0.f;
  const int m = static_cast<int>(c.m), n = static_cast<int>(c.n), k = static_cast<int>(c.k);
  // Column-major C [m, n] = A [m, k] . B [k, n], no transposes, as the baseline's expert GEMMs.
  c.timing = time_calls(
      [&] {
        MONOMOE_CUBLAS(cublasGemmEx(blas.h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.as(), type,
                                    m, b.as(), type, k, &zero, out.as(), type, m, compute,
                                    CUBLAS_GEMM_DEFAULT));
      },
      warmup, iterations, stream);
  c.tflops = tflops(gemm_flop(c.m, c.n, c.k), c.timing.median_ms);
  return c;
}

}  // namespace monomoe::bench
