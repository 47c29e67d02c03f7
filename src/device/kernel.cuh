// The persistent kernel: one launch computes the whole MoE layer. Every block runs the gate for its
// token tiles (or takes the routing the caller gave), the routing phases (separated by grid
// barriers, since row positions need all counts; a call of few token tiles is routed by one block
// instead, route_alone.cuh), then the task loop: GEMM0, GEMM1 and combine tasks of different tiles
// overlap until the queue's task count, known exactly after routing, is exhausted.
#pragma once

#include "device/combine.cuh"
#include "device/ep.cuh"
#include "device/gate.cuh"
#include "device/processor.cuh"
#include "device/producer.cuh"
#include "device/route.cuh"
#include "device/route_alone.cuh"
#include "device/subscriber.cuh"

namespace monomoe::device {

// The workers' part of the kernel (threads 0..kThreads-1): every role, from the gate to the
// end of the task loop. Inlined once (its tile GEMMs' wgmma must not cross a call).
template <class P>
__device__ __forceinline__ void run_workers(const Params& p, KernelSmem<P>& sm) {
  long long* trace = p.trace && threadIdx.x == 0 ? p.trace + blockIdx.x * kTraceStride : nullptr;
  if (trace) {
    trace[0] = global_ns();
    for (int e = 0; e < kTraceEvents; ++e) trace[kTraceEp + e] = 0;
  }
  const bool ep = p.world > 1;
  if (ep && blockIdx.x == 0 && threadIdx.x == 0) announce_start(p);
  // Every token tile's choices and weights (topk_expert, topk_weight) and per-expert counts, then
  // each choice's row in its expert's list and every block's routing summary (sm.route).
  bool publisher = blockIdx.x == 0;  // alone: records the split, publishes empty tiles' combines
  if (p.route_alone) {
    // Few token tiles (decode): the block that routes the last one places every choice, the
    // others wait for it; no grid barrier (route_alone.cuh).
    const int own_tile = route_own_tiles<P>(p, sm);
    if (trace) trace[1] = global_ns();
    if (!place_routes_alone(p, sm.route, own_tile)) return;
    publisher = own_tile >= 0;
  } else {
    unsigned int barrier = 0;
    if (p.given_ids) {
      // The caller routed: its choices replace the gate GEMM, softmax and top-k.
      for (int tile = blockIdx.x; tile < p.token_tiles; tile += gridDim.x) {
        take_given_routing(p, sm.route, tile);
        quantize_for_experts<P>(p, tile, 0, p.hidden);
      }
    } else {
      // Gate GEMM over (token tile, K slice) items: S slices, S times as many blocks work on it,
      // then every warp of the grid routes rows (route_spread). With one slice, each block routes
      // the tiles it computed itself, with no barrier in between.
      const int gate_items = p.token_tiles * p.gate_splits;
      if (p.gate_splits > 1) zero_tile_counts(p);  // route_spread counts by atomics
      for (int item = blockIdx.x; item < gate_items; item += gridDim.x) {
        gate_gemm<P>(p, sm, item / p.gate_splits, item % p.gate_splits);
      }
      if (trace && static_cast<int>(blockIdx.x) < gate_items) {
        trace[kTraceEp + ev_logits_done] = global_ns();
      }
      if (p.gate_splits > 1) {
        if (!grid_barrier(p, ++barrier)) return;
        if (trace) trace[kTraceEp + ev_gate_barrier] = global_ns();
        route_spread(p, static_cast<int>(gridDim.x));
      } else {
        for (int tile = blockIdx.x; tile < p.token_tiles; tile += gridDim.x) {
          gate_route<P>(p, sm, tile);
        }
      }
    }
    if (trace) trace[1] = global_ns();
    if (!grid_barrier(p, ++barrier)) return;

    scan_tile_counts(p);
    if (!grid_barrier(p, ++barrier)) return;
    if (trace) trace[kTraceEp + ev_scanned] = global_ns();

    summarize_routes(p, sm.route);
    // One rank's GEMM0 by TMA (Params::x_rows): the placement also writes x's rows in the
    // experts' order (fp8: quantizes them there), each token tile's by `parts` blocks when the
    // grid has blocks to spare.
    const bool fill = gemm0_by_rows(p);
    const int spare = static_cast<int>(gridDim.x) / p.token_tiles;
    const int parts = fill ? max(1, min(kCopyParts, spare)) : 1;
    const int row_bytes = p.x_pitch * static_cast<int>(sizeof(typename ExpertTiles<P>::Elem));
    for (int item = blockIdx.x; item < p.token_tiles * parts; item += gridDim.x) {
      const int tile = item % p.token_tiles, part = item / p.token_tiles;
      scatter_tile(p, sm.route, tile, part);
      if (fill) {
        fill_x_rows<ExpertTiles<P>::kBlockScaled, ExpertTiles<P>::kRoundToTf32>(
            p, sm.route, tile, part, parts, row_bytes);
      }
    }
    if (trace) trace[kTraceEp + ev_placed] = global_ns();
    if (!grid_barrier(p, ++barrier)) return;
  }

  if (trace) trace[2] = global_ns();
  if (!ep) {
    if (publisher) {
      if (threadIdx.x == 0) {  // read back by stats()
        p.control->k_split = sm.route.k_split;
        p.control->row_tiles = sm.route.row_tiles;
      }
      publish_empty_token_tiles<P>(p, sm);
    }
  } else if (blockIdx.x == 0) {
    subscribe_ep<P>(p, sm, trace);
  } else if (static_cast<int>(blockIdx.x) <= p.dispatch_blocks) {
    dispatch_rows<P>(p, sm, trace);
  }
  long long wait_ns = 0, gemm_ns = 0, combine_ns = 0, tasks = 0;
  long long t_ask = trace ? global_ns() : 0;
  long long first_task = 0, last_gemm_end = t_ask;
  if (threadIdx.x == 0) {  // read by thread 0 after pop_task's first barrier
    sm.task.queue = {ep ? -1 : sm.route.total_tasks, ep ? 0 : sm.route.implicit_tasks,
                     p.gemm0_col_tiles * sm.route.k_split, !ep, 0};
  }
  while (pop_task(p, sm.task)) {
    const Task task = sm.task.task;
    const long long t_got = trace ? global_ns() : 0;
    if (trace) {
      wait_ns += t_got - t_ask;
      if (tasks == 0) first_task = t_got;
      sm.task.math_start = sm.task.math_end = 0;  // (thread 0's: it writes and reads them)
    }
    switch (static_cast<TaskType>(task.head)) {
      case TaskType::gemm0:
      case TaskType::gemm1: {
        const bool second = static_cast<TaskType>(task.head) == TaskType::gemm1;
        if (!ep) {
          run_gemm<P>(p, sm, second, task.a, task.b);
        } else if (second) {
          run_gemm1_ep<P>(p, sm, task.a, task.b);
        } else {
          run_gemm0_ep<P>(p, sm, task.a, task.b);
        }
        break;
      }
      case TaskType::combine: run_combine<P>(p, sm, task.a, task.b); break;
      default:
        if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, static_cast<int>(task.head), 0);
        return;
    }
    if (trace) {
      t_ask = global_ns();
      if (static_cast<TaskType>(task.head) != TaskType::combine) {
        gemm_ns += t_ask - t_got;
        last_gemm_end = t_ask;
      } else {
        combine_ns += t_ask - t_got;
      }
      if (tasks < kTaskRecords) {
        long long* rec = trace + kTraceSlots + kTaskWords * tasks;
        rec[0] = t_got;
        rec[1] = sm.task.math_start;
        rec[2] = sm.task.math_end;
        rec[3] = t_ask;
        rec[4] = static_cast<long long>(task.head & 0xffu) << 56 |
                 static_cast<long long>(task.a & 0xfffffff) << 28 | (task.b & 0xfffffff);
      }
      ++tasks;
    }
  }
  if (trace) {
    trace[3] = global_ns();
    trace[4] = wait_ns;
    trace[5] = gemm_ns;
    trace[6] = tasks;
    trace[7] = tasks > 0 ? first_task : trace[3];
    trace[8] = last_gemm_end;
    trace[9] = combine_ns;
  }
}

