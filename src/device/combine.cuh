// Combine role: y[t] = sum over choices j = 0..k-1, in that order, of w[t, j] * stage[t * k + j]
// for the choices that capacity kept. A fixed order makes the output bit-identical run to run.
#pragma once

#include "device/epilogue.cuh"

namespace monomoe::device {

template <class P>
__device__ void run_combine(const Params& p, int token_tile, int col_tile) {
  using Elem = typename P::Elem;
  const Elem* stage = static_cast<const Elem*>(p.stage);
  Elem* y = static_cast<Elem*>(p.y);
  const int first = token_tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  const int col0 = col_tile * kCombineCols;
  const int cols = min(kCombineCols, p.hidden - col0);
  const int groups = cols / 8;
  for (int i = threadIdx.x; i < rows * groups; i += kThreads) {
    const int t = first + i / groups;
    const int col = col0 + (i % groups) * 8;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < p.topk; ++j) {
      const int id = t * p.topk + j;
      if (!__ldcg(p.topk_kept + id)) continue;
      const float w = __ldcg(p.topk_weight + id);
      float v[8];
      load8(stage + static_cast<long long>(id) * p.hidden + col, v);
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[q] = fmaf(w, v[q], acc[q]);
    }
    store8(y + static_cast<long long>(t) * p.hidden + col, acc);
  }
}

}  // namespace monomoe::device
