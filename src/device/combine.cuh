// Combine role: y[t] = sum over choices j = 0..k-1, in that order, of w[t, j] * stage[t * k + j]
// for the choices that capacity kept. A fixed order makes the output bit-identical run to run.
#pragma once

#include "device/epilogue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

// One task: 128 tokens x kCombineCols columns. The tile's gate weights go to shared memory first;
// each thread then handles kBatch 8-column groups at a time, so that their stage loads are in
// flight together (one group at a time left the task waiting on one load chain after another).
template <class P>
__device__ void run_combine(const Params& p, TaskSmem& ts, int token_tile, int col_tile) {
  using Elem = typename P::Elem;
  constexpr int kBatch = 4;
  const Elem* stage = static_cast<const Elem*>(p.stage);
  Elem* y = static_cast<Elem*>(p.y);
  const int k = p.topk;
  const int first = token_tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  for (int i = threadIdx.x; i < rows * k; i += kThreads) {
    const int id = first * k + i;
    const bool kept = __ldcg(p.topk_kept + id) != 0;
    ts.combine_kept[i] = kept ? 1 : 0;
    ts.combine_weight[i] = kept ? __ldcg(p.topk_weight + id) : 0.f;
  }
  __syncthreads();
  const int col0 = col_tile * kCombineCols;
  const int groups = min(kCombineCols, p.hidden - col0) / 8;
  const int items = rows * groups;
  for (int i0 = threadIdx.x; i0 < items; i0 += kThreads * kBatch) {
    float acc[kBatch][8];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[u][q] = 0.f;
    }
    for (int j = 0; j < k; ++j) {
      float v[kBatch][8];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = i0 + u * kThreads;
        const int r = i / groups;
        if (i < items && ts.combine_kept[r * k + j]) {
          const long long row = static_cast<long long>(first + r) * k + j;
          load8(stage + row * p.hidden + col0 + (i % groups) * 8, v[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = i0 + u * kThreads;
        const int r = i / groups;
        if (i < items && ts.combine_kept[r * k + j]) {
          const float w = ts.combine_weight[r * k + j];
#pragma unroll
          for (int q = 0; q < 8; ++q) acc[u][q] = fmaf(w, v[u][q], acc[u][q]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * kThreads;
      if (i < items) {
        store8(y + static_cast<long long>(first + i / groups) * p.hidden + col0 + (i % groups) * 8,
               acc[u]);
      }
    }
  }
}

}  // namespace monomoe::device
