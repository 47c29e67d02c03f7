#include "bench/ceiling.hpp"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstddef>
#include <string>
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
    } else if constexpr (std::is_same_v<T, __nv_fp8_e4m3>) {
      p[i] = __nv_fp8_e4m3(u);  // round to nearest: random mantissas, as for bf16
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

// cuBLASLt objects of the fp8 GEMM, each released by its owner when a later call throws.
struct LtHandle {
  cublasLtHandle_t h = nullptr;
  LtHandle() { MONOMOE_CUBLAS(cublasLtCreate(&h)); }
  LtHandle(const LtHandle&) = delete;
  LtHandle& operator=(const LtHandle&) = delete;
  ~LtHandle() {
    if (h) cublasLtDestroy(h);
  }
};
struct LtMatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  LtMatmulDesc(cublasComputeType_t compute, cudaDataType_t scale) {
    MONOMOE_CUBLAS(cublasLtMatmulDescCreate(&d, compute, scale));
  }
  LtMatmulDesc(const LtMatmulDesc&) = delete;
  LtMatmulDesc& operator=(const LtMatmulDesc&) = delete;
  ~LtMatmulDesc() {
    if (d) cublasLtMatmulDescDestroy(d);
  }
  template <class V>
  void set(cublasLtMatmulDescAttributes_t attr, const V& v) {
    MONOMOE_CUBLAS(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)));
  }
};
struct LtLayout {
  cublasLtMatrixLayout_t l = nullptr;
  LtLayout(cudaDataType_t type, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
    MONOMOE_CUBLAS(cublasLtMatrixLayoutCreate(&l, type, static_cast<std::uint64_t>(rows),
                                              static_cast<std::uint64_t>(cols), ld));
  }
  LtLayout(const LtLayout&) = delete;
  LtLayout& operator=(const LtLayout&) = delete;
  ~LtLayout() {
    if (l) cublasLtMatrixLayoutDestroy(l);
  }
};
struct LtPreference {
  cublasLtMatmulPreference_t p = nullptr;
  LtPreference() { MONOMOE_CUBLAS(cublasLtMatmulPreferenceCreate(&p)); }
  LtPreference(const LtPreference&) = delete;
  LtPreference& operator=(const LtPreference&) = delete;
  ~LtPreference() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
};

// Workspace offered to cuBLASLt's fp8 GEMM: what its Hopper kernels ask for at most (split-K and
// stream-K partials); less could leave the fastest algorithm out.
constexpr std::size_t kLtWorkspaceBytes = std::size_t{32} << 20;

// The fp8 ceiling: D [m, n] = A . B with E4M3 A and B, a bf16 D and fp32
// accumulation, through cuBLASLt (cublasGemmEx takes no fp8). cuBLASLt's fp8 GEMM wants A
// transposed ("TN"): column-major A^T stored [k, m] (each of C's rows is a K-contiguous row, as
// the layer's token rows are) and B [k, n] (each column K-contiguous, as [out, in] weights are).
// No scale pointers (scales of 1): with A and B scale pointers set, CUDA 13.0's cuBLASLt found
// algorithms for this GEMM but refused to run every one of them (CUBLAS_STATUS_NOT_SUPPORTED, on
// an H200 on 2026-11-30, docs/perf-log.md), with or without fast accumulation, bf16 or fp32 D;
// without them it runs. Fast accumulation off, so that the tensor cores' partial sums are promoted
// to fp32 as the layer's per-128-K-block promotion does.
Timing time_fp8_gemm(const DenseCeiling& c, const void* a, const void* b, void* d, int warmup,
                     int iterations, cudaStream_t stream) {
  const baseline::DeviceBuffer workspace(kLtWorkspaceBytes);
  const LtHandle lt;
  LtMatmulDesc desc(CUBLAS_COMPUTE_32F, CUDA_R_32F);
  desc.set(CUBLASLT_MATMUL_DESC_TRANSA, std::int32_t{CUBLAS_OP_T});  // attribute type int32_t
  desc.set(CUBLASLT_MATMUL_DESC_TRANSB, std::int32_t{CUBLAS_OP_N});
  desc.set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, std::int8_t{0});
  const LtLayout la(CUDA_R_8F_E4M3, c.k, c.m, c.k);  // A^T, column-major [k, m]
  const LtLayout lb(CUDA_R_8F_E4M3, c.k, c.n, c.k);
  const LtLayout ld(CUDA_R_16BF, c.m, c.n, c.m);  // C (beta = 0, not read) and D
  const LtPreference pref;
  const std::uint64_t ws = kLtWorkspaceBytes;
  MONOMOE_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
      pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  cublasLtMatmulHeuristicResult_t best{};
  int found = 0;
  MONOMOE_CUBLAS(cublasLtMatmulAlgoGetHeuristic(lt.h, desc.d, la.l, lb.l, ld.l, ld.l, pref.p, 1,
                                                &best, &found));
  if (found == 0 || best.state != CUBLAS_STATUS_SUCCESS) {
    throw CudaError("dense ceiling: cuBLASLt has no algorithm for the fp8 GEMM " +
                    std::to_string(c.m) + " x " + std::to_string(c.n) + " x " +
                    std::to_string(c.k) + " (E4M3 A^T and B, bf16 D, fp32 compute) on this GPU" +
                    (found == 0 ? std::string()
                                : std::string(": ") + cublasGetStatusName(best.state)) +
                    "; --no-ceiling leaves the ceiling out");
  }
  const float one = 1.f, zero = 0.f;
  return time_calls(
      [&] {
        MONOMOE_CUBLAS(cublasLtMatmul(lt.h, desc.d, &one, a, la.l, b, lb.l, &zero, d, ld.l, d,
                                      ld.l, &best.algo, workspace.as(), kLtWorkspaceBytes,
                                      stream));
      },
      warmup, iterations, stream);
}

}  // namespace

void fill_uniform(void* p, std::int64_t n, DType dtype, std::uint64_t seed, cudaStream_t stream) {
  if (dtype == DType::bf16 || dtype == DType::fp8) {  // fp8's x is bf16
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
    case DType::fp8:
      c.m = c.n = c.k = 8192;
      c.math = "fp8 e4m3 in (cuBLASLt, no scales), bf16 out, fp32 accumulate";
      break;
  }
  return c;
}

DenseCeiling measure_dense_ceiling(DType dtype, int warmup, int iterations, cudaStream_t stream) {
  DenseCeiling c = dense_ceiling_shape(dtype);
  const auto bytes = [&](std::int64_t rows, std::int64_t cols, std::size_t elem) {
    return static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) * elem;
  };
  if (dtype == DType::fp8) {
    // E4M3 operands (1 byte), a bf16 output: 64 + 64 + 128 MiB, and cuBLASLt's workspace.
    const baseline::DeviceBuffer a(bytes(c.k, c.m, 1)), b(bytes(c.k, c.n, 1)),
        out(bytes(c.m, c.n, 2));
    fill_uniform<__nv_fp8_e4m3>(a.as(), c.m * c.k, 1, stream);
    fill_uniform<__nv_fp8_e4m3>(b.as(), c.k * c.n, 2, stream);
    c.timing = time_fp8_gemm(c, a.as(), b.as(), out.as(), warmup, iterations, stream);
    c.tflops = tflops(gemm_flop(c.m, c.n, c.k), c.timing.median_ms);
    return c;
  }
  const std::size_t elem = element_bytes(dtype);
  const baseline::DeviceBuffer a(bytes(c.m, c.k, elem)), b(bytes(c.k, c.n, elem)),
      out(bytes(c.m, c.n, elem));
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
