// Processor role: runs GEMM tasks. GEMM0 (x * W1 + b1, activation) writes a 128-row tile of the
// activation buffer; the last GEMM0 of a row tile publishes that tile's GEMM1 tasks. GEMM1 (h * W2 +
// b2) writes each row to its (token, choice) slot of the stage buffer; the last contribution to a
// token tile publishes that tile's combine tasks. Where a task's rows and weights are: operands.cuh.
#pragma once

#include "device/epilogue.cuh"
#include "device/operands.cuh"
#include "device/queue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

// A task's tile GEMM(s) with the trace on: thread 0 notes when they began and ended
// (TaskSmem::math_start / math_end, recorded per task by the kernel's task loop), so that a task's
// time splits into its start, its MMAs and what follows them (K-split sums, epilogue, publication).
template <class P, class Math>
__device__ __forceinline__ bool traced_math(const Params& p, KernelSmem<P>& sm, Math&& math) {
  const bool traced = p.trace && threadIdx.x == 0;
  if (traced) sm.task.math_start = global_ns();
  const bool ok = math();
  if (traced && ok) sm.task.math_end = global_ns();
  return ok;
}

// GEMM0's epilogue: hidden_act[hidden_row0 + r, cols of col_tile] = act(C[r] + b1) for r < rows.
// fp8: the row's 128 outputs (one group) quantized to E4M3 with their scale (epilogue_gemm0_fp8).
template <class P>
__device__ void gemm0_epilogue(const Params& p, KernelSmem<P>& sm, int expert, int rows,
                               int hidden_row0, int col_tile) {
  using T = ExpertTiles<P>;
  using Gemm = TileGemm<T, T::kExpertBN>;
  using Op = typename T::Elem;
  const Gemm0Cols c = gemm0_cols<P>(p, col_tile);
  const W1Tile<P> w = w1_tile<P>(p, expert, c);
  Op* h = static_cast<Op*>(p.hidden_act) + static_cast<long long>(hidden_row0) * p.h_pitch;
  if constexpr (T::kBlockScaled) {
    const float* gate = p.act == Act::swiglu ? gate_result<P>(sm) : nullptr;
    epilogue_gemm0_fp8<P>(Gemm::result(sm.gemm), gate, Gemm::kCPitch, rows, p.act, w.b1, w.lo, w.hi,
                          reinterpret_cast<unsigned char*>(h), p.h_pitch, p.ffn, c.col0);
  } else {
    epilogue_gemm0<P>(Gemm::result(sm.gemm), Gemm::kCPitch, Gemm::kBN / 2, rows, c.out_cols,
                      p.act == Act::swiglu, p.act, w.b1, w.lo, w.hi, h + c.col0, p.h_pitch);
  }
}

// The tile GEMM(s) of `o` over k_count of K for the tile's `rows` rows, A's rows already in
// sm.gemm.rows: both operands by TMA (kTma, where the kernel can) or by cp.async. The fp32 tile
// is left in shared memory (two passes: the first's moved to gate_result, read by the epilogue;
// with split K, stored and summed beside the other by finish_k_split). False when the launch is
// giving up (a TMA wait timed out or another block aborted): no result.
template <class P, bool kTma>
__device__ bool tile_passes(KernelSmem<P>& sm, const RowsOperands<P>& o, int rows, int k_count) {
  using T = ExpertTiles<P>;
  using Gemm = TileGemm<T, T::kExpertBN>;
#pragma unroll 1
  for (int pass = 0; pass < o.passes; ++pass) {
    if constexpr (T::kBlockScaled) {
      if (pass == 1) {  // (the run's first barrier orders the copy before the stages are refilled)
        constexpr int kFloat4 = kTileRows * Gemm::kCPitch / 4;
        const auto* from = reinterpret_cast<const float4*>(Gemm::result(sm.gemm));
        auto* to = reinterpret_cast<float4*>(gate_result<P>(sm));
        for (int i = threadIdx.x; i < kFloat4; i += kThreads) to[i] = from[i];
      }
    }
    TmaTile t = o.t;
    t.b_scale_lo = pass == 0 ? o.scale_lo0 : o.scale_lo1;
    t.b_scale_hi = pass == 0 ? o.scale_hi0 : o.scale_hi1;
    if (!Gemm::template run<kTma>(sm.gemm, o.b, o.ldb, pass == 0 ? o.lo0 : o.lo1,
                                  pass == 0 ? o.hi0 : o.hi1, o.valid_lo, o.valid_hi, k_count,
                                  rows, t)) {
      return false;
    }
  }
  return true;
}

