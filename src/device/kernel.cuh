// The persistent kernel: one launch computes the whole MoE layer. Every block runs the gate for its
// token tiles, the routing phases (separated by grid barriers, since row positions need all counts),
// then the task loop: GEMM0, GEMM1 and combine tasks of different tiles overlap until the queue's
// task count, known exactly after routing, is exhausted. The bf16 kernel's task loop is
// warp-specialized (processor_ws.cuh): a producer warpgroup feeds the workers' tensor cores.
#pragma once

#include "device/combine.cuh"
#include "device/ep.cuh"
#include "device/gate.cuh"
#include "device/processor.cuh"
#include "device/processor_ws.cuh"
#include "device/route.cuh"
#include "device/subscriber.cuh"
#include "device/trace.cuh"

namespace monomoe::device {

template <class P>
constexpr int block_threads() {
  return P::kWarpSpecialized ? kWsThreads : kThreads;
}

// Workers: the gate, the routing phases and the role this block takes before the task loop
// (subscriber or dispatch, with peers). False when the launch aborted.
template <class P>
__device__ bool prepare(const Params& p, KernelSmem<P>& sm, TraceRecorder& trace) {
  const bool ep = p.world > 1;
  if (ep && blockIdx.x == 0 && threadIdx.x == 0) announce_start(p);
  // Gate GEMM over (token tile, K slice) items: with two slices twice as many blocks work on it.
  // With one, each block routes the tiles it computed itself, with no barrier in between.
  unsigned int barrier = 0;
  const int gate_items = p.token_tiles * p.gate_splits;
  for (int item = blockIdx.x; item < gate_items; item += gridDim.x) {
    gate_gemm<P>(p, sm, item / p.gate_splits, item % p.gate_splits);
  }
  if (p.gate_splits > 1 && !grid_barrier(p, ++barrier)) return false;
  for (int tile = blockIdx.x; tile < p.token_tiles; tile += gridDim.x) gate_route<P>(p, sm, tile);
  trace.mark(1);
  if (!grid_barrier(p, ++barrier)) return false;

  scan_tile_counts(p);
  if (!grid_barrier(p, ++barrier)) return false;

  summarize_routes(p, sm.route);
  for (int tile = blockIdx.x; tile < p.token_tiles; tile += gridDim.x) scatter_tile(p, sm.route, tile);
  if (!grid_barrier(p, ++barrier)) return false;

  trace.mark(2);
  if (!ep) {
    if (blockIdx.x == 0) publish_initial_tasks<P>(p, sm);
  } else if (blockIdx.x == 0) {
    subscribe_ep<P>(p, sm);
  } else if (static_cast<int>(blockIdx.x) <= p.dispatch_blocks) {
    dispatch_rows<P>(p, sm);
  }
  return true;
}

// Workers, tf32 and fp32: the block takes tasks one at a time and runs each with all its threads.
template <class P>
__device__ void task_loop(const Params& p, KernelSmem<P>& sm, TraceRecorder& trace) {
  trace.loop_started();
  while (pop_task(p, sm.task, p.world > 1 ? -1 : sm.route.total_tasks)) {
    const Task task = sm.task.task;
    trace.task_taken();
    switch (static_cast<TaskType>(task.head)) {
      case TaskType::gemm0: run_gemm0<P>(p, sm, task.a, task.b); break;
      case TaskType::gemm1: run_gemm1<P>(p, sm, task.a, task.b); break;
      case TaskType::combine: run_combine<P>(p, task.a, task.b); break;
      default:
        if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, static_cast<int>(task.head), 0);
        return;
    }
    trace.task_done(static_cast<TaskType>(task.head) != TaskType::combine);
  }
  trace.loop_ended();
}

template <class P>
__global__ void __launch_bounds__(block_threads<P>(), 1) moe_forward_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // wgmma's swizzled operand tiles need 1024-byte alignment; the launch adds that much slack.
  const unsigned int misalign = static_cast<unsigned int>(__cvta_generic_to_shared(smem_raw)) & 1023u;
  auto& sm = *reinterpret_cast<KernelSmem<P>*>(smem_raw + ((1024u - misalign) & 1023u));
  TraceRecorder trace(p, threadIdx.x == 0);
  trace.mark(0);
  if constexpr (P::kWarpSpecialized) {
    init_ring(sm.ring);
    if (threadIdx.x < kThreads) {
      const bool ok = prepare<P>(p, sm, trace);
      if (threadIdx.x == 0) sm.prepared = ok ? 1 : 0;
    }
    __syncthreads();  // the ring's barriers are initialized and routing is known (or aborted)
    if (!sm.prepared) return;
    // setmaxnreg: one branch per warpgroup role, under the register cap of __launch_bounds__
    // (168 per thread for 384 threads). The workers' MMA and epilogue code needs more than that
    // (it spills without the increase); the producer needs few.
    if (__shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 128, 0) == kThreads / 128) {
      setmaxnreg_dec<kProducerRegs>();
      produce_tasks<P>(p, sm);
    } else {
      setmaxnreg_inc<kConsumerRegs>();
      consume_tasks<P>(p, sm, trace);
    }
  } else {
    if (!prepare<P>(p, sm, trace)) return;
    task_loop<P>(p, sm, trace);
  }
}

template <class P>
constexpr int kernel_smem_bytes() {
  return static_cast<int>(sizeof(KernelSmem<P>)) + 1024;  // + alignment slack (see the kernel)
}

}  // namespace monomoe::device
