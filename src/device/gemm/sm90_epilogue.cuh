// Epilogues of the Hopper pipeline, straight from the accumulator registers. wgmma leaves each
// thread pairs of adjacent columns of a few rows; the thread adds the bias, applies the activation
// and stores each pair as one bf16x2 word. Coordinates come from CuTe's partition of an identity
// tensor (`coord`), so no register layout is written out by hand. One assumption is: the gate
// column c of a SwiGLU tile (c < 128) and its up column c + 128 sit in the same thread, half the
// fragment apart (wgmma's column groups of 8 are the fragment's outer mode); the GPU tests check
// SwiGLU against the reference.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>

#include "device/epilogue.cuh"

namespace monomoe::device {

__device__ __forceinline__ float2 load_pair(const cute::bfloat16_t* src) {
  return __bfloat1622float2(__ldg(reinterpret_cast<const __nv_bfloat162*>(src)));
}
__device__ __forceinline__ void store_pair(cute::bfloat16_t* dst, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
}

// GEMM0: out[r, c] = act(acc[r, c] + b1[col_lo + c]) for r < rows, c < out_cols; SwiGLU:
// out[r, c] = silu(acc[r, c] + b1[col_lo + c]) * (acc[r, c + 128] + b1[col_hi + c]), c < 128.
template <Act A, bool kSwiglu, class Elem, class Acc, class Coord>
__device__ __forceinline__ void store_gemm0_regs(const Acc& acc, const Coord& coord, int rows,
                                                 int out_cols, const Elem* b1, int col_lo,
                                                 int col_hi, Elem* out, int ld) {
  constexpr int kN = decltype(cute::size(acc))::value;
  constexpr int kPairs = kSwiglu ? kN / 2 : kN;
  CUTE_UNROLL
  for (int i = 0; i < kPairs; i += 2) {
    const int r = cute::get<0>(coord(i));
    const int c = cute::get<1>(coord(i));
    if (r >= rows || c >= out_cols) continue;
    float2 bg = make_float2(0.f, 0.f);
    if (b1) bg = load_pair(b1 + col_lo + c);
    float v0 = acc(i) + bg.x;
    float v1 = acc(i + 1) + bg.y;
    if constexpr (kSwiglu) {
      float2 bu = make_float2(0.f, 0.f);
      if (b1) bu = load_pair(b1 + col_hi + c);
      v0 = activate(Act::silu, v0) * (acc(i + kN / 2) + bu.x);
      v1 = activate(Act::silu, v1) * (acc(i + kN / 2 + 1) + bu.y);
    } else {
      v0 = activate(A, v0);
      v1 = activate(A, v1);
    }
    store_pair(out + static_cast<long long>(r) * ld + c, v0, v1);
  }
}

// GEMM1: stage[row_id[r], col0 + c] = acc[r, c] + b2[col0 + c] for r < rows, c < out_cols.
template <class Elem, class Acc, class Coord>
__device__ __forceinline__ void store_gemm1_regs(const Acc& acc, const Coord& coord, int rows,
                                                 int out_cols, const int* row_id, const Elem* b2,
                                                 int col0, Elem* stage, int hidden) {
  constexpr int kN = decltype(cute::size(acc))::value;
  CUTE_UNROLL
  for (int i = 0; i < kN; i += 2) {
    const int r = cute::get<0>(coord(i));
    const int c = cute::get<1>(coord(i));
    if (r >= rows || c >= out_cols) continue;
    float2 b = make_float2(0.f, 0.f);
    if (b2) b = load_pair(b2 + col0 + c);
    store_pair(stage + static_cast<long long>(row_id[r]) * hidden + col0 + c, acc(i) + b.x,
               acc(i + 1) + b.y);
  }
}

}  // namespace monomoe::device