// tile_passes over A's consecutive rows o.a, ... (set here), by TMA where the kernel can.
template <class P>
__device__ bool rows_tiles(KernelSmem<P>& sm, const RowsOperands<P>& o, int rows, int k_count) {
  using Op = typename ExpertTiles<P>::Elem;
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    set_a_row(sm.gemm, r,
              r < rows ? static_cast<const Op*>(o.a) + static_cast<long long>(r) * o.a_pitch
                       : nullptr,
              o.a_width, o.t.a_k0);
  }
  return tile_passes<P, true>(sm, o, rows, k_count);
}

// GEMM0's MMAs over K range [k_first, k_first + k_count) of a row tile whose A rows the caller
// gathered into sm.gemm.rows (already offset by k_first), by cp.async; traced (traced_math).
template <class P>
__device__ __forceinline__ bool gemm0_math(const Params& p, KernelSmem<P>& sm, int expert, int rows,
                                           int col_tile, int k_first, int k_count) {
  return traced_math(p, sm, [&] {
    return tile_passes<P, false>(sm, gemm0_operands<P>(p, expert, col_tile, k_first), rows,
                                 k_count);
  });
}

// GEMM1's MMAs over K range [k_first, k_first + k_count) of one row tile (A rows hidden_act[
// hidden_row0 + r]); the fp32 tile is left in shared memory. False as gemm0_math.
template <class P>
__device__ bool gemm1_tiles(const Params& p, KernelSmem<P>& sm, int expert, int rows,
                            int hidden_row0, int col_tile, int k_first, int k_count) {
  return rows_tiles<P>(sm, gemm1_operands<P>(p, expert, hidden_row0, col_tile, k_first), rows,
                       k_count);
}

template <class P>
__device__ __forceinline__ bool gemm1_math(const Params& p, KernelSmem<P>& sm, int expert, int rows,
                                           int hidden_row0, int col_tile, int k_first, int k_count) {
  return traced_math(p, sm, [&] {
    return gemm1_tiles<P>(p, sm, expert, rows, hidden_row0, col_tile, k_first, k_count);
  });
}

// GEMM1's epilogue: sm.task.row_out[r][cols of col_tile] = C[r] + b2 for r < rows (set_gemm1_rows;
// a row may go to a peer's stage buffer).
template <class P>
__device__ void gemm1_epilogue(const Params& p, KernelSmem<P>& sm, int expert, int rows,
                               int col_tile) {
  using Elem = typename P::Elem;
  using Gemm = TileGemm<ExpertTiles<P>, P::kExpertBN>;
  const int col0 = col_tile * Gemm::kBN;
  const int out_cols = min(Gemm::kBN, p.hidden - col0);
  // The shared expert's b2 once: with its first slice.
  const Elem* b2 = !p.has_bias                   ? nullptr
                   : expert < p.experts_local    ? static_cast<const Elem*>(p.b2) +
                                                    static_cast<long long>(expert) * p.hidden
                   : expert == p.experts_local   ? static_cast<const Elem*>(p.shared_b2)
                                                 : nullptr;
  epilogue_gemm1<P>(Gemm::result(sm.gemm), Gemm::kCPitch, rows, out_cols, sm.task.row_out, b2,
                    col0);
}

