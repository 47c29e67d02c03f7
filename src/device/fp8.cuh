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

// (lo, hi) rounded as to_e4m3 does, in one instruction: lo's code in the low byte.
__device__ __forceinline__ unsigned short to_e4m3x2(float lo, float hi) {
  return __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float from_e4m3(__nv_fp8_storage_t q) {
  return static_cast<float>(__half(__nv_cvt_fp8_to_halfraw(q, __NV_E4M3)));
}

// A 128-channel group held by the 16 lanes of a half-warp (`lanes`, 8 channels a lane, in channel
// order), quantized by the rule of docs/fp8.md: q = e4m3(v * (448 / amax)); a group of zeros has
// scale 1, a group holding a NaN is NaN everywhere. This lane's 8 codes, packed as stored, and the
// group's amax (every lane of the half-warp; fp8_scale gives the scale). The one implementation of
// the rule on the device: x's rows (quantize_x_groups) and GEMM0's output (epilogue.cuh).
struct Fp8Lane8 {
  uint2 codes;
  float amax;
};
__device__ __forceinline__ Fp8Lane8 quantize_lane8(const float (&v)[8], unsigned int lanes) {
  // amax from the magnitudes' bit patterns: for non-negative floats the unsigned order is the
  // float order (inf included), and a NaN's pattern exceeds them all, where fmaxf would drop it.
  unsigned int m = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) m = max(m, __float_as_uint(v[e]) & 0x7fffffffu);
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(lanes, m, off));
  Fp8Lane8 out;
  out.amax = m > 0x7f800000u ? __int_as_float(0x7fffffff) : __uint_as_float(m);
  const float inv = out.amax == 0.f ? 1.f : kFp8Max / out.amax;  // IEEE division (no fast math)
  unsigned int w[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) w[e] = to_e4m3x2(v[2 * e] * inv, v[2 * e + 1] * inv);
  out.codes = make_uint2(w[0] | w[1] << 16, w[2] | w[3] << 16);
  return out;
}

// The scale stored beside a group's codes: amax / 448, 1 for a group of zeros.
__device__ __forceinline__ float fp8_scale(float amax) {
  return amax == 0.f ? 1.f : amax / kFp8Max;
}

// A quantized group in a row laid out as x_quant's (docs/fp8.md): this lane's 8 codes at the
// group's columns (col: its first), and from lane j == 0 the scale at float col / 128 past the
// row's `hidden` values.
__device__ __forceinline__ void store_fp8_group(unsigned char* row, int hidden, int col, int j,
                                                uint2 codes, float scale) {
  reinterpret_cast<uint2*>(row + col)[j] = codes;
  if (j == 0) reinterpret_cast<float*>(row + hidden)[col / kFp8Group] = scale;
}

// fp8: the groups of x's rows [first, first + rows) whose first channel lies in [k_lo, k_hi),
// quantized and handed to store(token, col, j, codes, scale) (lane j of the group's half-warp;
// store_fp8_group puts them in a row). Slices of K that tile [0, hidden) quantize every group
// exactly once (the gate phase's K slices, gate.cuh; the placement's parts, route.cuh). A
// half-warp takes a group (8 values, one 16-byte load, a lane), and each warp loads kXUnroll
// pairs of groups before it reduces any, so that many loads are in
// flight (one group per warp at a time was latency-bound: perf log 2026-11-30 18:08, 18:44). The
// groups' (row, column) advance by additions: a division per group, and a separate NaN flag and
// its shuffles, made this loop ~850 instructions a warp per 8 groups and kept x's quantization at
// ~45 us (issue-bound: ncu's stalls were fixed-latency waits, not loads; perf log 2026-11-30
// 22:17).
template <class Store>
__device__ __forceinline__ void quantize_x_groups_to(const Params& p, int first, int rows, int k_lo,
                                                     int k_hi, Store&& store) {
  constexpr int kLanes = kFp8Group / 8;  // lanes per group: 8 bf16 values (16 bytes) a lane
  constexpr int kPerWarp = 32 / kLanes;  // groups a warp quantizes side by side
  constexpr int kXUnroll = 4;            // such pairs loaded before the first is reduced
  constexpr int kStep = kPerWarp * kXUnroll;
  static_assert(kLanes == 16, "quantize_lane8: a group on a half-warp");
  const int g_lo = (k_lo + kFp8Group - 1) / kFp8Group;
  const int groups = (k_hi + kFp8Group - 1) / kFp8Group - g_lo;
  if (groups <= 0) return;
  const int total = rows * groups;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int half = lane / kLanes, j = lane % kLanes;
  // The block's warps: fp8's kernel has no producer warpgroup (PrecFp8::kProducer), and the unit
  // tests run this with smaller blocks.
  const int warps = static_cast<int>(blockDim.x) / 32;
  const auto* x = static_cast<const __nv_bfloat16*>(p.x);
  // Group i of this call lies in row i / groups, group i % groups of the slice; this lane's first
  // is i = warp * kStep + half, and each iteration moves it on by `step` groups.
  const int step = warps * kStep;
  const int step_rows = step / groups, step_groups = step % groups;
  int row0 = (warp * kStep + half) / groups, grp0 = (warp * kStep + half) % groups;
  // (warp-uniform bounds: every lane takes part in the shuffles; a half past the end computes on
  // zeros and stores nothing)
  for (int base = warp * kStep; base < total; base += step) {
    int row[kXUnroll], col[kXUnroll];
    {
      int r = row0, g = grp0;
#pragma unroll
      for (int u = 0; u < kXUnroll; ++u) {
        row[u] = first + r;
        col[u] = (g_lo + g) * kFp8Group;
        g += kPerWarp;
        while (g >= groups) {
          g -= groups;
          ++r;
        }
      }
    }
    uint4 raw[kXUnroll];
#pragma unroll
    for (int u = 0; u < kXUnroll; ++u) {
      raw[u] = make_uint4(0, 0, 0, 0);
      if (base + u * kPerWarp + half < total) {
        raw[u] = __ldg(
            reinterpret_cast<const uint4*>(x + static_cast<long long>(row[u]) * p.hidden + col[u]) +
            j);
      }
    }
#pragma unroll
    for (int u = 0; u < kXUnroll; ++u) {
      const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&raw[u]);
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = __bfloat162float(b[e]);
      const Fp8Lane8 out = quantize_lane8(v, 0xffffffffu);  // (xor offsets < 16: within the half)
      if (base + u * kPerWarp + half < total) {
        store(row[u], col[u], j, out.codes, fp8_scale(out.amax));
      }
    }
    row0 += step_rows;
    grp0 += step_groups;
    if (grp0 >= groups) {
      grp0 -= groups;
      ++row0;
    }
  }
}

// quantize_x_groups_to into Params::x_quant, row by token.
__device__ __forceinline__ void quantize_x_groups(const Params& p, int first, int rows, int k_lo,
                                                  int k_hi) {
  auto* q = static_cast<unsigned char*>(p.x_quant);
  quantize_x_groups_to(p, first, rows, k_lo, k_hi,
                       [&](int t, int col, int j, uint2 codes, float scale) {
                         store_fp8_group(q + static_cast<long long>(t) * p.x_pitch, p.hidden, col,
                                         j, codes, scale);
                       });
}

}  // namespace monomoe::device
