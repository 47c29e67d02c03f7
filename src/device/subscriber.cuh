// Subscriber role alone (one rank; with peers ep.cuh's subscribe_ep lists the arrived rows): every
// row is local and has "arrived" once routing ends, so the GEMM0 tasks are all known at once, row
// tile by row tile (each tile's column tasks together, so whole row tiles finish early and their
// GEMM1 tasks start while later GEMM0 tiles still run): the queue's implicit first indices
// (queue.cuh), which no block publishes. What is left here: the combine tasks of token tiles that
// expect no expert rows (every choice dropped by capacity).
#pragma once

#include "device/queue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

// One rank alone, after routing: the GEMM0 tasks need no slots (queue.cuh: the first
// RouteSmem::implicit_tasks indices, which every block knows); this block publishes the combine
// tasks of token tiles that expect no expert rows (every choice dropped by capacity), which nothing
// else would, in slots after those.
template <class P>
__device__ void publish_empty_token_tiles(const Params& p, KernelSmem<P>& sm) {
  for (int tt = threadIdx.x; tt < p.token_tiles; tt += kThreads) {
    if (__ldcg(p.tokentile_target + tt) == 0) {
      push_tasks(p, sm.route.implicit_tasks, TaskType::combine, tt, 0, p.combine_col_tiles);
    }
  }
}

}  // namespace monomoe::device