// Split K: this block computed K slice `slice` of task group `group` (row tile x column tile) of
// `phase` (0: GEMM0, 1: GEMM1) into shared memory. Stores it in slot group * slices + slice of the
// phase's partial tiles, and returns true in the one block that finishes the group: the last slice
// to arrive, which then holds the sum of all slices, added in slice order (so the result does not
// depend on which block came last), in shared memory for the epilogue. fp8 SwiGLU's GEMM0 leaves
// a second result, the gate columns' (gate_result; split.hpp, gemm0_results): it is stored and
// summed the same way in its own slots, back where it was, so gemm0_epilogue reads both as after a
// whole-K task.
template <class P>
__device__ bool finish_k_split(const Params& p, KernelSmem<P>& sm, int phase, int group, int slice,
                               int slices, int rows) {
  using T = ExpertTiles<P>;
  using Gemm = TileGemm<T, T::kExpertBN>;
  constexpr int kBN = Gemm::kBN;
  constexpr int kVec = kBN / 4;  // float4 per row
  constexpr long long kTileFloats = static_cast<long long>(kTileRows) * kBN;
  // The plan's bound in slots (split.hpp: k_split_room; the region holds every result's slots,
  // split_partial_tiles), kept honest.
  if (group * slices + slices > p.split_room) {
    if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, group * slices + slice, p.split_room);
    return false;
  }
  // The slots of result `j` of this phase from the group's first on: [slices][128][kBN].
  const auto slots = [&](int j) {
    return reinterpret_cast<float4*>(
        p.split_partial +
        (split_slots_first_tile(phase, j, p.split_room) + static_cast<long long>(group) * slices) *
            kTileFloats);
  };
  // fp8 SwiGLU GEMM0: the gate result too (a compile-time false for the other precisions).
  const bool gate = phase == 0 && gemm0_results(T::kBlockScaled, p.act == Act::swiglu) == 2;
  const auto store = [&](const float* tile, float4* mine) {
    for (int i = threadIdx.x; i < rows * kVec; i += kThreads) {
      const int r = i / kVec, v = i % kVec;
      mine[i] = *reinterpret_cast<const float4*>(tile + r * Gemm::kCPitch + v * 4);
    }
  };
  // Adds the slots in slice order into `tile` ([128][kCPitch] in shared memory).
  const auto sum_into = [&](float* tile, const float4* first) {
    for (int i = threadIdx.x; i < rows * kVec; i += kThreads) {
      float4 sum = __ldcg(first + i);
      for (int s = 1; s < slices; ++s) {
        const float4 v = __ldcg(first + s * (kTileFloats / 4) + i);
        sum.x += v.x;
        sum.y += v.y;
        sum.z += v.z;
        sum.w += v.w;
      }
      const int r = i / kVec, c = i % kVec;
      *reinterpret_cast<float4*>(tile + r * Gemm::kCPitch + c * 4) = sum;
    }
  };
  float* tile = reinterpret_cast<float*>(sm.gemm.buffer);  // [128][kCPitch], Gemm::result
  int* done = p.split_done + phase * kSplitTargetMax;
  store(tile, slots(0) + slice * (kTileFloats / 4));
  if constexpr (T::kBlockScaled) {
    if (gate) store(gate_result<P>(sm), slots(1) + slice * (kTileFloats / 4));
  }
  if (!arrive_last(done + group, slices)) return false;  // every slice's stores precede the reads
  sum_into(tile, slots(0));
  if constexpr (T::kBlockScaled) {
    if (gate) sum_into(gate_result<P>(sm), slots(1));
  }
  sync_workers();
  return true;
}

// The rows of a GEMM task's row tile with no peers: a routed expert's tile (located in the routing
// summary), or past the routed tiles a tile of the shared expert (shared_tile).
struct AloneTile {
  int expert;       // the routed expert, or experts_local + the shared slice
  int rows;         // 1..128 (0: no such tile)
  int hidden_row0;  // its first row of hidden_act
  int first;        // routed: its first row in expert_rows; shared: -1
  int token0;       // shared: its first token (its rows are the tokens from there, in order)
};
__device__ __forceinline__ AloneTile alone_tile(const Params& p, const RouteSmem& rs, int tile) {
  if (tile < rs.row_tiles) {
    const RowTile rt = locate_row_tile(p, rs, tile);
    return {rt.expert, rt.rows, rt.first, rt.first, 0};
  }
  const SharedTile st = shared_tile(p, tile - rs.row_tiles);
  return {p.experts_local + st.slice, st.rows, tile * kTileRows, -1, st.token0};
}

// Where one row of a GEMM1 tile goes: its row of a stage buffer (this rank's own, or a peer's in
// its window), the token there (of the source's tokens) and the source's rank.
struct Gemm1Dest {
  void* row;
  int token;
  int source;
};

// A routed row: (token, choice) id `id` of `source`, whose stage buffer is `stage`.
template <class Elem>
__device__ __forceinline__ Gemm1Dest stage_dest(const Params& p, void* stage, int id, int source) {
  return {static_cast<Elem*>(stage) + static_cast<long long>(id) * p.hidden, id / p.topk, source};
}

// A row of the shared expert's slice `slice` for this rank's token `token`: shared_stage
// [tokens][shared_slices][hidden].
template <class Elem>
__device__ __forceinline__ Gemm1Dest shared_dest(const Params& p, int slice, int token) {
  return {static_cast<Elem*>(p.shared_stage) +
              (static_cast<long long>(token) * p.shared_slices + slice) * p.hidden,
          token, p.rank};
}

// GEMM1's destinations of rows r < rows of a tile, dest(r) each (threads r < 128): row_out,
// token_tile and row_source (past the end: nullptr, -1, 0); then a barrier, before the epilogue and
// the counters read them.
template <class Dest>
__device__ __forceinline__ void set_gemm1_rows(TaskSmem& ts, int rows, Dest&& dest) {
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    void* out = nullptr;
    int tt = -1, source = 0;
    if (r < rows) {
      const Gemm1Dest d = dest(r);
      out = d.row;
      tt = d.token / kTileRows;
      source = d.source;
    }
    ts.row_out[r] = out;
    ts.token_tile[r] = tt;
    ts.row_source[r] = static_cast<unsigned char>(source);
  }
  sync_workers();
}

