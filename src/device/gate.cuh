// Gate role: logits = x * gate for one tile of 128 tokens (tensor cores, fp32 accumulation), then
// an fp32 softmax and top-k per token (ties toward the lower expert index), and the tile's
// per-expert counts that routing turns into row positions. Or, when the caller routed, its choices
// taken as they are (take_given_routing), leaving the same per-token arrays and counts.
#pragma once

#include "device/fp8.cuh"
#include "device/gemm/tile_gemm.cuh"
#include "device/smem.cuh"
#include "device/sync.cuh"

namespace monomoe::device {

// Warp-wide arg-max over (value, expert): the larger value wins, the lower expert on ties.
__device__ __forceinline__ void warp_argmax(float& v, int& e) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oe = __shfl_xor_sync(0xffffffffu, e, off);
    if (ov > v || (ov == v && oe < e)) {
      v = ov;
      e = oe;
    }
  }
}

// fp8 (block-scaled expert tiles): token tile `tile`'s x rows quantized for the expert GEMMs over
// channels [k_lo, k_hi) (quantize_x_groups), by the block that gates (or takes the given routing
// of) that part of the tile: routing, which every expert GEMM and dispatch wait for, waits for it.
// Not with Params::x_rows (gemm0_by_rows): the placement quantizes x into those rows itself
// (route.cuh, fill_x_rows).
template <class P>
__device__ __forceinline__ void quantize_for_experts(const Params& p, int tile, int k_lo,
                                                     int k_hi) {
  if constexpr (ExpertTiles<P>::kBlockScaled) {
    if (gemm0_by_rows(p)) return;
    const int first = tile * kTileRows;
    quantize_x_groups(p, first, min(kTileRows, p.tokens - first), k_lo, k_hi);
  }
}

// Partial logits of one token tile over K slice `split` of p.gate_splits (the whole K when 1):
// logits[split, t, :] = x[t, slice] * gate[slice, :]. Slices are whole kGateKStep-deep steps
// (device/split.hpp: gate_split_for), a multiple of every precision's k-tile.
template <class P>
__device__ void gate_gemm(const Params& p, KernelSmem<P>& sm, int tile, int split) {
  using Gemm = TileGemm<P, kTileCols>;
  using Elem = typename P::Elem;
  const KSlice ks = k_slice(p.hidden, split, p.gate_splits, kGateKStep);
  const int k_len = ks.count;
  const int k0 = ks.first;
  const Elem* x = static_cast<const Elem*>(p.x);
  const int first = tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  quantize_for_experts<P>(p, tile, k0, k0 + k_len);
  if (threadIdx.x < kTileRows) {
    const int r = static_cast<int>(threadIdx.x);
    sm.gemm.rows[r] = r < rows ? x + static_cast<long long>(first + r) * p.hidden + k0 : nullptr;
  }
  float* out = p.logits + static_cast<long long>(split) * p.tokens * p.experts_padded;
  // The padded gate copy is stored like the expert weights: [hidden, experts_padded], or
  // [experts_padded, hidden] for [out, in] weights; this split's K slice starts at k0 either way.
  const int ldb = P::kWeightsKMajor ? p.hidden : p.experts_padded;
  const Elem* gate = static_cast<const Elem*>(p.gate) +
                     (P::kWeightsKMajor ? k0 : static_cast<long long>(k0) * p.experts_padded);
  for (int n0 = 0; n0 < p.experts_padded; n0 += kTileCols) {
    Gemm::run(sm.gemm, gate, ldb, n0, n0 + kTileCols / 2, kTileCols / 2, kTileCols / 2, k_len,
              rows);
    const float* c = Gemm::result(sm.gemm);
    for (int i = threadIdx.x; i < rows * (kTileCols / 4); i += kThreads) {
      const int r = i / (kTileCols / 4);
      const int col = (i % (kTileCols / 4)) * 4;
      const float4 v = *reinterpret_cast<const float4*>(c + r * Gemm::kCPitch + col);
      *reinterpret_cast<float4*>(out + static_cast<long long>(first + r) * p.experts_padded + n0 +
                                 col) = v;
    }
  }
}

// Softmax and top-k of token t from its logits v (this lane's expert slots lane + 32 i, -inf past
// the experts; `slots` of them in use), by one warp: writes the token's choices and weights and
// adds them to `count` (per expert: shared memory for a tile, or the token's tile's row of
// p.tile_counts). Lane j < topk stores choice j.
template <int kPerLane>
__device__ __forceinline__ void route_row(const Params& p, int t, float (&v)[kPerLane], int slots,
                                          int* count) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  float mx = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    if (i == slots) break;
    mx = fmaxf(mx, v[i]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    if (i == slots) break;
    sum += (lane + 32 * i < p.experts) ? expf(v[i] - mx) : 0.f;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);

  // Top-k, one choice per pass; lane j keeps choice j (kMaxTopK <= 32). Neither this loop nor
  // gate_route's slice sum is unrolled: with both unrolled, gate.cuh was ~9,700 of the bf16
  // kernel's ~34,000 instructions (gate_route is inlined twice: in the kernel and in
  // route_alone.cuh), for the few hundred a row executes.
  static_assert(kMaxTopK <= 32, "lane j holds choice j");
  float my_p = 0.f;
  int my_e = -1;
  float chosen_sum = 0.f;
