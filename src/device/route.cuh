// Routing: turns the gate's per-tile counts into each (token, choice)'s row in its expert's list.
// Rows of one expert appear in ascending token order whatever the block count or timing, so the
// capacity cut (the first `capacity` rows of each expert) and every later sum are deterministic.
#pragma once

#include "device/smem.cuh"
#include "device/sync.cuh"

namespace monomoe::device {

// Phase 2 (after the first grid barrier): for each expert, an exclusive prefix of the per-tile
// counts over token tiles, in place, and the expert's total. One warp per expert, 32 tiles per step
// (a serial loop would pay one L2 round trip per tile).
__device__ __forceinline__ void scan_tile_counts(const Params& p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int warps = static_cast<int>(gridDim.x * blockDim.x) / 32;
  for (int e = warp; e < p.experts; e += warps) {
    int run = 0;
    for (int base = 0; base < p.token_tiles; base += 32) {
      const int tile = base + lane;
      int* c = p.tile_counts + static_cast<long long>(tile) * p.experts + e;
      const int n = tile < p.token_tiles ? __ldcg(c) : 0;
      int incl = n;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += up;
      }
      if (tile < p.token_tiles) *c = run + incl - n;
      run += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) p.expert_count[e] = run;
  }
}

// K slices per expert GEMM task this call (device/split.hpp). `row_tiles`: the row tiles this rank
// computes (alone: every block knows them after routing; with peers: the received tiles, known to
// the subscriber once every header arrived).
__device__ __forceinline__ int plan_k_split(const Params& p, int row_tiles) {
  return k_split_for(row_tiles, p.gemm0_col_tiles, p.gemm1_col_tiles, p.hidden, p.ffn,
                     p.split_target);
}

// Every block: rows kept per expert and the prefix sums that place experts' rows and row tiles.
__device__ __forceinline__ void summarize_routes(const Params& p, RouteSmem& rs) {
  for (int e = threadIdx.x; e < p.experts; e += kThreads) {
    rs.kept[e] = min(__ldcg(p.expert_count + e), p.capacity);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int rows = 0, tiles = 0;
    for (int e = 0; e < p.experts; ++e) {
      rs.row_base[e] = rows;
      rs.tile_base[e] = tiles;
      rows += rs.kept[e];
      tiles += (rs.kept[e] + kTileRows - 1) / kTileRows;
    }
    rs.row_base[p.experts] = rows;
    rs.tile_base[p.experts] = tiles;
    rs.row_tiles = tiles;
    // With peers this rank computes the tiles it receives, which only the subscriber learns
    // (subscribe_ep decides their split; the processors read it from Control).
    rs.k_split = p.world > 1 ? 1 : plan_k_split(p, tiles);
    rs.total_tasks = tiles * (p.gemm0_col_tiles + p.gemm1_col_tiles) * rs.k_split +
                     p.token_tiles * p.combine_col_tiles;
  }
  __syncthreads();
}

// Phase 3: places the choices of one token tile. A choice's position within its expert is the tile's
// prefix plus the number of earlier tokens of the tile that chose the same expert.
__device__ __forceinline__ void scatter_tile(const Params& p, RouteSmem& rs, int tile) {
  const int first = tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  const int k = p.topk;
  for (int i = threadIdx.x; i < rows * k; i += kThreads) {
    rs.choice[i] = __ldcg(p.topk_expert + static_cast<long long>(first) * k + i);
  }
  __shared__ int kept_in_tile;
  if (threadIdx.x == 0) kept_in_tile = 0;
  constexpr int kWords = kTileRows / 32;
  for (int i = threadIdx.x; i < p.experts * kWords; i += kThreads) (&rs.row_mask[0][0])[i] = 0;
  __syncthreads();
  // Which rows chose each expert (a token chooses an expert at most once; the gate skips a given
  // routing's repeats): OR is order-free.
  for (int i = threadIdx.x; i < rows * k; i += kThreads) {
    const int r = i / k;
    const int e = rs.choice[i];
    // An invalid choice (a bad given id, or an out-of-range gate choice: reported as errors) is
    // skipped here.
    if (e >= 0 && e < p.experts) atomicOr(&rs.row_mask[e][r / 32], 1u << (r % 32));
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < rows) {
    const int r = static_cast<int>(threadIdx.x);
    const int t = first + r;
    int kept = 0;
    for (int j = 0; j < k; ++j) {
      const int e = rs.choice[r * k + j];
      if (e < 0 || e >= p.experts) {
        p.topk_kept[t * k + j] = 0;  // skipped like a dropped choice: combine reads no row for it
        continue;
      }
      // Earlier rows of the tile with the same expert: the set bits below r.
      int earlier = __popc(rs.row_mask[e][r / 32] & ((1u << (r % 32)) - 1u));
      for (int w = 0; w < r / 32; ++w) earlier += __popc(rs.row_mask[e][w]);
      const int pos = __ldcg(p.tile_counts + static_cast<long long>(tile) * p.experts + e) + earlier;
      const bool keep = pos < p.capacity;
      if (keep) {
        p.expert_rows[rs.row_base[e] + pos] = t * k + j;
        ++kept;
      } else {
        atomicAdd(p.expert_dropped + e, 1);
      }
      p.topk_kept[t * k + j] = keep ? 1 : 0;
    }
    atomicAdd(&kept_in_tile, kept);
  }
  __syncthreads();
  if (threadIdx.x == 0) p.tokentile_target[tile] = kept_in_tile * p.gemm1_col_tiles;
  __syncthreads();
}

}  // namespace monomoe::device
