// The GPU's measured dense GEMM ceiling: one large cuBLAS GEMM in the math of a config's precision,
// timed in the same run as the layer, so that bench can say how far the layer is from what this
// chip does at best with that math (not a datasheet peak: what cuBLAS reaches here and now).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "bench/timing.hpp"
#include "monomoe/config.hpp"

namespace monomoe::bench {

struct DenseCeiling {
  std::int64_t m = 0, n = 0, k = 0;  // C [m, n] = A [m, k] . B [k, n]
  const char* math = "";             // e.g. "bf16 in/out, fp32 accumulate"
  Timing timing;
  double tflops = 0.0;  // at the median time
};

// The GEMM shape and math for a precision: bf16 inputs and output with fp32 accumulation
// (CUBLAS_COMPUTE_32F) for bf16, TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32) for tf32, plain
// fp32 (CUBLAS_COMPUTE_32F) for fp32; for fp8 one cuBLASLt GEMM of E4M3 inputs (A transposed, the
// form cuBLASLt's fp8 GEMM takes) with no scales (ceiling.cu says why), a bf16 output and fp32
// accumulation without fast accumulation (not the layer's 128 x 128 block scales: the dense rate
// with the least scaling work, an upper bound for block-scaled GEMMs); 8192^3 for the tensor-core maths,
// 4096^3 for plain fp32 (some 2 ms a call for bf16 on an H200-class GPU). Timing is left empty.
DenseCeiling dense_ceiling_shape(DType dtype);

// Fills A and B with uniform random values in [-1, 1) (never zeros: the tensor cores' power, and
// with it the clock, depends on the bits they see), then times the GEMM on `stream` as bench times
// the layer: `warmup` untimed calls, then the median of `iterations`. Allocates and frees its
// operands (3 x 128 MiB for bf16, 3 x 256 MiB for tf32, 3 x 64 MiB for fp32; for fp8 2 x 64 MiB
// of E4M3, 128 MiB of bf16 output and 32 MiB of cuBLASLt workspace). Throws CudaError naming the
// cuBLAS(Lt) call and its status when one fails, or when cuBLASLt offers no fp8 algorithm.
DenseCeiling measure_dense_ceiling(DType dtype, int warmup, int iterations, cudaStream_t stream);

// Fills n elements at p (bf16 for DType::bf16 and for fp8, whose x is bf16; float otherwise) with
// uniform values in [-1, 1) from a counter-based generator of (seed, index), on `stream`: fresh
// inputs without a host copy.
void fill_uniform(void* p, std::int64_t n, DType dtype, std::uint64_t seed, cudaStream_t stream);

}  // namespace monomoe::bench
