// The task queue: a slot array in global memory. Producers reserve slots with one atomic on the tail
// and publish each slot by a release store of its head word; consumers take slots in order with one
// atomic on the head and acquire the head word. Atomics decide only where work runs.
// One rank alone: the first `implicit` indices are the call's GEMM0 tasks, row tile by row tile
// (index i: row tile i / per_tile, b = i % per_tile), known to every block from its routing summary
// (RouteSmem::implicit_tasks): no slot holds them, and the routing that orders them before their
// use is the grid barrier (or Control::routed) every block passed. Pushed tasks take slots from
// `implicit` on, and each block's first claim is index blockIdx.x, without the head's atomic (later
// claims count from gridDim.x): a block's first task starts as soon as its routing summary is done.
#pragma once

#include "device/smem.cuh"
#include "device/sync.cuh"

namespace monomoe::device {

// Publishes the tasks slots[i] for i = first, first + step, ... < n, whose a and b this thread
// wrote, as `type`: one fence releases those fields, and whatever this thread observed before,
// then a strong store per head. (A release store per head waits for the stores before it each
// time, one L2 round trip per task: the 64 GEMM1 tasks of a split row tile appeared over ~25 us.)
__device__ __forceinline__ void release_heads(const Params& p, Task* slots, int first, int n,
                                              int step, TaskType type) {
  __threadfence();
  const unsigned long long head = task_head(call_epoch(p), type);
  for (int i = first; i < n; i += step) st_relaxed_gpu(&slots[i].head, head);
}

// Publishes `count` tasks (type, a, b_first + i) in slots from `first_slot` on (the call's implicit
// tasks come before: RouteSmem::implicit_tasks, 0 with peers). One thread calls it.
__device__ __forceinline__ void push_tasks(const Params& p, int first_slot, TaskType type, int a,
                                           int b_first, int count) {
  const unsigned int base = static_cast<unsigned int>(first_slot) +
                            atomicAdd(&p.control->queue_tail, static_cast<unsigned int>(count));
  if (base + count > static_cast<unsigned int>(p.max_tasks)) {
    raise_error(p, ErrorCode::bad_task, static_cast<int>(base) + count, p.max_tasks);
    return;
  }
  Task* slots = p.tasks + base;
  for (int i = 0; i < count; ++i) {
    slots[i].a = a;
    slots[i].b = b_first + i;
  }
  release_heads(p, slots, 0, count, 1, type);
}

// world > 1: the task count is known only once every source's header has arrived. Waits for slot
// `idx` to fill or for the count to show that it never will. Returns true when the slot holds a task.
__device__ __forceinline__ bool wait_slot_or_end(const Params& p, unsigned int idx) {
  // Every block takes one index past the last task; those past the queue's end hold no slot (the
  // task count never exceeds max_tasks), and reading them would read other buffers.
  if (idx >= static_cast<unsigned int>(p.max_tasks)) return false;
  const Task* slot = p.tasks + idx;
  const unsigned long long filled = call_epoch(p) << 2;  // heads of earlier calls are smaller
  // Twice the bound: a slot stays empty because a peer is late, and the subscriber's own (single)
  // bound names that peer first.
  return spin_bounded<64, 64>(p, 2 * p.timeout_ns, ErrorCode::timeout_queue, static_cast<int>(idx),
                              0, [&] {
    if (ld_acquire_gpu(&slot->head) >= filled) return Poll::ready;
    if (ld_acquire_gpu(&p.control->total_ready) != 0 &&
        idx >= __ldcg(&p.control->total_tasks)) {
      return Poll::never;
    }
    return Poll::wait;
  });
}

// Takes the next task for the whole block (thread 0 waits, the block reads sm.task). Returns false
// when all tasks are taken or the launch aborted. What the block takes is in ts.queue (set once by
// thread 0 before the first call; in shared memory rather than registers held across the task
// loop): `total` tasks (< 0: the count comes from the subscriber, world > 1), the first `implicit`
// GEMM0 tasks known without a slot (one rank alone; per_tile of them per row tile), and whether the
// block's first claim is index blockIdx.x (one rank alone: every block enters the task loop right
// after routing; with peers the subscriber and the dispatch blocks come late, and the tasks they
// would hold back are the first published).
__device__ __forceinline__ bool pop_task(const Params& p, TaskSmem& ts) {
  sync_workers();  // everyone is done with the previous task descriptor
  if (threadIdx.x == 0) {
    QueueView& q = ts.queue;
    ts.task.head = 0;
    const unsigned int idx = q.claims++ == 0 && q.first_by_block
                                 ? blockIdx.x
                                 : (q.first_by_block ? gridDim.x : 0u) +
                                       atomicAdd(&p.control->queue_head, 1u);
    if (q.total < 0) {
      if (wait_slot_or_end(p, idx)) {
        const Task* slot = p.tasks + idx;
        ts.task.head = __ldcg(&slot->head) & 3u;
        ts.task.a = __ldcg(&slot->a);
        ts.task.b = __ldcg(&slot->b);
      }
    } else if (idx < static_cast<unsigned int>(q.implicit)) {
      ts.task.head = static_cast<unsigned long long>(TaskType::gemm0);
      ts.task.a = static_cast<int>(idx) / q.per_tile;
      ts.task.b = static_cast<int>(idx) % q.per_tile;
    } else if (idx < static_cast<unsigned int>(q.total)) {
      Task* slot = p.tasks + idx;
      if (wait_at_least(p, &slot->head, call_epoch(p) << 2, ErrorCode::timeout_queue,
                        static_cast<int>(idx))) {
        ts.task.head = __ldcg(&slot->head) & 3u;
        ts.task.a = __ldcg(&slot->a);
        ts.task.b = __ldcg(&slot->b);
      }
    }
  }
  sync_workers();
  return ts.task.head != 0;
}

}  // namespace monomoe::device