#pragma unroll 1
  for (int j = 0; j < p.topk; ++j) {
    float bv = -INFINITY;
    int be = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {  // ascending expert ids: strict > keeps the lower one
      if (i == slots) break;
      if (v[i] > bv) {
        bv = v[i];
        be = lane + 32 * i;
      }
    }
    warp_argmax(bv, be);  // the same (bv, be) in every lane
    if (be >= p.experts) {
      // Only NaN (or -inf) logits are left, as for a token with a NaN/inf in its row of x: the
      // lowest expert not chosen yet (the CPU reference's rule). Its weight comes out NaN, so
      // only this token's output is affected (docs: README, Reliability).
      be = 0;
      while (__any_sync(0xffffffffu, lane < j && my_e == be)) ++be;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (i == slots) break;
      if (lane + 32 * i == be) v[i] = -INFINITY;
    }
    const float chosen = expf(bv - mx) / sum;
    if (lane == j) {
      my_p = chosen;
      my_e = be;
    }
    chosen_sum += chosen;
  }
  if (lane < p.topk) {
    const int id = t * p.topk + lane;
    // Cannot happen: see the fallback above.
    if (my_e < 0 || my_e >= p.experts) {
      raise_error(p, ErrorCode::bad_route, t, my_e);
      p.topk_expert[id] = -1;  // skipped by routing and combine
    } else {
      const float scale = p.renormalize ? 1.f / chosen_sum : 1.f;
      p.topk_expert[id] = my_e;
      p.topk_weight[id] = my_p * scale;
      atomicAdd(count + my_e, 1);
    }
  }
}

// The logits of rows [first, first + rows): logit[r * experts + e] = the sum over the gate's K
// slices, in split order, of p.logits[slice][first + r][e]. A thread takes kPairs (row, expert)
// pairs at a time and loads kGroup slices of each before adding any: kPairs x kGroup loads in
// flight (sum_and_route picks the shape from the split count: 8 x 2 for one or two slices, 2 x 8
// for up to 32; 16 loads keep the bf16 kernel at its 248 registers, 32 had taken it to 254).
// Staging every slice in shared memory first and adding them per warp had taken ~27 us for 16
// rows of 32 slices and 64 experts (perf log 2026-12-01 03:20).
template <int kPairs, int kGroup>
__device__ __forceinline__ void sum_gate_slices(const Params& p, float* logit, int first,
                                                int rows) {
  const long long split_stride = static_cast<long long>(p.tokens) * p.experts_padded;
  const int n = rows * p.experts;
  for (int base = 0; base < n; base += kThreads * kPairs) {
    float acc[kPairs];
    const float* at[kPairs];
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      const int i = base + j * kThreads + static_cast<int>(threadIdx.x);
      const int r = i / p.experts, e = i - r * p.experts;
      at[j] = i < n ? p.logits + static_cast<long long>(first + r) * p.experts_padded + e : nullptr;
      acc[j] = 0.f;
    }
#pragma unroll 1
    for (int sl0 = 0; sl0 < p.gate_splits; sl0 += kGroup) {
      float part[kPairs][kGroup];
#pragma unroll
      for (int j = 0; j < kPairs; ++j) {
#pragma unroll
        for (int q = 0; q < kGroup; ++q) {
          part[j][q] = at[j] && sl0 + q < p.gate_splits ? __ldcg(at[j] + (sl0 + q) * split_stride)
                                                        : 0.f;
        }
      }
#pragma unroll
      for (int j = 0; j < kPairs; ++j) {
#pragma unroll
        for (int q = 0; q < kGroup; ++q) {
          if (sl0 + q == 0) {
            acc[j] = part[j][q];
          } else if (sl0 + q < p.gate_splits) {
            acc[j] += part[j][q];
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      const int i = base + j * kThreads + static_cast<int>(threadIdx.x);
      if (i < n) logit[i] = acc[j];
    }
  }
}

// Rows [0, rows) of summed logits (logit: [row][expert], the GEMM buffer), whose first token is
// `first`, routed a row per warp (route_row) into `count` (shared memory: one tile's rows), or,
// with count == nullptr, into each row's tile's row of p.tile_counts (global atomics); a chunk of
// rows at a time where they do not all fit the buffer (fp32's holds fewer than 128 rows of 256
// experts). Ends with the rows routed (the counts in shared memory complete).
template <class P>
__device__ __forceinline__ void sum_and_route(const Params& p, KernelSmem<P>& sm, int first,
                                              int rows, int* count) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  constexpr int kPerLane = kMaxExperts / 32;
  // Expert slots per lane in use (the rest hold -inf and change no max, sum or choice): the loops
  // below stop there, a uniform branch, so 64 experts cost 2 slots' work, not kPerLane's.
  const int slots = (p.experts + 31) / 32;
  float* logit = reinterpret_cast<float*>(sm.gemm.buffer);
  constexpr int kBufferFloats = static_cast<int>(sizeof(sm.gemm.buffer) / sizeof(float));
  static_assert(kMaxExperts <= kBufferFloats, "a row's logits fit the buffer");
  const int chunk_rows = min(kTileRows, kBufferFloats / p.experts);
  for (int r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int chunk = min(chunk_rows, rows - r0);
    sync_workers();  // the buffer free (the gate GEMM's, or the previous chunk's routing)
    if (p.gate_splits <= 2) {
      sum_gate_slices<8, 2>(p, logit, first + r0, chunk);
    } else {
      sum_gate_slices<2, 8>(p, logit, first + r0, chunk);
    }
    sync_workers();  // the chunk's logits summed
    for (int rc = warp; rc < chunk; rc += kThreads / 32) {
      const int t = first + r0 + rc;
      float v[kPerLane];
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        if (i == slots) break;
        const int e = lane + 32 * i;
        v[i] = e < p.experts ? logit[rc * p.experts + e] : -INFINITY;
      }
      route_row(p, t, v, slots,
                count ? count
                      : p.tile_counts + static_cast<long long>(t / kTileRows) * p.experts);
    }
  }
  sync_workers();  // every row routed
}

