// Combine role: y[t] = sum over choices j = 0..k-1, in that order, of w[t, j] * stage[t * k + j]
// for the choices that capacity kept, then, with a shared expert, its slices' rows
// shared_stage[t * m + i], i = 0..m-1. A fixed order makes the output bit-identical run to run.
#pragma once

#include "device/epilogue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

// One combine task: p.combine_cols columns (at most kCombineColsMax; split.hpp, combine_cols_for)
// of a token tile. The stage rows it reads are copied into shared memory first (the GEMM buffer,
// idle here) by cp.async, a chunk of token rows at a time, every copy of a chunk in flight at once,
// the next chunk's while this one is summed; the sums read shared memory. (A thread that loaded a
// stage row and added it before loading the next kept one or two loads in flight: the tasks ran at
// ~8 GB/s per SM, latency-bound, and the combine tail after the last GEMM task took ~130 us of the
// default config's ~900; with one chunk at a time a task took ~22 us for its 384 KB, perf log
// 2026-11-30.) The choices' weights and kept flags are read once per task. A dropped choice's row
// is not read (zero-filled, never used).
template <class P>
__device__ void run_combine(const Params& p, KernelSmem<P>& sm, int token_tile, int col_tile) {
  using Elem = typename P::Elem;
  constexpr int kVecElems = 16 / static_cast<int>(sizeof(Elem));  // elements per 16-byte copy
  const Elem* stage = static_cast<const Elem*>(p.stage);
  Elem* y = static_cast<Elem*>(p.y);
  const int first = token_tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  const int col0 = col_tile * p.combine_cols;
  const int cols = min(p.combine_cols, p.hidden - col0);
  const int groups = cols / 8;        // 8-column groups of a row
  const int vecs = cols / kVecElems;  // 16-byte copies of a row
  const int k = p.topk;
  const int m = p.shared_slices;
  const int n = k + m;  // rows summed per token

  // Shared memory: weights [rows][k], kept flags [rows][k], then two buffers of staged rows
  // [chunk][n][cols] (the k choices, then the shared slices): chunk c + 1 is copied in while chunk
  // c is summed and stored.
  constexpr int kHead =
      (kTileRows * kMaxTopK * (static_cast<int>(sizeof(float)) + 1) + 127) / 128 * 128;
  constexpr int kHalf = (static_cast<int>(sizeof(sm.gemm.buffer)) - kHead) / 2 / 128 * 128;
  static_assert(kHalf >= (kMaxTopK + kMaxSharedSlices) * kCombineColsMax *
                             static_cast<int>(sizeof(Elem)),
                "each buffer holds every row of at least one token");
  float* weight = reinterpret_cast<float*>(sm.gemm.buffer);
  unsigned char* kept = reinterpret_cast<unsigned char*>(weight + kTileRows * kMaxTopK);
  const auto staged = [&](int c) {  // the buffer of chunk c
    return reinterpret_cast<Elem*>(sm.gemm.buffer + kHead + (c & 1) * kHalf);
  };
  const int chunk_rows = min(rows, kHalf / (n * cols * static_cast<int>(sizeof(Elem))));
  const int chunks = (rows + chunk_rows - 1) / chunk_rows;

  sync_workers();  // the block's previous task is done with the buffer
  for (int i = threadIdx.x; i < rows * k; i += kThreads) {
    const long long id = static_cast<long long>(first) * k + i;
    kept[i] = __ldcg(p.topk_kept + id) != 0;
    weight[i] = __ldcg(p.topk_weight + id);
  }
  sync_workers();

  const Elem* tile_stage = stage + static_cast<long long>(first) * k * p.hidden + col0;
  const Elem* tile_shared = static_cast<const Elem*>(p.shared_stage) +
                            static_cast<long long>(first) * m * p.hidden + col0;
  // Issues chunk c's copies as one cp.async group (an empty group past the last chunk, so that
  // every iteration below waits for the same count).
  const auto issue = [&](int c) {
    if (c < chunks) {
      const int r0 = c * chunk_rows;
      const int copies = min(chunk_rows, rows - r0) * n * vecs;
      Elem* dst = staged(c);
      // rj = (row - r0) * n + j; with no shared expert n == k, and rj is the choice's index in
      // the tile less r0 * k (the loop without a division by n).
      if (m == 0) {
        for (int i = threadIdx.x; i < copies; i += kThreads) {
          const int rj = i / vecs, v = i - rj * vecs;
          const int ch = r0 * k + rj;
          cp_async_16(dst + rj * cols + v * kVecElems,
                      tile_stage + static_cast<long long>(ch) * p.hidden + v * kVecElems,
                      kept[ch] != 0);
        }
      } else {
        for (int i = threadIdx.x; i < copies; i += kThreads) {
          const int rj = i / vecs, v = i - rj * vecs;
          Elem* to = dst + rj * cols + v * kVecElems;
          const int r = rj / n, j = rj - r * n;
          if (j < k) {
            const int ch = (r0 + r) * k + j;
            cp_async_16(to, tile_stage + static_cast<long long>(ch) * p.hidden + v * kVecElems,
                        kept[ch] != 0);
          } else {
            const long long row = static_cast<long long>(r0 + r) * m + (j - k);
            cp_async_16(to, tile_shared + row * p.hidden + v * kVecElems, true);
          }
        }
      }
    }
    cp_async_commit();
  };
  issue(0);
  issue(1);
  for (int c = 0; c < chunks; ++c) {
    cp_async_wait<1>();  // chunk c landed (this thread's copies; chunk c + 1 may be in flight)
    sync_workers();     // every thread's copies of chunk c
    const int r0 = c * chunk_rows;
    const int chunk = min(chunk_rows, rows - r0);
    const Elem* src = staged(c);
    for (int i = threadIdx.x; i < chunk * groups; i += kThreads) {
      const int r = i / groups, g = i - r * groups;
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      for (int j = 0; j < k; ++j) {
        const int ch = (r0 + r) * k + j;
        if (!kept[ch]) continue;
        const float w = weight[ch];
        float v[8];
        smem_load8(src + (r * n + j) * cols + g * 8, v);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] = fmaf(w, v[q], acc[q]);
      }
      for (int j = k; j < n; ++j) {  // the shared expert's slices, weight 1
        float v[8];
        smem_load8(src + (r * n + j) * cols + g * 8, v);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] += v[q];
      }
      store8(y + static_cast<long long>(first + r0 + r) * p.hidden + col0 + g * 8, acc);
    }
    sync_workers();  // chunk c's buffer read before chunk c + 2 is copied into it
    issue(c + 2);
  }
  cp_async_wait<0>();  // the empty groups
}

}  // namespace monomoe::device
