// DType::fp8 on the device: E4M3 rounding and the per-128-channel quantization of docs/fp8.md, the
// same values as the CPU reference's src/reference/fp8.hpp (tests/test_fp8_gpu.cu compares them):
// x's rows quantized by the gate phase (quantize_x_groups), the activation by GEMM0's epilogue
// (epilogue.cuh, epilogue_gemm0_fp8).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include "device/params.cuh"

namespace monomoe::device {

inline constexpr float kFp8Max = 448.f;        // largest finite E4M3 value
inline constexpr int kFp8Group = kScaleBlock;  // channels per activation scale

// v rounded to nearest E4M3, ties to even, saturated to +-448; NaN stays NaN
// (cvt.rn.satfinite.e4m3x2.f32).
__device__ __forceinline__ __nv_fp8_storage_t to_e4m3(float v) {
  return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float from_e4m3(__nv_fp8_storage_t q) {
  return static_cast<float>(__half(__nv_cvt_fp8_to_halfraw(q, __NV_E4M3)));
}

// One warp quantizes one group of kFp8Group values, kFp8Group / 32 = 4 per lane (v, lane's
// elements 4 lane .. 4 lane + 3): q = e4m3(v * (448 / amax)), returns the group's scale amax / 448
// (1 for a group of zeros; NaN, with every q NaN, when any value is NaN: fmaxf would drop it, so
// NaN is tracked apart). Every lane gets the scale.
__device__ __forceinline__ float quantize_group_warp(const float (&v)[4],
                                                     __nv_fp8_storage_t (&q)[4]) {
  float amax = 0.f;
  bool nan = false;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    amax = fmaxf(amax, fabsf(v[i]));
    nan = nan || isnan(v[i]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (__any_sync(0xffffffffu, nan)) amax = __int_as_float(0x7fffffff);
  const float inv = amax == 0.f ? 1.f : kFp8Max / amax;  // IEEE division (no fast math)
#pragma unroll
  for (int i = 0; i < 4; ++i) q[i] = to_e4m3(v[i] * inv);
  return amax == 0.f ? 1.f : amax / kFp8Max;
}

// fp8: the groups of x's rows [first, first + rows) whose first channel lies in [k_lo, k_hi),
// quantized into Params::x_quant (values at the group's columns, the scale at float g past the
// row's hidden values), one (row, group) per warp of the block. Slices of K that tile [0, hidden)
// quantize every group exactly once (the gate phase's K slices, gate.cuh).
__device__ __forceinline__ void quantize_x_groups(const Params& p, int first, int rows, int k_lo,
                                                  int k_hi) {
  const int g_lo = (k_lo + kFp8Group - 1) / kFp8Group;
  const int groups = (k_hi + kFp8Group - 1) / kFp8Group - g_lo;
  if (groups <= 0) return;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const auto* x = static_cast<const __nv_bfloat16*>(p.x);
  auto* q = static_cast<unsigned char*>(p.x_quant);
  for (int i = warp; i < rows * groups; i += static_cast<int>(blockDim.x) / 32) {
    const long long row = first + i / groups;
    const int col = (g_lo + i % groups) * kFp8Group;
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(x + row * p.hidden + col) + lane);
    const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&raw);
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = __bfloat162float(b[j]);
    __nv_fp8_storage_t out[4];
    const float s = quantize_group_warp(v, out);
    unsigned char* dst = q + row * p.x_pitch;
    reinterpret_cast<unsigned int*>(dst + col)[lane] =
        static_cast<unsigned int>(out[0]) | static_cast<unsigned int>(out[1]) << 8 |
        static_cast<unsigned int>(out[2]) << 16 | static_cast<unsigned int>(out[3]) << 24;
    if (lane == 0) reinterpret_cast<float*>(dst + p.hidden)[col / kFp8Group] = s;
  }
}

}  // namespace monomoe::device
