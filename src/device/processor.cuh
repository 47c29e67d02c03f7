// Processor role: runs GEMM tasks. GEMM0 (x * W1 + b1, activation) writes a 128-row tile of the
// activation buffer; the last GEMM0 of a row tile publishes that tile's GEMM1 tasks. GEMM1 (h * W2 +
// b2) writes each row to its (token, choice) slot of the stage buffer (the source rank's, with
// peers); the last contribution to a token tile publishes that tile's combine tasks (with peers, the
// source's subscriber does, from the `done` counters GEMM1 adds to).
// The helpers here say what a task's rows are and what follows a tile; the tile GEMMs themselves
// are TileGemm (cp.async, tf32/fp32) or the Hopper pipeline (processor_ws.cuh, bf16).
#pragma once

#include "device/epilogue.cuh"
#include "device/queue.cuh"
#include "device/smem.cuh"
#include "device/transport.cuh"

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

__device__ __forceinline__ bool valid_recv_tile(const Params& p, int i, const RecvTile& t) {
  return i >= 0 && i < p.max_recv_tiles && t.rows > 0 && t.rows <= kTileRows && t.source >= 0 &&
         t.source < p.world && t.expert_local >= 0 && t.expert_local < p.experts_local;
}

// The rows of GEMM row tile `tile`: on one GPU a tile of the routed rows, with peers a received
// tile (world > 1: recv_tiles, rows from the source's inbox segment or, for this rank's own
// tokens, from x). Its rows are hidden_act rows [hidden_row0, hidden_row0 + rows).
struct TileRows {
  int expert;       // into this rank's weights
  int rows;         // 1..128
  int first;        // first row in expert_rows (local rows) or in the source's inbox segment
  int source;       // rank the rows came from
  int hidden_row0;
};

// False (and a bad_task error) when the task names no tile.
__device__ __forceinline__ bool tile_rows(const Params& p, const RouteSmem& rs, int tile,
                                          TileRows& t) {
  bool ok;
  if (p.world == 1) {
    const RowTile rt = locate_row_tile(p, rs, tile);
    t = {rt.expert, rt.rows, rt.first, 0, rt.first};
    ok = rt.rows > 0 && rt.expert < p.experts;
  } else {
    const RecvTile r = p.recv_tiles[tile];
    t = {r.expert_local, r.rows, r.first, r.source, tile * kTileRows};
    ok = valid_recv_tile(p, tile, r);
  }
  if (!ok && threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, tile, t.rows);
  return ok;
}

__device__ __forceinline__ bool local_rows(const Params& p, const TileRows& t) {
  return p.world == 1 || t.source == p.rank;
}

// Row r (< t.rows) of a GEMM0 tile: the token's row of x, or the row that arrived in the inbox.
template <class Elem>
__device__ __forceinline__ const Elem* gemm0_row(const Params& p, const TileRows& t, int r) {
  if (local_rows(p, t)) {
    const int token = __ldcg(p.expert_rows + t.first + r) / p.topk;
    return static_cast<const Elem*>(p.x) + static_cast<long long>(token) * p.hidden;
  }
  return reinterpret_cast<const Elem*>(p.window + p.wl.inbox) +
         (static_cast<long long>(t.source) * p.wl.rows_per_source + t.first + r) * p.hidden;
}

// Where GEMM1 results of a tile go: this rank's stage buffer, or the source rank's.
template <class Elem>
__device__ __forceinline__ Elem* gemm1_stage(const Params& p, const TileRows& t) {
  if (p.world == 1) return static_cast<Elem*>(p.stage);
  return LsaTransport(p).at<Elem>(p.wl.stage, t.source);
}

// GEMM1: every row's (token, choice) id at its source and its token tile there (-1 past the end),
// into ts (threads < 128).
__device__ __forceinline__ void fill_row_ids(const Params& p, TaskSmem& ts, const TileRows& t) {
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    int id = -1;
    if (r < t.rows) {
      id = local_rows(p, t) ? __ldcg(p.expert_rows + t.first + r)
                            : __ldcg(reinterpret_cast<const int*>(p.window + p.wl.ids) +
                                     static_cast<long long>(t.source) * p.wl.rows_per_source +
                                     t.first + r);
    }
    ts.row_id[r] = id;
    ts.token_tile[r] = id >= 0 ? id / p.topk / kTileRows : -1;
  }
}

