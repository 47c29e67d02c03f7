// Processor role: runs GEMM tasks. GEMM0 (x * W1 + b1, activation) writes a 128-row tile of the
// activation buffer; the last GEMM0 of a row tile publishes that tile's GEMM1 tasks. GEMM1 (h * W2 +
// b2) writes each row to its (token, choice) slot of the stage buffer; the last contribution to a
// token tile publishes that tile's combine tasks.
#pragma once

#include "device/epilogue.cuh"
#include "device/queue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

struct RowTile {
  int expert;  // global expert id
  int first;   // first row of the tile in expert_rows / hidden_act
  int rows;    // valid rows, 1..128
};

__device__ __forceinline__ RowTile locate_row_tile(const Params& p, const RouteSmem& rs, int tile) {
  int lo = 0, hi = p.experts;  // largest e with tile_base[e] <= tile; empty experts share a base
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (rs.tile_base[mid] <= tile) lo = mid; else hi = mid;
  }
  const int m = tile - rs.tile_base[lo];
  RowTile rt;
  rt.expert = lo;
  rt.first = rs.row_base[lo] + m * kTileRows;
  rt.rows = min(kTileRows, rs.kept[lo] - m * kTileRows);
  return rt;
}

// Makes this block's global writes visible GPU-wide before thread 0 signals a counter.
__device__ __forceinline__ void publish_block_writes() {
  __threadfence();
  __syncthreads();
}

// GEMM0 of one row tile: hidden_act[hidden_row0 + r, cols of col_tile] = act(A[r] * W1[expert]
// + b1) for r < rows, A rows from sm.gemm.rows (filled by the caller).
template <class P>
__device__ void gemm0_tile(const Params& p, KernelSmem<P>& sm, int expert, int rows,
                           int hidden_row0, int col_tile) {
  using Elem = typename P::Elem;
  using Gemm = TileGemm<P, P::kExpertBN>;
  constexpr int kHalf = Gemm::kBN / 2;
  const bool swiglu = p.act == Act::swiglu;
  const int w1_cols = swiglu ? 2 * p.ffn : p.ffn;
  // SwiGLU: kHalf gate columns (col0...) and the matching kHalf up columns (ffn + col0...) make
  // kHalf outputs. Otherwise kBN consecutive columns, fewer in the last tile.
  const int col0 = col_tile * (swiglu ? kHalf : Gemm::kBN);
  const int col_hi = swiglu ? p.ffn + col0 : col0 + kHalf;
  const int out_cols = swiglu ? kHalf : min(Gemm::kBN, p.ffn - col0);
  const int valid_lo = min(kHalf, out_cols);
  const int valid_hi = swiglu ? kHalf : max(0, out_cols - kHalf);
  // W1 of an expert: [hidden, w1_cols], or [w1_cols, hidden] for [out, in] weights.
  const Elem* w1 = static_cast<const Elem*>(p.w1) + static_cast<long long>(expert) * p.hidden * w1_cols;
  Gemm::run(sm.gemm, w1, P::kWeightsKMajor ? p.hidden : w1_cols, col0, col_hi, valid_lo, valid_hi,
            p.hidden);

  const Elem* b1 = p.has_bias ? static_cast<const Elem*>(p.b1) + static_cast<long long>(expert) * w1_cols
                              : nullptr;
  Elem* h = static_cast<Elem*>(p.hidden_act);
  epilogue_gemm0<P>(Gemm::result(sm.gemm), Gemm::kCPitch, kHalf, rows, out_cols, swiglu, p.act,
                    b1, col0, col_hi, h + static_cast<long long>(hidden_row0) * p.ffn + col0, p.ffn);
}

