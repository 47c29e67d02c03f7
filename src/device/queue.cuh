// The task queue: a slot array in global memory. Producers reserve slots with one atomic on the tail
// and publish each slot by a release store of its head word; consumers take slots in order with one
// atomic on the head and acquire the head word. Atomics decide only where work runs.
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

// Publishes `count` tasks (type, a, b_first + i). One thread calls it.
__device__ __forceinline__ void push_tasks(const Params& p, TaskType type, int a, int b_first,
                                           int count) {
  const unsigned int base = atomicAdd(&p.control->queue_tail, static_cast<unsigned int>(count));
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
// when all `total` tasks are taken or the launch aborted. total < 0: the count comes from the
// subscriber (world > 1).
__device__ __forceinline__ bool pop_task(const Params& p, TaskSmem& ts, int total) {
  __syncthreads();  // everyone is done with the previous task descriptor
  if (threadIdx.x == 0) {
    ts.task.head = 0;
    const unsigned int idx = atomicAdd(&p.control->queue_head, 1u);
    if (total < 0) {
      if (wait_slot_or_end(p, idx)) {
        const Task* slot = p.tasks + idx;
        ts.task.head = __ldcg(&slot->head) & 3u;
        ts.task.a = __ldcg(&slot->a);
        ts.task.b = __ldcg(&slot->b);
      }
    } else if (idx < static_cast<unsigned int>(total)) {
      Task* slot = p.tasks + idx;
      if (wait_at_least(p, &slot->head, call_epoch(p) << 2, ErrorCode::timeout_queue,
                        static_cast<int>(idx))) {
        ts.task.head = __ldcg(&slot->head) & 3u;
        ts.task.a = __ldcg(&slot->a);
        ts.task.b = __ldcg(&slot->b);
      }
    }
  }
  __syncthreads();
  return ts.task.head != 0;
}

}  // namespace monomoe::device