// Makes the workers' global writes visible GPU-wide before thread 0 signals a counter.
__device__ __forceinline__ void publish_block_writes() {
  __threadfence();
  sync_workers();
}

// After a GEMM0 tile's stores (all workers call): the last of its row tile publishes the GEMM1s.
__device__ __forceinline__ void finish_gemm0(const Params& p, int tile) {
  publish_block_writes();
  if (threadIdx.x == 0) {
    const int done = atomicAdd(p.rowtile_done + tile, 1) + 1;
    if (done == p.gemm0_col_tiles) {
      __threadfence();  // acquire side of the counter: all GEMM0 tiles of the row tile precede
      push_tasks(p, TaskType::gemm1, tile, 0, p.gemm1_col_tiles);
    }
  }
}

// After a GEMM1 tile's stores (all workers call): one counter update per run of rows that share a
// token tile (rows are in token order). One GPU: the last contribution to a token tile publishes
// its combine tasks. With peers: the source's `done` counter, which its subscriber polls.
__device__ __forceinline__ void finish_gemm1(const Params& p, const TaskSmem& ts, const TileRows& t) {
  if (p.world == 1) {
    publish_block_writes();
  } else {
    __threadfence_system();  // the result rows precede the counter update, also across GPUs
    sync_workers();
  }
  if (static_cast<int>(threadIdx.x) >= t.rows) return;
  const int r = static_cast<int>(threadIdx.x);
  const int tt = ts.token_tile[r];
  if (r > 0 && ts.token_tile[r - 1] == tt) return;
  int len = 1;
  while (r + len < t.rows && ts.token_tile[r + len] == tt) ++len;
  if (p.world > 1) {
    LsaTransport(p).add(p.wl.done + 4ull * tt, t.source, len);
    return;
  }
  const int done = atomicAdd(p.tokentile_done + tt, len) + len;
  if (done == __ldcg(p.tokentile_target + tt)) {
    __threadfence();
    push_tasks(p, TaskType::combine, tt, 0, p.combine_col_tiles);
  }
}

// ---- The cp.async tile GEMM path (tf32, fp32) ----

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
  const Elem* w1 = static_cast<const Elem*>(p.w1) + static_cast<long long>(expert) * p.hidden * w1_cols;
  Gemm::run(sm.gemm, w1, w1_cols, col0, col_hi, valid_lo, valid_hi, p.hidden);

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
  const Elem* w2 = static_cast<const Elem*>(p.w2) + static_cast<long long>(expert) * p.ffn * p.hidden;
  Gemm::run(sm.gemm, w2, p.hidden, col0, col0 + kHalf, min(kHalf, out_cols), max(0, out_cols - kHalf),
            p.ffn);
  const Elem* b2 = p.has_bias ? static_cast<const Elem*>(p.b2) + static_cast<long long>(expert) * p.hidden
                              : nullptr;
  epilogue_gemm1<P>(Gemm::result(sm.gemm), Gemm::kCPitch, rows, out_cols, sm.task.row_id, b2, col0,
                    stage, p.hidden);
}

template <class P>
__device__ void run_gemm0(const Params& p, KernelSmem<P>& sm, int tile, int col_tile) {
  using Elem = typename P::Elem;
  TileRows t;
  if (!tile_rows(p, sm.route, tile, t)) return;
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    sm.gemm.rows[r] = r < t.rows ? gemm0_row<Elem>(p, t, r) : nullptr;
  }
  gemm0_tile<P>(p, sm, t.expert, t.rows, t.hidden_row0, col_tile);
  finish_gemm0(p, tile);
}

template <class P>
__device__ void run_gemm1(const Params& p, KernelSmem<P>& sm, int tile, int col_tile) {
  using Elem = typename P::Elem;
  TileRows t;
  if (!tile_rows(p, sm.route, tile, t)) return;
  fill_row_ids(p, sm.task, t);
  gemm1_tile<P>(p, sm, t.expert, t.rows, t.hidden_row0, col_tile, gemm1_stage<Elem>(p, t));
  finish_gemm1(p, sm.task, t);
}

}  // namespace monomoe::device