// GEMM1 of one row tile: stage[sm.task.row_id[r], cols of col_tile] = hidden_act[hidden_row0 + r]
// * W2[expert] + b2 for r < rows. `stage` may be a peer's buffer.
template <class P>
__device__ void gemm1_tile(const Params& p, KernelSmem<P>& sm, int expert, int rows,
                           int hidden_row0, int col_tile, typename P::Elem* stage) {
  using Elem = typename P::Elem;
  using Gemm = TileGemm<P, P::kExpertBN>;
  constexpr int kHalf = Gemm::kBN / 2;
  const Elem* h = static_cast<const Elem*>(p.hidden_act);
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    sm.gemm.rows[r] = r < rows ? h + static_cast<long long>(hidden_row0 + r) * p.ffn : nullptr;
  }
  const int col0 = col_tile * Gemm::kBN;
  const int out_cols = min(Gemm::kBN, p.hidden - col0);
  // W2 of an expert: [ffn, hidden], or [hidden, ffn] for [out, in] weights.
  const Elem* w2 = static_cast<const Elem*>(p.w2) + static_cast<long long>(expert) * p.ffn * p.hidden;
  Gemm::run(sm.gemm, w2, P::kWeightsKMajor ? p.ffn : p.hidden, col0, col0 + kHalf,
            min(kHalf, out_cols), max(0, out_cols - kHalf), p.ffn);
  const Elem* b2 = p.has_bias ? static_cast<const Elem*>(p.b2) + static_cast<long long>(expert) * p.hidden
                              : nullptr;
  epilogue_gemm1<P>(Gemm::result(sm.gemm), Gemm::kCPitch, rows, out_cols, sm.task.row_id, b2, col0,
                    stage, p.hidden);
}

template <class P>
__device__ void run_gemm0(const Params& p, KernelSmem<P>& sm, int tile, int col_tile) {
  using Elem = typename P::Elem;
  const RowTile rt = locate_row_tile(p, sm.route, tile);
  if (rt.rows <= 0 || rt.expert >= p.experts) {
    if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, tile, rt.rows);
    return;
  }
  const Elem* x = static_cast<const Elem*>(p.x);
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    const Elem* src = nullptr;
    if (r < rt.rows) {
      const int token = __ldcg(p.expert_rows + rt.first + r) / p.topk;
      src = x + static_cast<long long>(token) * p.hidden;
    }
    sm.gemm.rows[r] = src;
  }
  gemm0_tile<P>(p, sm, rt.expert, rt.rows, rt.first, col_tile);

  publish_block_writes();
  if (threadIdx.x == 0) {
    const int done = atomicAdd(p.rowtile_done + tile, 1) + 1;
    if (done == p.gemm0_col_tiles) {
      __threadfence();  // acquire side of the counter: all GEMM0 tiles of the row tile precede
      push_tasks(p, TaskType::gemm1, tile, 0, p.gemm1_col_tiles);
    }
  }
}

template <class P>
__device__ void run_gemm1(const Params& p, KernelSmem<P>& sm, int tile, int col_tile) {
  using Elem = typename P::Elem;
  const RowTile rt = locate_row_tile(p, sm.route, tile);
  if (rt.rows <= 0 || rt.expert >= p.experts) {
    if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, tile, rt.rows);
    return;
  }
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    const bool valid = r < rt.rows;
    const int id = valid ? __ldcg(p.expert_rows + rt.first + r) : -1;
    sm.task.row_id[r] = id;
    sm.task.token_tile[r] = valid ? id / p.topk / kTileRows : -1;
  }
  gemm1_tile<P>(p, sm, rt.expert, rt.rows, rt.first, col_tile, static_cast<Elem*>(p.stage));

  publish_block_writes();
  // One counter update per run of rows that share a token tile (rows are in token order).
  if (static_cast<int>(threadIdx.x) < rt.rows) {
    const int r = static_cast<int>(threadIdx.x);
    const int tt = sm.task.token_tile[r];
    if (r == 0 || sm.task.token_tile[r - 1] != tt) {
      int len = 1;
      while (r + len < rt.rows && sm.task.token_tile[r + len] == tt) ++len;
      const int done = atomicAdd(p.tokentile_done + tt, len) + len;
      if (done == __ldcg(p.tokentile_target + tt)) {
        __threadfence();
        push_tasks(p, TaskType::combine, tt, 0, p.combine_col_tiles);
      }
    }
  }
}

}  // namespace monomoe::device
