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

// fp8: the groups of x's rows [first, first + rows) whose first channel lies in [k_lo, k_hi),
// quantized into Params::x_quant (values at the group's columns, the scale at float g past the
// row's hidden values). Slices of K that tile [0, hidden) quantize every group exactly once (the
// gate phase's K slices, gate.cuh). The rule (docs/fp8.md): q = e4m3(v * (448 / amax)), scale
// amax / 448; a group of zeros has scale 1; a group holding a NaN is NaN everywhere (fmaxf would
// drop it, so NaN is tracked apart). Throughput-bound, not latency-bound: a half-warp takes a
// group (8 values, one 16-byte load, a lane), and each warp loads kXUnroll pairs of groups before
// it reduces any, so that many loads are in flight. (One group per warp at a time, a load then
// its reductions then the next, was latency-bound: fp8's first task started ~95 us after bf16's,
// and this form took 50 us off; perf log 2026-11-30 18:08, 18:44.)
__device__ __forceinline__ void quantize_x_groups(const Params& p, int first, int rows, int k_lo,
                                                  int k_hi) {
  constexpr int kLanes = kFp8Group / 8;     // lanes per group: 8 bf16 values (16 bytes) a lane
  constexpr int kPerWarp = 32 / kLanes;     // groups a warp quantizes side by side
  constexpr int kXUnroll = 4;               // such pairs loaded before the first is reduced
  constexpr int kStep = kPerWarp * kXUnroll;
  const int g_lo = (k_lo + kFp8Group - 1) / kFp8Group;
  const int groups = (k_hi + kFp8Group - 1) / kFp8Group - g_lo;
  if (groups <= 0) return;
  const int total = rows * groups;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int half = lane / kLanes, j = lane % kLanes;
  const int warps = static_cast<int>(blockDim.x) / 32;
  const auto* x = static_cast<const __nv_bfloat16*>(p.x);
  auto* q = static_cast<unsigned char*>(p.x_quant);
  // Group i of this call: its token row and first channel.
  struct Group {
    long long row;
    int col;
  };
  const auto group_at = [&](int i) {
    return Group{first + i / groups, (g_lo + i % groups) * kFp8Group};
  };
  // (warp-uniform bounds: every lane takes part in the shuffles; a half past the end computes on
  // zeros and stores nothing)
  for (int base = warp * kStep; base < total; base += warps * kStep) {
    uint4 raw[kXUnroll];
#pragma unroll
    for (int u = 0; u < kXUnroll; ++u) {
      const int i = base + u * kPerWarp + half;
      raw[u] = make_uint4(0, 0, 0, 0);
      if (i < total) {
        const Group g = group_at(i);
        raw[u] = __ldg(reinterpret_cast<const uint4*>(x + g.row * p.hidden + g.col) + j);
      }
    }
#pragma unroll
    for (int u = 0; u < kXUnroll; ++u) {
      const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&raw[u]);
      float v[8];
      float amax = 0.f;
      unsigned int nan = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[e] = __bfloat162float(b[e]);
        amax = fmaxf(amax, fabsf(v[e]));
        nan |= isnan(v[e]) ? 1u : 0u;
      }
      // Over the group's kLanes lanes (xor offsets below kLanes stay inside the half-warp).
#pragma unroll
      for (int off = kLanes / 2; off > 0; off >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
        nan |= __shfl_xor_sync(0xffffffffu, nan, off);
      }
      if (nan) amax = __int_as_float(0x7fffffff);  // fmaxf drops NaN
      const float inv = amax == 0.f ? 1.f : kFp8Max / amax;  // IEEE division (no fast math)
      const int i = base + u * kPerWarp + half;
      if (i < total) {
        const Group g = group_at(i);
        unsigned int w[2] = {0, 0};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          w[e / 4] |= static_cast<unsigned int>(to_e4m3(v[e] * inv)) << (8 * (e % 4));
        }
        unsigned char* dst = q + g.row * p.x_pitch;
        reinterpret_cast<uint2*>(dst + g.col)[j] = make_uint2(w[0], w[1]);
        if (j == 0) {
          reinterpret_cast<float*>(dst + p.hidden)[g.col / kFp8Group] =
              amax == 0.f ? 1.f : amax / kFp8Max;
        }
      }
    }
  }
}

}  // namespace monomoe::device
