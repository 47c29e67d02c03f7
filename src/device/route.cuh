// Routing: turns the gate's per-tile counts into each (token, choice)'s row in its expert's list.
// Rows of one expert appear in ascending token order whatever the block count or timing, so the
// capacity cut (the first `capacity` rows of each expert) and every later sum are deterministic.
#pragma once

#include "device/fp8.cuh"
#include "device/gemm/precision.cuh"  // rna_tf32
#include "device/smem.cuh"
#include "device/sync.cuh"

namespace monomoe::device {

// Phase 2 (after the first grid barrier): for each expert, an exclusive prefix of the per-tile
// counts over token tiles, in place, and the expert's total. One warp per expert, 32 tiles per step
// (a serial loop would pay one L2 round trip per tile).
__device__ __forceinline__ void scan_tile_counts(const Params& p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  // Worker warps only (kThreads, not blockDim: a producer warpgroup never runs this).
  const int warp = static_cast<int>(blockIdx.x * kThreads + threadIdx.x) / 32;
  const int warps = static_cast<int>(gridDim.x) * kThreads / 32;
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

// From the rows each expert keeps (rs.kept, written by the caller): the prefix sums that place
// experts' rows and row tiles, the totals, the K split and the task count. Warp 0, kMaxExperts / 32
// consecutive experts per lane and one warp scan (one thread over the experts had taken a shared
// memory round trip per expert in every block: ~1 us at 64 experts).
__device__ __forceinline__ void summarize_kept(const Params& p, RouteSmem& rs) {
  sync_workers();  // rs.kept complete
  if (threadIdx.x < 32) {
    constexpr int kPerLane = kMaxExperts / 32;
    const int lane = static_cast<int>(threadIdx.x);
    const int e0 = lane * kPerLane;
    const auto tiles_of = [](int rows) { return (rows + kTileRows - 1) / kTileRows; };
    int rows = 0, tiles = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int kept = e0 + j < p.experts ? rs.kept[e0 + j] : 0;
      rows += kept;
      tiles += tiles_of(kept);
    }
    int rows_incl = rows, tiles_incl = tiles;  // inclusive prefix over lanes
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int r = __shfl_up_sync(0xffffffffu, rows_incl, off);
      const int t = __shfl_up_sync(0xffffffffu, tiles_incl, off);
      if (lane >= off) {
        rows_incl += r;
        tiles_incl += t;
      }
    }
    int row_at = rows_incl - rows, tile_at = tiles_incl - tiles;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = e0 + j;
      if (e < p.experts) {
        rs.row_base[e] = row_at;
        rs.tile_base[e] = tile_at;
        row_at += rs.kept[e];
        tile_at += tiles_of(rs.kept[e]);
      }
    }
    if (lane == 31) {  // its inclusive prefix is the total
      rs.row_base[p.experts] = rows_incl;
      rs.tile_base[p.experts] = tiles_incl;
      rs.row_tiles = tiles_incl;
      // With peers this rank computes the tiles it receives, which only the subscriber learns
      // (subscribe_ep decides their split; the processors read it from Control). The shared
      // expert's tiles follow the routed ones (operands.cuh, shared_tile).
      const int tiles = tiles_incl + shared_tiles(p);
      rs.k_split = p.world > 1 ? 1 : plan_k_split(p, tiles);
      rs.total_tasks = tiles * (p.gemm0_col_tiles + p.gemm1_col_tiles) * rs.k_split +
                       p.token_tiles * p.combine_col_tiles;
      rs.implicit_tasks = p.world > 1 ? 0 : tiles * p.gemm0_col_tiles * rs.k_split;
    }
  }
  sync_workers();
}

// Every block: rows kept per expert and the prefix sums that place experts' rows and row tiles.
__device__ __forceinline__ void summarize_routes(const Params& p, RouteSmem& rs) {
  for (int e = threadIdx.x; e < p.experts; e += kThreads) {
    rs.kept[e] = min(__ldcg(p.expert_count + e), p.capacity);
  }
  summarize_kept(p, rs);
}