// Softmax and top-k of one token tile from its logits (partials summed in split order: the same
// bits whatever block computed them), and the tile's per-expert counts (also left in
// sm.route.count), by sum_and_route: every (row, expert)'s partials added by one thread into
// shared memory, then a warp per row. (Staging every slice in shared memory and adding them per
// warp had taken ~74 us for 16 rows of 32 slices and 128 experts: perf log 2026-12-01 03:53.)
// Used when a block routes whole tiles: one K slice (each block routes the tiles it computed, no
// barrier) and route_alone's calls of few tokens; route_spread below otherwise.
template <class P>
__device__ void gate_route(const Params& p, KernelSmem<P>& sm, int tile) {
  const int first = tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  if (threadIdx.x < kMaxExperts) sm.route.count[threadIdx.x] = 0;
  // Logits written by this block are visible (other blocks' are, after a grid barrier or the
  // tile's slice count: route_alone.cuh); the gate GEMM is done with the buffer.
  sum_and_route(p, sm, first, rows, sm.route.count);
  for (int e = threadIdx.x; e < p.experts; e += kThreads) {
    p.tile_counts[static_cast<long long>(tile) * p.experts + e] = sm.route.count[e];
  }
}

// The gate's K-split path on many blocks (p.gate_splits > 1 without route_alone: 5 to 66 token
// tiles on 132 SMs, e.g. the default config's 8192 tokens): after the gate barrier every warp of
// the grid routes token rows t = warp, warp + warps, ... Its lanes load the row's partial logits
// straight from global memory, kGroup slices' loads in flight together, and add them in split
// order (the same bits as gate_route); its choices are counted into the row's tile of
// p.tile_counts by global atomics (integers: their order changes nothing), which zero_tile_counts
// cleared before the barrier. A block per 128-row tile (gate_route) had taken ~50 us there: ~19 to
// stage the tile's logits and ~30 for 16 rows per warp (perf log 2026-11-30 00:39).
__device__ __forceinline__ void zero_tile_counts(const Params& p) {
  const long long n = static_cast<long long>(p.token_tiles) * p.experts;
  for (long long i = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * kThreads) {
    p.tile_counts[i] = 0;
  }
}

// Rows t = first, first + warps, ... (first: this warp's index among `warps` routing warps),
// kRows of them at a time: every partial logit of those rows (kGroup slices at a time) is loaded
// before any is used, then each row is routed. (One row at a time: the top-8 shape's routing with
// 128 experts took ~12 us longer; the default config's, 64 experts, the same: perf log
// 2026-12-01 01:55.)
// kPerLane: the expert slots per lane this instance holds (2: up to 64 experts, a smaller loop body
// for the common case; kMaxExperts / 32 otherwise); kRows * kGroup * kPerLane loads in flight.
template <int kPerLane, int kRows, int kGroup>
__device__ __forceinline__ void route_spread_rows(const Params& p, int first, int warps) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int slots = (p.experts + 31) / 32;  // expert slots per lane in use (see gate_route)
  const long long split_stride = static_cast<long long>(p.tokens) * p.experts_padded;
  for (int t0 = first; t0 < p.tokens; t0 += warps * kRows) {
    float v[kRows][kPerLane];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) v[r][i] = -INFINITY;
    }
