// Epilogues: read the fp32 result tile from shared memory, add the bias, apply the activation (GEMM0)
// and store 8 consecutive columns per thread with 16-byte accesses.
#pragma once

#include <cuda_bf16.h>

#include "device/gemm/precision.cuh"

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

// 8 consecutive elements as floats, from global memory (bias rows, stage rows).
__device__ __forceinline__ void load8(const cute::bfloat16_t* src, float (&v)[8]) {
  const uint4 raw = __ldcg(reinterpret_cast<const uint4*>(src));
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
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

__device__ __forceinline__ void smem_load8(const float* src, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(src)[0];
  const float4 b = reinterpret_cast<const float4*>(src)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
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
  for (int i = threadIdx.x; i < rows * groups; i += kThreads) {
    const int r = i / groups;
    const int cc = (i % groups) * 8;
    float v[8];
    smem_load8(c + r * pitch + cc, v);
    if (b1) {
      float b[8];
      load8(b1 + col0 + cc, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] += b[j];
    }
    if (swiglu) {
      float u[8];
      smem_load8(c + r * pitch + half + cc, u);
      if (b1) {
        float b[8];
        load8(b1 + col_hi + cc, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) u[j] += b[j];
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = activate(Act::silu, v[j]) * u[j];
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = activate(act, v[j]);
    }
    store8(out + static_cast<long long>(r) * out_pitch + cc, v);
  }
}

// GEMM1: stage[row_id[r], col0 + c] = C[r, c] + b2[col0 + c] for c < cols.
template <class P>
__device__ __forceinline__ void epilogue_gemm1(const float* c, int pitch, int rows, int cols,
                                               const int* row_id, const typename P::Elem* b2,
                                               int col0, typename P::Elem* stage, int hidden) {
  const int groups = cols / 8;
  for (int i = threadIdx.x; i < rows * groups; i += kThreads) {
    const int r = i / groups;
    const int cc = (i % groups) * 8;
    float v[8];
    smem_load8(c + r * pitch + cc, v);
    if (b2) {
      float b[8];
      load8(b2 + col0 + cc, b);
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] += b[j];
    }
    store8(stage + static_cast<long long>(row_id[r]) * hidden + col0 + cc, v);
  }
}

}  // namespace monomoe::device
