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

// This block's part of the gate (its (tile, slice) items), or of the caller's routing. Returns the
// tile whose counts this block holds in sm.route.count when it routed the call's last tile (the
// block that places every choice), -1 otherwise. With no token tile (a rank of peers without
// tokens), block 0 places nothing.
template <class P>
__device__ int route_own_tiles(const Params& p, KernelSmem<P>& sm) {
  if (p.token_tiles == 0) return blockIdx.x == 0 ? 0 : -1;
  int last = -1;
  if (p.given_ids) {
    for (int tile = blockIdx.x; tile < p.token_tiles; tile += gridDim.x) {
      take_given_routing(p, sm.route, tile);
      if (tile_routed_last(p)) last = tile;
    }
    return last;
  }
  const int items = p.token_tiles * p.gate_splits;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int tile = item / p.gate_splits;
    gate_gemm<P>(p, sm, tile, item % p.gate_splits);
    // The tile's last slice to finish adds every slice's partials.
    if (p.gate_splits > 1 &&
        !arrive_last(&p.control->gate_done[tile], static_cast<unsigned int>(p.gate_splits))) {
      continue;
    }
    gate_route<P>(p, sm, tile);
    if (tile_routed_last(p)) last = tile;
  }
  return last;
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
  __syncthreads();
  if (!ok) return false;
  summarize_routes(p, rs);
  return true;
}

}  // namespace monomoe::device