template <class P>
__global__ void __launch_bounds__(block_threads<P>(), 1)
    moe_forward_kernel(const __grid_constant__ Params p) {
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // wgmma's swizzled operand tiles need 1024-byte alignment; the launch adds that much slack.
  const unsigned int misalign = static_cast<unsigned int>(__cvta_generic_to_shared(smem_raw)) & 1023u;
  auto& sm = *reinterpret_cast<KernelSmem<P>*>(smem_raw + ((1024u - misalign) & 1023u));

  // The tile GEMM's TMA barriers (GEMM1, tma.cuh); the first use follows a block barrier.
  if (threadIdx.x == 0) {
    init_tma_barriers(sm.gemm.full_tma, P::kStages);
    if constexpr (P::kProducer) {
      init_tma_barriers(sm.gemm.empty_tma, P::kStages, kThreads / 32);  // one arrival per warp
    }
    sm.gemm.tma_phase = 0;
    sm.task.ep_listed = -1;  // ep.cuh, ep_plan
  }
  // The producer warpgroup (producer.cuh) leaves the workers its registers and serves their TMA
  // tile GEMMs until the stop command (below) or an abort. The workers never wait
  // for it at a block barrier: theirs is named barrier 1 of kThreads threads (sync_workers).
  if constexpr (P::kProducer) {
    __syncthreads();  // (once, every thread) the barriers are initialized before the first wait
    if (threadIdx.x >= kThreads) {
      setmaxnreg_dec<kProducerRegs>();
      if (threadIdx.x < kThreads + 32) produce_stages<P>(p, sm.gemm);
      return;
    }
    setmaxnreg_inc<kWorkerRegs>();
  }
  run_workers<P>(p, sm);
  // The stop command, on every way out of the workers' part (the producer may wait for a command
  // at its named barrier, which has no timeout).
  if constexpr (P::kProducer) {
    if (threadIdx.x < 32) command_producer(sm.gemm, -1);
  }
}

template <class P>
constexpr int kernel_smem_bytes() {
  return static_cast<int>(sizeof(KernelSmem<P>)) + 1024;  // + alignment slack (see the kernel)
}

}  // namespace monomoe::device