// Phase 3: places the choices of one token tile. A choice's position within its expert is the tile's
// prefix plus the number of earlier tokens of the tile that chose the same expert. Leaves each
// choice's row in expert_rows (-1: none) in rs.choice[r * k + j] for fill_x_rows. Part `part` of
// `parts` blocks that share the tile (fill_x_rows): part 0 alone writes the placement, every part
// computes it.
__device__ __forceinline__ void scatter_tile(const Params& p, RouteSmem& rs, int tile,
                                             int part = 0) {
  const int first = tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  const int k = p.topk;
  const bool place = part == 0;
  for (int i = threadIdx.x; i < rows * k; i += kThreads) {
    rs.choice[i] = __ldcg(p.topk_expert + static_cast<long long>(first) * k + i);
  }
  // The tile's first position in each expert, loaded at once (tile 0's exclusive prefix is 0).
  for (int e = threadIdx.x; e < p.experts; e += kThreads) {
    rs.tile_prefix[e] =
        tile == 0 ? 0 : __ldcg(p.tile_counts + static_cast<long long>(tile) * p.experts + e);
  }
  __shared__ int kept_in_tile;
  if (threadIdx.x == 0) kept_in_tile = 0;
  constexpr int kWords = kTileRows / 32;
  for (int i = threadIdx.x; i < p.experts * kWords; i += kThreads) (&rs.row_mask[0][0])[i] = 0;
  sync_workers();
  // Which rows chose each expert (a token chooses an expert at most once; the gate skips a given
  // routing's repeats): OR is order-free.
  for (int i = threadIdx.x; i < rows * k; i += kThreads) {
    const int r = i / k;
    const int e = rs.choice[i];
    // An invalid choice (a bad given id, or an out-of-range gate choice: reported as errors) is
    // skipped here.
    if (e >= 0 && e < p.experts) atomicOr(&rs.row_mask[e][r / 32], 1u << (r % 32));
  }
  sync_workers();
  if (static_cast<int>(threadIdx.x) < rows) {
    const int r = static_cast<int>(threadIdx.x);
    const int t = first + r;
    int kept = 0;
    for (int j = 0; j < k; ++j) {
      const int e = rs.choice[r * k + j];
      rs.choice[r * k + j] = -1;  // from here: the choice's row in expert_rows, -1 when none
      if (e < 0 || e >= p.experts) {
        if (place) p.topk_kept[t * k + j] = 0;  // skipped like a dropped choice: no row for it
        continue;
      }
      // Earlier rows of the tile with the same expert: the set bits below r.
      int earlier = __popc(rs.row_mask[e][r / 32] & ((1u << (r % 32)) - 1u));
      for (int w = 0; w < r / 32; ++w) earlier += __popc(rs.row_mask[e][w]);
      const int pos = rs.tile_prefix[e] + earlier;
      const bool keep = pos < p.capacity;
      if (keep) {
        rs.choice[r * k + j] = rs.row_base[e] + pos;
        if (place) p.expert_rows[rs.row_base[e] + pos] = t * k + j;
        ++kept;
      } else if (place) {
        atomicAdd(p.expert_dropped + e, 1);
      }
      if (place) p.topk_kept[t * k + j] = keep ? 1 : 0;
    }
    if (place) atomicAdd(&kept_in_tile, kept);
  }
  sync_workers();
  // The tile's rows: the kept choices, and each token once per shared slice.
  if (place && threadIdx.x == 0) {
    p.tokentile_target[tile] = (kept_in_tile + rows * p.shared_slices) * p.gemm1_col_tiles;
  }
  sync_workers();
}