// Calls count(source, token_tile, rows) once per run of a GEMM1 tile's rows that share a source and
// a token tile (a source's rows are in token order), in the thread of the run's first row: one
// counter update per run.
template <class Count>
__device__ __forceinline__ void for_each_token_tile_run(const TaskSmem& ts, int rows,
                                                        Count&& count) {
  if (static_cast<int>(threadIdx.x) < rows) {
    const int r = static_cast<int>(threadIdx.x);
    const int tt = ts.token_tile[r];
    const int source = ts.row_source[r];
    const auto same = [&](int q) { return ts.token_tile[q] == tt && ts.row_source[q] == source; };
    if (r == 0 || !same(r - 1)) {
      int len = 1;
      while (r + len < rows && same(r + len)) ++len;
      count(source, tt, len);
    }
  }
}

// GEMM task (tile, b) of GEMM0 (second false) or GEMM1: column tile b / k_split, K slice b %
// k_split (k_split == 1: whole K). GEMM0: hidden_act's rows of the tile = act(x W1 + b1); the
// last column tile of a row tile publishes its GEMM1 tasks. GEMM1: each row's slot of the stage
// buffer = h W2 + b2; the last contribution to a token tile publishes its combine tasks. One
// function for both, so that the tile GEMM over consecutive A rows (rows_tiles: GEMM1, and GEMM0
// from x_rows) is inlined once.
template <class P>
__device__ void run_gemm(const Params& p, KernelSmem<P>& sm, bool second, int tile, int b) {
  using Elem = typename P::Elem;
  const AloneTile at = alone_tile(p, sm.route, tile);
  if (at.rows <= 0) {
    if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, tile, at.rows);
    return;
  }
  const int slices = sm.route.k_split;
  const int col_tile = b / slices, slice = b % slices;
  const KSlice ks = k_slice(second ? p.ffn : p.hidden, slice, slices);
  bool ok;
  if (!second && !(at.first >= 0 && gemm0_by_rows(p))) {
    const auto* x = expert_x<P>(p);
    if (threadIdx.x < kTileRows) {
      const int r = static_cast<int>(threadIdx.x);
      const void* src = nullptr;
      if (r < at.rows) {
        const int token =
            at.first >= 0 ? __ldcg(p.expert_rows + at.first + r) / p.topk : at.token0 + r;
        src = x + static_cast<long long>(token) * p.x_pitch;
      }
      set_a_row(sm.gemm, r, src, p.hidden, ks.first);
    }
    ok = gemm0_math<P>(p, sm, at.expert, at.rows, col_tile, ks.first, ks.count);
  } else {
    RowsOperands<P> o;
    if (second) {
      o = gemm1_operands<P>(p, at.expert, at.hidden_row0, col_tile, ks.first);
    } else {
      o = gemm0_operands<P>(p, at.expert, col_tile, ks.first);
      set_rows_a(o, &p.tma_x_rows, p.x_rows, p.x_pitch, p.hidden, at.hidden_row0, ks.first);
    }
    ok = traced_math(p, sm, [&] { return rows_tiles<P>(sm, o, at.rows, ks.count); });
  }
  if (!ok) return;
  const int group = tile * (second ? p.gemm1_col_tiles : p.gemm0_col_tiles) + col_tile;
  if (slices > 1 && !finish_k_split<P>(p, sm, second ? 1 : 0, group, slice, slices, at.rows)) {
    return;  // another slice's block finishes this tile
  }
  if (!second) {
    gemm0_epilogue<P>(p, sm, at.expert, at.rows, at.hidden_row0, col_tile);
    publish_block_writes();
    if (threadIdx.x == 0) {
      const int done = atomicAdd(p.rowtile_done + tile, 1) + 1;
      if (done == p.gemm0_col_tiles) {
        __threadfence();  // acquire side of the counter: all GEMM0 tiles of the row tile precede
        push_tasks(p, sm.route.implicit_tasks, TaskType::gemm1, tile, 0,
                   p.gemm1_col_tiles * slices);
      }
    }
    return;
  }
  set_gemm1_rows(sm.task, at.rows, [&](int r) {
    return at.first >= 0
               ? stage_dest<Elem>(p, p.stage, __ldcg(p.expert_rows + at.first + r), 0)
               : shared_dest<Elem>(p, at.expert - p.experts_local, at.token0 + r);
  });
  gemm1_epilogue<P>(p, sm, at.expert, at.rows, col_tile);

  publish_block_writes();
  for_each_token_tile_run(sm.task, at.rows, [&](int, int tt, int len) {
    const int done = atomicAdd(p.tokentile_done + tt, len) + len;
    if (done == __ldcg(p.tokentile_target + tt)) {
      __threadfence();
      push_tasks(p, sm.route.implicit_tasks, TaskType::combine, tt, 0, p.combine_col_tiles);
    }
  });
}

}  // namespace monomoe::device
