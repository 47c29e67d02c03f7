// Subscriber role (block 0): turns arrived token rows into GEMM0 tasks. On one GPU every row is
// local and has "arrived" once routing ends, so it publishes all GEMM0 tasks at once, in (expert,
// column tile, row tile) order: the row tiles that share a weight tile are taken by blocks at about
// the same time, so the weight tile comes from DRAM once and from L2 after (in row-tile order an
// expert's second row tile came a whole sweep of weights later). An expert's row tiles still finish
// together, and their GEMM1 tasks follow each other in the queue too. It also publishes the combine
// tasks of token tiles that expect no expert rows (every choice dropped by capacity): nothing else
// would.
#pragma once

#include "device/processor.cuh"
#include "device/queue.cuh"
#include "device/smem.cuh"

namespace monomoe::device {

template <class P>
__device__ void publish_initial_tasks(const Params& p, KernelSmem<P>& sm) {
  const int n = sm.route.row_tiles * p.gemm0_col_tiles;
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
      // Expert e owns slots [tile_base[e], tile_base[e + 1]) * gemm0_col_tiles: its column tiles
      // in order, each over all its row tiles.
      const int e = locate_row_tile(p, sm.route, i / p.gemm0_col_tiles).expert;
      const int first = sm.route.tile_base[e];
      const int tiles = sm.route.tile_base[e + 1] - first;
      const int j = i - first * p.gemm0_col_tiles;
      Task* slot = p.tasks + base + i;
      slot->a = first + j % tiles;
      slot->b = j / tiles;
      slot->c = 0;
      st_release_gpu(&slot->head, task_head(p.epoch, TaskType::gemm0));
    }
  }
  for (int tt = threadIdx.x; tt < p.token_tiles; tt += kThreads) {
    if (__ldcg(p.tokentile_target + tt) == 0) {
      push_tasks(p, TaskType::combine, tt, 0, p.combine_col_tiles);
    }
  }
}

}  // namespace monomoe::device