// Params::x_rows (gemm0_by_rows): each kept choice's row of the expert GEMMs' x, its part `part` of
// `parts` (whole 16-byte pieces; fp8: whole groups), once scatter_tile has left the tile's rows in
// rs.choice; fenced to the async proxy (GEMM0 reads the rows by TMA after the grid barrier that
// follows). kQuantize (fp8): x's groups quantized here straight into each choice's row (and into
// x_quant when the shared expert's tiles, which gather, are in the call), which the gate phase
// then leaves alone (gate.cuh). Otherwise x's rows (row_bytes each) copied, kRound (tf32): each
// float rounded to nearest tf32 on the way, as the gathered tiles round their tokens in shared
// memory (TMA'd tokens reach the MMAs as they are).
template <bool kQuantize, bool kRound>
__device__ __forceinline__ void fill_x_rows(const Params& p, const RouteSmem& rs, int tile,
                                            int part, int parts, int row_bytes) {
  const int first = tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  const int k = p.topk;
  auto* dst = static_cast<unsigned char*>(p.x_rows);
  if constexpr (kQuantize) {
    const int groups = p.hidden / kFp8Group;
    const int g_lo = groups * part / parts, g_hi = groups * (part + 1) / parts;
    auto* xq = p.shared_slices > 0 ? static_cast<unsigned char*>(p.x_quant) : nullptr;
    quantize_x_groups_to(p, first, rows, g_lo * kFp8Group, g_hi * kFp8Group,
                         [&](int t, int col, int j, uint2 codes, float scale) {
                           const int r = t - first;
                           for (int c = 0; c < k; ++c) {
                             const int q = rs.choice[r * k + c];
                             if (q < 0) continue;
                             store_fp8_group(dst + static_cast<long long>(q) * p.x_pitch, p.hidden,
                                             col, j, codes, scale);
                           }
                           if (xq) {
                             store_fp8_group(xq + static_cast<long long>(t) * p.x_pitch, p.hidden,
                                             col, j, codes, scale);
                           }
                         });
  } else {
    // Pieces lo .. lo + width - 1 (16 bytes each) of the tile's rows, consecutive threads on
    // consecutive pieces, each read once and stored to each kept choice's row; kBatch reads in
    // flight per thread before its stores (a loop that stored before its next read waited out a
    // read's latency per piece: ~50 us for bf16's default config, perf log 2026-11-30 23:48).
    // 16 rather than 8: tf32 out-in 1.866 -> 1.805 ms (perf log 2026-12-01 01:40).
    constexpr int kBatch = 16;
    const auto* src = static_cast<const unsigned char*>(p.x);
    const int pieces = row_bytes / 16;
    const int lo = pieces * part / parts, width = pieces * (part + 1) / parts - lo;
    const int total = rows * width;
    for (int base = static_cast<int>(threadIdx.x); base < total; base += kThreads * kBatch) {
      uint4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = base + u * kThreads;
        if (i < total) {
          const int r = i / width, c = lo + i % width;
          v[u] = __ldg(reinterpret_cast<const uint4*>(
                           src + static_cast<long long>(first + r) * row_bytes) + c);
          if constexpr (kRound) {
            const float4 f = rna_tf32(
                make_float4(__uint_as_float(v[u].x), __uint_as_float(v[u].y),
                            __uint_as_float(v[u].z), __uint_as_float(v[u].w)));
            v[u] = make_uint4(__float_as_uint(f.x), __float_as_uint(f.y), __float_as_uint(f.z),
                              __float_as_uint(f.w));
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int i = base + u * kThreads;
        if (i < total) {
          const int r = i / width, c = lo + i % width;
          for (int j = 0; j < k; ++j) {
            const int q = rs.choice[r * k + j];
            if (q >= 0) {
              reinterpret_cast<uint4*>(dst + static_cast<long long>(q) * row_bytes)[c] = v[u];
            }
          }
        }
      }
    }
  }
  asm volatile("fence.proxy.async.global;" ::: "memory");
  sync_workers();  // rs.choice is the next scatter_tile's
}

// Route alone (Params::route_alone), in the block that routed the call's last token tile, whose
// counts it still holds in rs.count (any value with no tile): what scan_tile_counts,
// summarize_routes and scatter_tile do between grid barriers, here for the call's few tiles in one
// block. Each expert's prefix over the tiles is one thread's (every tile's count loaded at once),
// then the summary, then every tile's placement in tile order.
__device__ __forceinline__ void place_every_tile(const Params& p, RouteSmem& rs, int own_tile) {
  for (int e = threadIdx.x; e < p.experts; e += kThreads) {
    int n[kRouteAloneTiles];
#pragma unroll
    for (int t = 0; t < kRouteAloneTiles; ++t) {
      const int* c = p.tile_counts + static_cast<long long>(t) * p.experts + e;
      n[t] = t >= p.token_tiles ? 0 : t == own_tile ? rs.count[e] : __ldcg(c);
    }
    int run = 0;
#pragma unroll
    for (int t = 0; t < kRouteAloneTiles; ++t) {
      if (t < p.token_tiles) p.tile_counts[static_cast<long long>(t) * p.experts + e] = run;
      run += n[t];
    }
    p.expert_count[e] = run;
    rs.kept[e] = min(run, p.capacity);
  }
  summarize_kept(p, rs);  // its barrier also orders the prefixes written above before scatter_tile
  for (int tile = 0; tile < p.token_tiles; ++tile) scatter_tile(p, rs, tile);
}

}  // namespace monomoe::device
