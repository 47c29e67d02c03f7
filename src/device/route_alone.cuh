// Routing a call of few token tiles (Params::route_alone: at most kRouteAloneTiles, decode calls)
// with no grid barrier. The general path (kernel.cuh) spreads the routing over the blocks, one
// token tile each, between up to four grid barriers (gate partials, per-tile counts, prefix sums
// over tiles, placed rows), each a fence, an arrival and a poll of every block (~1.5 us); with one
// token tile there is nothing to spread, only the barriers to wait for. Here:
//   gate    each (token tile, K slice) item is one block's; the block whose slice completes a tile
//           (an atomic count, Control::gate_done) adds the partials in slice order and routes the
//           tile (gate_route), or a block takes the caller's routing of a tile;
//   place   the block that routes the call's last tile (a second count, Control::tiles_routed;
//           none with one tile) computes the prefix sums over tiles, the routing summary and every
//           tile's placement (route.cuh, place_every_tile), then raises Control::routed;
//   others  wait for that one flag and compute the routing summary from the expert counts.
// A call of more than kRouteAloneSpreadRows tokens routes its rows on several blocks instead: one
// block routing a 128-token tile (softmax and top-8 of 128 experts, 16 rows per warp) took ~87 us
// of a 2-GPU decode call (perf log 2026-11-30 06:00), and 16 rows ~74 us on one GPU (2026-12-01).
// The block that completes a tile's gate clears the tile's counts and counts the tile gated
// (Control::tiles_gated); the first blocks, a row each (more when rows outnumber blocks), wait for
// every tile, sum and route their rows (gate.cuh, sum_and_route: counts by atomics), and the last
// of them to finish (Control::rows_routed) places every choice.
// The outputs are those of the general path, bit for bit, for the same gate split.
#pragma once

#include "device/gate.cuh"
#include "device/route.cuh"

namespace monomoe::device {

// After this block wrote a token tile's choices and counts: true in the block that wrote the
// call's last one, which then sees every other tile's.
__device__ __forceinline__ bool tile_routed_last(const Params& p) {
  return p.token_tiles == 1 || arrive_last(&p.control->tiles_routed,
                                           static_cast<unsigned int>(p.token_tiles));
}

// Calls of more tokens than this route their rows on several blocks (above).
inline constexpr int kRouteAloneSpreadRows = 8;
// route_own_tiles' value for the block that places every choice with every tile's counts in
// p.tile_counts (it holds none in shared memory): no tile index matches it.
inline constexpr int kCountsInGlobal = kRouteAloneTiles;

// The spread routing's rows, after this block's gate items: the first blocks (one per row, or
// ceil(tokens / grid) rows each when there are more rows than blocks) wait for every tile's gate,
// sum their rows' partial logits and route them (sum_and_route, counts by atomics) and count
// themselves done. Returns kCountsInGlobal in the last of them (which then places every choice),
// -1 elsewhere (also when the wait gave up: recorded, and the wait for Control::routed then gives
// up too).
template <class P>
__device__ __forceinline__ int route_spread_alone(const Params& p, KernelSmem<P>& sm) {
  const int per_block = (p.tokens + static_cast<int>(gridDim.x) - 1) / static_cast<int>(gridDim.x);
  const int routers = (p.tokens + per_block - 1) / per_block;
  if (static_cast<int>(blockIdx.x) >= routers) return -1;
  __shared__ int ok;
  if (threadIdx.x == 0) {
    ok = wait_at_least(p, &p.control->tiles_gated, static_cast<unsigned int>(p.token_tiles),
                       ErrorCode::timeout_route, 1);
  }
  sync_workers();
  if (!ok) return -1;
  const int first = static_cast<int>(blockIdx.x) * per_block;
  sum_and_route(p, sm, first, min(per_block, p.tokens - first), nullptr);
  return arrive_last(&p.control->rows_routed, static_cast<unsigned int>(routers))
             ? kCountsInGlobal
             : -1;
}

// This block's part of the gate (its (tile, slice) items), or of the caller's routing. Returns the
// tile whose counts this block holds in sm.route.count when it routed the call's last tile (the
// block that places every choice; kCountsInGlobal when the rows were spread), -1 otherwise. With
// no token tile (a rank of peers without tokens), block 0 places nothing.
template <class P>
__device__ int route_own_tiles(const Params& p, KernelSmem<P>& sm) {
  if (p.token_tiles == 0) return blockIdx.x == 0 ? 0 : -1;
  int last = -1;
  if (p.given_ids) {
    for (int tile = blockIdx.x; tile < p.token_tiles; tile += gridDim.x) {
      take_given_routing(p, sm.route, tile);
      quantize_for_experts<P>(p, tile, 0, p.hidden);
      if (tile_routed_last(p)) last = tile;
    }
    return last;
  }
  const bool spread = p.tokens > kRouteAloneSpreadRows;
  const int items = p.token_tiles * p.gate_splits;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int tile = item / p.gate_splits;
    gate_gemm<P>(p, sm, tile, item % p.gate_splits);
    // The tile's last slice to finish adds every slice's partials.
    if (p.gate_splits > 1 &&
        !arrive_last(&p.control->gate_done[tile], static_cast<unsigned int>(p.gate_splits))) {
      continue;
    }
    if (spread) {
      // The routers add to the tile's counts: cleared before the tile counts as gated.
      for (int e = threadIdx.x; e < p.experts; e += kThreads) {
        p.tile_counts[static_cast<long long>(tile) * p.experts + e] = 0;
      }
      publish_block_writes();  // the counts and (arrive_last above) every slice's partials
      if (threadIdx.x == 0) atomicAdd(&p.control->tiles_gated, 1u);
      continue;
    }
    gate_route<P>(p, sm, tile);
    if (tile_routed_last(p)) last = tile;
  }
  return spread ? route_spread_alone(p, sm) : last;
}

// The block that routed the last tile (own_tile >= 0) places every choice and raises the flag;
// the others wait for it and take the summary. Returns false if the launch aborted or the wait
// timed out.
__device__ __forceinline__ bool place_routes_alone(const Params& p, RouteSmem& rs, int own_tile) {
  if (own_tile >= 0) {
    place_every_tile(p, rs, own_tile);
    publish_block_writes();  // every thread's routing outputs precede the flag
    if (threadIdx.x == 0) st_release_gpu(&p.control->routed, 1u);
    return true;
  }
  __shared__ int ok;
  if (threadIdx.x == 0) {
    ok = wait_at_least(p, &p.control->routed, 1u, ErrorCode::timeout_route, 0);
  }
  sync_workers();
  if (!ok) return false;
  summarize_routes(p, rs);
  return true;
}

}  // namespace monomoe::device
