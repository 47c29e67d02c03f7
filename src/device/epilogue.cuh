// Epilogues: read the fp32 result tile from shared memory, add the bias, apply the activation (GEMM0)
// and store 8 consecutive columns per thread with 16-byte accesses.
#pragma once

#include <cuda_bf16.h>

#include "device/fp8.cuh"
#include "device/gemm/precision.cuh"
#include "device/gemm/tile_gemm.cuh"  // ld_shared_16

namespace monomoe::device {

__device__ __forceinline__ float activate(Act act, float v) {
  switch (act) {
    case Act::relu: return fmaxf(v, 0.f);
    case Act::gelu: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case Act::silu:
    case Act::swiglu: return v / (1.f + expf(-v));
  }
  return v;
}

__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The activations of the bf16 and tf32 kernels (P::kFastActivations), whose outputs are rounded to
// 8 or 10 mantissa bits: the same functions with fewer instructions. GELU's erf by Abramowitz and
// Stegun's formula 7.1.26 (absolute error <= 1.5e-7 over the reals; ~15 instructions and
// two MUFU against ~28 and one for erff: GEMM0's epilogue at the default config is issue-bound
// by it, docs/hopper-pipeline.md), SiLU's quotient by the hardware reciprocal (relative error
// ~2^-22) instead of an IEEE division. Strict fp32 keeps activate() above. NaN and +-inf map as
// activate() maps them (gelu(-inf) and silu(-inf) are NaN in both).
__device__ __forceinline__ float activate_fast(Act act, float v) {
  switch (act) {
    case Act::relu: return fmaxf(v, 0.f);
    case Act::gelu: {
      const float z = fabsf(v) * 0.70710678118654752f;
      const float t = rcp_approx(fmaf(0.3275911f, z, 1.f));
      const float poly =
          t * fmaf(fmaf(fmaf(fmaf(1.061405429f, t, -1.453152027f), t, 1.421413741f), t,
                        -0.284496736f),
                   t, 0.254829592f);
      const float erf_abs = fmaf(-poly, ex2_approx(-1.4426950408889634f * z * z), 1.f);
      return 0.5f * v * (1.f + copysignf(erf_abs, v));
    }
    case Act::silu:
    case Act::swiglu: return v * rcp_approx(1.f + ex2_approx(-1.4426950408889634f * v));
  }
  return v;
}

// The activation of precision P's epilogues.
template <class P>
__device__ __forceinline__ float activate_for(Act act, float v) {
  return P::kFastActivations ? activate_fast(act, v) : activate(act, v);
}

// 16 bytes holding 8 bf16, as floats.
template <class Raw>
__device__ __forceinline__ void unpack_bf16x8(const Raw& raw, float (&v)[8]) {
  static_assert(sizeof(Raw) == 16, "8 bf16");
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// 8 consecutive elements as floats, from global memory (bias rows, stage rows).
__device__ __forceinline__ void load8(const cute::bfloat16_t* src, float (&v)[8]) {
  unpack_bf16x8(__ldcg(reinterpret_cast<const uint4*>(src)), v);
}
__device__ __forceinline__ void load8(const float* src, float (&v)[8]) {
  const float4 a = __ldcg(reinterpret_cast<const float4*>(src));
  const float4 b = __ldcg(reinterpret_cast<const float4*>(src) + 1);
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

__device__ __forceinline__ void store8(cute::bfloat16_t* dst, const float (&v)[8]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(dst) = raw;
}
__device__ __forceinline__ void store8(float* dst, const float (&v)[8]) {
  reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// 8 consecutive elements of shared memory as floats.
__device__ __forceinline__ void smem_load8(const cute::bfloat16_t* src, float (&v)[8]) {
  unpack_bf16x8(ld_shared_16(src), v);  // one 16-byte ld.shared
}
__device__ __forceinline__ void smem_load8(const float* src, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(src)[0];
  const float4 b = reinterpret_cast<const float4*>(src)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

// One activation over 8 values, chosen at compile time (the epilogues switch once per tile, not
// once per element).
template <class P, Act A>
__device__ __forceinline__ void activate8(float (&v)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = activate_for<P>(A, v[j]);
}

// The GEMM0 epilogue over the rows of this thread, for one activation. With kThreads a multiple of
// the column groups, every thread keeps one column group for all its rows, so its bias values are
// loaded once per tile into registers instead of once per row.
template <class P, Act A, bool kSwiglu>
__device__ __forceinline__ void epilogue_gemm0_rows(const float* c, int pitch, int half, int rows,
                                                    int groups, const typename P::Elem* b1,
                                                    int col0, int col_hi, typename P::Elem* out,
                                                    int out_pitch) {
  const auto bias8 = [&](int col, float (&b)[8]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) b[j] = 0.f;
    if (b1) load8(b1 + col, b);
  };
  const auto one = [&](int r, int cc, const float (&bg)[8], const float (&bu)[8]) {
    float v[8];
    smem_load8(c + r * pitch + cc, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] += bg[j];
    if constexpr (kSwiglu) {
      float u[8];
      smem_load8(c + r * pitch + half + cc, u);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = activate_for<P>(Act::silu, v[j]) * (u[j] + bu[j]);
    } else {
      activate8<P, A>(v);
    }
    if constexpr (P::kRoundToTf32) {
      // tf32: GEMM1 reads these as its shared-memory operand, already rounded to nearest tf32
      // (it rounds only its weights, in registers: tile_gemm.cuh, run_wgmma_rs).
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = rna_tf32(v[j]);
    }
    store8(out + static_cast<long long>(r) * out_pitch + cc, v);
  };
  float bg[8], bu[8];
  if (kThreads % groups == 0) {
    const int cc = (static_cast<int>(threadIdx.x) % groups) * 8;
    bias8(col0 + cc, bg);
    if constexpr (kSwiglu) bias8(col_hi + cc, bu);
    for (int r = static_cast<int>(threadIdx.x) / groups; r < rows; r += kThreads / groups) {
      one(r, cc, bg, bu);
    }
    return;
  }
  for (int i = threadIdx.x; i < rows * groups; i += kThreads) {
    const int cc = (i % groups) * 8;
    bias8(col0 + cc, bg);
    if constexpr (kSwiglu) bias8(col_hi + cc, bu);
    one(i / groups, cc, bg, bu);
  }
}

// GEMM0: out[r, c] = act(C[r, c] + b1[col0 + c]) for c < out_cols; SwiGLU tiles hold the gate half
// in columns [0, half) and the up half in [half, 2 half): out = silu(gate + b1g) * (up + b1u).
template <class P>
__device__ __forceinline__ void epilogue_gemm0(const float* c, int pitch, int half, int rows,
                                               int out_cols,
                                               bool swiglu, Act act, const typename P::Elem* b1,
                                               int col0, int col_hi, typename P::Elem* out,
                                               int out_pitch) {
  const int groups = out_cols / 8;
  if (groups == 0) return;
  if (swiglu) {
    epilogue_gemm0_rows<P, Act::swiglu, true>(c, pitch, half, rows, groups, b1, col0, col_hi, out,
                                              out_pitch);
    return;
  }
  switch (act) {
    case Act::relu:
      epilogue_gemm0_rows<P, Act::relu, false>(c, pitch, half, rows, groups, b1, col0, col_hi, out,
                                               out_pitch);
      break;
    case Act::gelu:
      epilogue_gemm0_rows<P, Act::gelu, false>(c, pitch, half, rows, groups, b1, col0, col_hi, out,
                                               out_pitch);
      break;
    default:
      epilogue_gemm0_rows<P, Act::silu, false>(c, pitch, half, rows, groups, b1, col0, col_hi, out,
                                               out_pitch);
      break;
  }
}

// fp8's GEMM0 (Fp8Tiles): each row's kScaleBlock outputs of the tile are one quantization group of
// the activation (docs/fp8.md). v = act(C[r] + b1[lo...]); SwiGLU: v = silu(G[r] + b1[lo...]) *
// (C[r] + b1[hi...]), G the gate columns' result (gemm0_math). Then, per row, amax = max |v| in
// fp32, q = e4m3(v * (448 / amax)), scale = amax / 448 (1 for zeros, NaN rows stay NaN), exactly
// the reference's rule: h[r] gets the 128 E4M3 bytes at column col0 and the scale at float
// col0 / 128 past its ffn values. 16 threads per row (8 columns each, a half-warp), the amax by
// shuffles within the half-warp.
template <class P, Act A, bool kSwiglu>
__device__ __forceinline__ void epilogue_gemm0_fp8_rows(const float* c, const float* g, int pitch,
                                                        int rows, const typename P::Elem* b1,
                                                        int lo, int hi, unsigned char* h,
                                                        int h_pitch, int ffn, int col0) {
  static_assert(kScaleBlock / 8 == 16 && kThreads % 16 == 0, "16 threads a row");
  const int cc = (static_cast<int>(threadIdx.x) % 16) * 8;
  const unsigned int half_warp = 0xffffu << (threadIdx.x & 16u);
  float bg[8], bu[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) bg[j] = bu[j] = 0.f;
  if (b1) {
    load8(b1 + lo + cc, bg);
    if constexpr (kSwiglu) load8(b1 + hi + cc, bu);
  }
  for (int r = static_cast<int>(threadIdx.x) / 16; r < rows; r += kThreads / 16) {
    float v[8];
    smem_load8(c + r * pitch + cc, v);
    if constexpr (kSwiglu) {
      float gate[8];
      smem_load8(g + r * pitch + cc, gate);
#pragma unroll
      for (int j = 0; j < 8; ++j)
        v[j] = activate_for<P>(Act::silu, gate[j] + bg[j]) * (v[j] + bu[j]);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = activate_for<P>(A, v[j] + bg[j]);
    }
    const Fp8Lane8 out = quantize_lane8(v, half_warp);
    unsigned char* row = h + static_cast<long long>(r) * h_pitch;
    *reinterpret_cast<uint2*>(row + col0 + cc) = out.codes;
    if (cc == 0) reinterpret_cast<float*>(row + ffn)[col0 / kScaleBlock] = fp8_scale(out.amax);
  }
}

template <class P>
__device__ __forceinline__ void epilogue_gemm0_fp8(const float* c, const float* g, int pitch,
                                                   int rows, Act act, const typename P::Elem* b1,
                                                   int lo, int hi, unsigned char* h, int h_pitch,
                                                   int ffn, int col0) {
  switch (act) {
    case Act::swiglu:
      epilogue_gemm0_fp8_rows<P, Act::swiglu, true>(c, g, pitch, rows, b1, lo, hi, h, h_pitch, ffn,
                                                    col0);
      break;
    case Act::relu:
      epilogue_gemm0_fp8_rows<P, Act::relu, false>(c, g, pitch, rows, b1, lo, hi, h, h_pitch, ffn,
                                                   col0);
      break;
    case Act::gelu:
      epilogue_gemm0_fp8_rows<P, Act::gelu, false>(c, g, pitch, rows, b1, lo, hi, h, h_pitch, ffn,
                                                   col0);
      break;
    default:
      epilogue_gemm0_fp8_rows<P, Act::silu, false>(c, g, pitch, rows, b1, lo, hi, h, h_pitch, ffn,
                                                   col0);
      break;
  }
}

// GEMM1: row_out[r][col0 + c] = C[r, c] + b2[col0 + c] for c < cols (row_out[r]: the row's
// (token, choice) row of its stage buffer).
template <class P>
__device__ __forceinline__ void epilogue_gemm1(const float* c, int pitch, int rows, int cols,
                                               void* const* row_out, const typename P::Elem* b2,
                                               int col0) {
  using Elem = typename P::Elem;
  const int groups = cols / 8;
  if (groups == 0) return;
  const auto one = [&](int r, int cc, const float (&b)[8]) {
    float v[8];
    smem_load8(c + r * pitch + cc, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] += b[j];
    store8(static_cast<Elem*>(row_out[r]) + col0 + cc, v);
  };
  float b[8];
  const auto bias8 = [&](int cc) {
#pragma unroll
    for (int j = 0; j < 8; ++j) b[j] = 0.f;
    if (b2) load8(b2 + col0 + cc, b);
  };
  if (kThreads % groups == 0) {  // one column group per thread: its bias loaded once (see GEMM0)
    const int cc = (static_cast<int>(threadIdx.x) % groups) * 8;
    bias8(cc);
    for (int r = static_cast<int>(threadIdx.x) / groups; r < rows; r += kThreads / groups) {
      one(r, cc, b);
    }
    return;
  }
  for (int i = threadIdx.x; i < rows * groups; i += kThreads) {
    const int cc = (i % groups) * 8;
    bias8(cc);
    one(i / groups, cc, b);
  }
}

}  // namespace monomoe::device
