// Combine role: y[t] = sum over choices j = 0..k-1, in that order, of w[t, j] * stage[t * k + j]
// for the choices that capacity kept. A fixed order makes the output bit-identical run to run.
#pragma once

#include "device/epilogue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

// One combine task: `kCombineCols` columns of a token tile. The stage rows it reads are copied
// into shared memory first (the GEMM buffer, idle here) by cp.async, a chunk of token rows at a
// time, every copy of a chunk in flight at once; the sums then read shared memory. (A thread that
// loaded a stage row and added it before loading the next kept one or two loads in flight: the
// tasks ran at ~8 GB/s per SM, latency-bound, and the combine tail after the last GEMM task took
// ~130 us of the default config's ~900.) The choices' weights and kept flags are read once per
// task. A dropped choice's row is not read (zero-filled, never used).
template <class P>
__device__ void run_combine(const Params& p, KernelSmem<P>& sm, int token_tile, int col_tile) {
  using Elem = typename P::Elem;
  constexpr int kVecElems = 16 / static_cast<int>(sizeof(Elem));  // elements per 16-byte copy
  const Elem* stage = static_cast<const Elem*>(p.stage);
  Elem* y = static_cast<Elem*>(p.y);
  const int first = token_tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  const int col0 = col_tile * kCombineCols;
  const int cols = min(kCombineCols, p.hidden - col0);
  const int groups = cols / 8;        // 8-column groups of a row
  const int vecs = cols / kVecElems;  // 16-byte copies of a row
  const int k = p.topk;

  // Shared memory: weights [rows][k], kept flags [rows][k], then the staged rows [chunk][k][cols].
  constexpr int kHead =
      (kTileRows * kMaxTopK * (static_cast<int>(sizeof(float)) + 1) + 127) / 128 * 128;
  constexpr int kRoom = static_cast<int>(sizeof(sm.gemm.buffer)) - kHead;
  static_assert(kRoom >= kMaxTopK * kCombineCols * static_cast<int>(sizeof(Elem)),
                "the buffer holds every choice of at least one token row");
  float* weight = reinterpret_cast<float*>(sm.gemm.buffer);
  unsigned char* kept = reinterpret_cast<unsigned char*>(weight + kTileRows * kMaxTopK);
  Elem* staged = reinterpret_cast<Elem*>(sm.gemm.buffer + kHead);
  const int chunk_rows = min(rows, kRoom / (k * cols * static_cast<int>(sizeof(Elem))));

  __syncthreads();  // the block's previous task is done with the buffer
  for (int i = threadIdx.x; i < rows * k; i += kThreads) {
    const long long id = static_cast<long long>(first) * k + i;
    kept[i] = __ldcg(p.topk_kept + id) != 0;
    weight[i] = __ldcg(p.topk_weight + id);
  }
  __syncthreads();

  const Elem* tile_stage = stage + static_cast<long long>(first) * k * p.hidden + col0;
  for (int r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int chunk = min(chunk_rows, rows - r0);
    const int copies = chunk * k * vecs;
    for (int i = threadIdx.x; i < copies; i += kThreads) {
      const int rj = i / vecs, v = i - rj * vecs;  // rj = (row - r0) * k + choice
      const int c = r0 * k + rj;                   // the choice's index in the tile
      cp_async_16(staged + rj * cols + v * kVecElems,
                  tile_stage + static_cast<long long>(c) * p.hidden + v * kVecElems, kept[c] != 0);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();  // the chunk staged
    for (int i = threadIdx.x; i < chunk * groups; i += kThreads) {
      const int r = i / groups, g = i - r * groups;
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int j = 0; j < k; ++j) {
        const int c = (r0 + r) * k + j;
        if (!kept[c]) continue;
        const float w = weight[c];
        float v[8];
        smem_load8(staged + (r * k + j) * cols + g * 8, v);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] = fmaf(w, v[q], acc[q]);
      }
      store8(y + static_cast<long long>(first + r0 + r) * p.hidden + col0 + g * 8, acc);
    }
    __syncthreads();  // the chunk's rows read before the next chunk is copied in
  }
}

}  // namespace monomoe::device
