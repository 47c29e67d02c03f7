// Subscriber role (block 0): turns arrived token rows into GEMM0 tasks. On one GPU every row is
// local and has "arrived" once routing ends, so it publishes all GEMM0 tasks at once, row tile by
// row tile (each tile's column tasks together, so whole row tiles finish early and their GEMM1 tasks
// start while later GEMM0 tiles still run). It also publishes the combine tasks of token tiles that
// expect no expert rows (every choice dropped by capacity): nothing else would.
#pragma once

#include "device/queue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

template <class P>
__device__ void publish_initial_tasks(const Params& p, KernelSmem<P>& sm) {
  // GEMM0 tasks of every row tile, the shared expert's after the routed ones: column tile c, K
  // slice s as b = c * k_split + s (processor.cuh).
  const int per_tile = p.gemm0_col_tiles * sm.route.k_split;
  const int n = (sm.route.row_tiles + shared_tiles(p)) * per_tile;
  if (threadIdx.x == 0) {
    const unsigned int base = atomicAdd(&p.control->queue_tail, static_cast<unsigned int>(n));
    sm.task.queue_base = static_cast<int>(base);
    if (base + n > static_cast<unsigned int>(p.max_tasks)) {
      raise_error(p, ErrorCode::bad_task, static_cast<int>(base) + n, p.max_tasks);
    }
  }
  __syncthreads();
  const int base = sm.task.queue_base;
  if (base + n <= p.max_tasks) {
    for (int i = threadIdx.x; i < n; i += kThreads) {
      Task* slot = p.tasks + base + i;
      slot->a = i / per_tile;
      slot->b = i % per_tile;
    }
    // Each thread its slots: the fields, and the routing this block observed, precede the heads.
    release_heads(p, p.tasks + base, static_cast<int>(threadIdx.x), n, kThreads, TaskType::gemm0);
  }
  for (int tt = threadIdx.x; tt < p.token_tiles; tt += kThreads) {
    if (__ldcg(p.tokentile_target + tt) == 0) {
      push_tasks(p, TaskType::combine, tt, 0, p.combine_col_tiles);
    }
  }
}

}  // namespace monomoe::device