#pragma unroll 1
    for (int sl0 = 0; sl0 < p.gate_splits; sl0 += kGroup) {
      float part[kRows][kGroup][kPerLane];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int t = t0 + r * warps;  // warp-uniform
        const float* row = p.logits + static_cast<long long>(t) * p.experts_padded;
#pragma unroll
        for (int q = 0; q < kGroup; ++q) {
#pragma unroll
          for (int i = 0; i < kPerLane; ++i) {
            if (i == slots) break;
            const int e = lane + 32 * i;
            part[r][q][i] = t < p.tokens && sl0 + q < p.gate_splits && e < p.experts
                                ? __ldcg(row + (sl0 + q) * split_stride + e)
                                : 0.f;
          }
        }
      }
      // Slices added in split order per row (the same bits as gate_route).
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
#pragma unroll
        for (int q = 0; q < kGroup; ++q) {
#pragma unroll
          for (int i = 0; i < kPerLane; ++i) {
            if (i == slots) break;
            if (sl0 + q == 0) {
              v[r][i] = lane + 32 * i < p.experts ? part[r][q][i] : -INFINITY;
            } else if (sl0 + q < p.gate_splits) {
              v[r][i] += part[r][q][i];
            }
          }
        }
      }
    }
    // Row r is routed from v[0], the rows after it shifted down (one inlined route_row).
#pragma unroll 1
    for (int r = 0; r < kRows; ++r) {
      const int t = t0 + r * warps;
      if (t >= p.tokens) break;  // warp-uniform; later rows are past the end too
      route_row(p, t, v[0], slots,
                p.tile_counts + static_cast<long long>(t / kTileRows) * p.experts);
#pragma unroll
      for (int q = 0; q + 1 < kRows; ++q) {
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) v[q][i] = v[q + 1][i];
      }
    }
  }
}

// The rows of this block's warps when the first `blocks` blocks route (the whole grid here; the
// first few in route_alone.cuh).
__device__ __forceinline__ void route_spread(const Params& p, int blocks) {
  constexpr int kWarps = kThreads / 32;
  const int first = static_cast<int>(blockIdx.x) * kWarps + static_cast<int>(threadIdx.x) / 32;
  if (p.experts <= 64) {
    route_spread_rows<2, 4, 4>(p, first, blocks * kWarps);
  } else {
    route_spread_rows<kMaxExperts / 32, 2, 2>(p, first, blocks * kWarps);
  }
}

// The gate role when the caller routed (p.given_ids): one token tile's experts and weights copied
// as they are (no GEMM, no softmax, no renormalization) into topk_expert / topk_weight, and the
// tile's per-expert counts, as gate_route leaves them. One thread per token. An id out of
// [0, experts), or one the token already chose, is recorded as an error (the host names the token
// and choice) and its choice stored as expert -1 with weight 0: routing and combine pass over it
// like a dropped choice, so no index leaves its buffer and the launch, peers included, ends as
// usual.
__device__ __forceinline__ void take_given_routing(const Params& p, RouteSmem& rs, int tile) {
  const int first = tile * kTileRows;
  const int rows = min(kTileRows, p.tokens - first);
  if (threadIdx.x < kMaxExperts) rs.count[threadIdx.x] = 0;
  sync_workers();
  if (static_cast<int>(threadIdx.x) < rows) {
    const int base = (first + static_cast<int>(threadIdx.x)) * p.topk;  // < 2^24 * 8
    int chosen[kMaxTopK];
#pragma unroll
    for (int j = 0; j < kMaxTopK; ++j) {
      if (j >= p.topk) break;
      int e = __ldg(p.given_ids + base + j);
      if (e < 0 || e >= p.experts) {
        record_error(p, ErrorCode::given_id_out_of_range, base + j, e);
        e = -1;
      } else {
        for (int q = 0; q < j; ++q) {
          if (chosen[q] == e) {
            record_error(p, ErrorCode::given_id_repeated, base + j, e);
            e = -1;
            break;
          }
        }
      }
      chosen[j] = e;
      p.topk_expert[base + j] = e;
      p.topk_weight[base + j] = e >= 0 ? __ldg(p.given_weights + base + j) : 0.f;
      if (e >= 0) atomicAdd(&rs.count[e], 1);
    }
  }
  sync_workers();
  for (int e = threadIdx.x; e < p.experts; e += kThreads) {
    p.tile_counts[static_cast<long long>(tile) * p.experts + e] = rs.count[e];
  }
}

}  // namespace monomoe::device
