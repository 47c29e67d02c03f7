// The task loop of the warp-specialized (bf16) kernel. The producer warpgroup takes tasks from the
// queue and turns each GEMM task into its operand loads (gemm/sm90_mainloop.cuh); the worker
// warpgroups take the tasks from the ring in the same order, run the MMAs, the epilogue from
// registers and what follows a tile (processor.cuh), and run combine tasks themselves. The
// producer is up to a ring's depth of k-tiles ahead, so the next task's loads hide under this
// task's epilogue and the queue's waits under the MMAs.
#pragma once

#include "device/combine.cuh"
#include "device/gemm/sm90_epilogue.cuh"
#include "device/gemm/sm90_mainloop.cuh"
#include "device/processor.cuh"
#include "device/trace.cuh"

namespace monomoe::device {

// What the producer loads for GEMM task (type, tile, col_tile): this thread's A rows (those of
// `plan`) and B's place.
template <class P>
__device__ __forceinline__ bool make_tile_load(const Params& p, KernelSmem<P>& sm, TaskType type,
                                               int tile, int col_tile, const APlan<P>& plan,
                                               TileLoad& out) {
  using Elem = typename P::Elem;
  constexpr int kBN = P::kExpertBN;
  TileRows t;
  if (!tile_rows(p, sm.route, tile, t)) return false;
  out.expert = t.expert;
#pragma unroll
  for (int i = 0; i < APlan<P>::kPieces; ++i) {
    const int r = plan.row0 + i * APlan<P>::kRowStep;
    out.rows[i] = r >= t.rows                 ? nullptr
                  : type == TaskType::gemm0 ? gemm0_row<Elem>(p, t, r)
                                            : static_cast<const Elem*>(p.hidden_act) +
                                                  static_cast<long long>(t.hidden_row0 + r) * p.ffn;
  }
  if (type == TaskType::gemm0) {
    out.b = &p.w1_map;
    const bool swiglu = p.act == Act::swiglu;
    out.col_lo = col_tile * (swiglu ? kBN / 2 : kBN);
    out.col_hi = swiglu ? p.ffn + out.col_lo : out.col_lo + kBN / 2;
    out.n = swiglu ? 2 * p.ffn : p.ffn;
    out.k_tiles = p.hidden / P::kBlockK;
  } else {
    out.b = &p.w2_map;
    out.col_lo = col_tile * kBN;
    out.col_hi = out.col_lo + kBN / 2;
    out.n = p.hidden;
    out.k_tiles = p.ffn / P::kBlockK;
  }
  return true;
}

// Producer warpgroup: every task of this block, in queue order, then the end marker.
template <class P>
__device__ void produce_tasks(const Params& p, KernelSmem<P>& sm) {
  constexpr int kStages = Sm90Tile<P>::kStages;
  const int r = static_cast<int>(threadIdx.x) - kThreads;
  const APlan<P> plan(sm.gemm, r);
  const int total = p.world > 1 ? -1 : sm.route.total_tasks;
  PipeState<kStages> ps;
  for (;;) {
    if (r == 0) {
      Task t;
      take_task(p, total, t);
      sm.ring.next = t;
    }
    sync_producer();
    const Task task = sm.ring.next;
    sync_producer();  // everyone has it before thread 0 takes the next one
    const auto type = static_cast<TaskType>(task.head);
    bool ok = true;
    if (task.head == 0) {
      send_marker(p, sm.ring, ps, StageTask{0, 0, 0, 0});
      return;
    } else if (type == TaskType::combine) {
      ok = send_marker(p, sm.ring, ps, StageTask{task.head, task.a, task.b, 0});
    } else if (type == TaskType::gemm0 || type == TaskType::gemm1) {
      TileLoad tl;
      ok = make_tile_load<P>(p, sm, type, task.a, task.b, plan, tl) &&
           load_tile<P>(p, sm.gemm, sm.ring, ps, plan, tl,
                        StageTask{task.head, task.a, task.b, tl.k_tiles});
    } else {
      ok = false;
    }
    if (!ok) {
      // Raises the abort flag (the first error recorded stays): the workers stop at their next
      // bounded wait.
      if (r == 0) raise_error(p, ErrorCode::bad_task, task.a, task.b);
      return;
    }
  }
}

// Workers: GEMM0 epilogue of a tile, then what follows it.
template <class P, class Acc, class Coord>
__device__ __forceinline__ void finish_gemm0_ws(const Params& p, KernelSmem<P>& sm,
                                                const StageTask& task, const Acc& acc,
                                                const Coord& coord) {
  using Elem = typename P::Elem;
  constexpr int kBN = P::kExpertBN;
  TileRows t;
  if (!tile_rows(p, sm.route, task.a, t)) return;
  const bool swiglu = p.act == Act::swiglu;
  const int w1_cols = swiglu ? 2 * p.ffn : p.ffn;
  const int col_lo = task.b * (swiglu ? kBN / 2 : kBN);
  const int col_hi = swiglu ? p.ffn + col_lo : col_lo + kBN / 2;
  const int out_cols = swiglu ? kBN / 2 : min(kBN, p.ffn - col_lo);
  const Elem* b1 = p.has_bias ? static_cast<const Elem*>(p.b1) +
                                    static_cast<long long>(t.expert) * w1_cols
                              : nullptr;
  Elem* out = static_cast<Elem*>(p.hidden_act) + static_cast<long long>(t.hidden_row0) * p.ffn +
              col_lo;
  switch (swiglu ? Act::swiglu : p.act) {
    case Act::swiglu:
      store_gemm0_regs<Act::swiglu, true>(acc, coord, t.rows, out_cols, b1, col_lo, col_hi, out,
                                          p.ffn);
      break;
    case Act::relu:
      store_gemm0_regs<Act::relu, false>(acc, coord, t.rows, out_cols, b1, col_lo, col_hi, out,
                                         p.ffn);
      break;
    case Act::gelu:
      store_gemm0_regs<Act::gelu, false>(acc, coord, t.rows, out_cols, b1, col_lo, col_hi, out,
                                         p.ffn);
      break;
    default:
      store_gemm0_regs<Act::silu, false>(acc, coord, t.rows, out_cols, b1, col_lo, col_hi, out,
                                         p.ffn);
      break;
  }
  finish_gemm0(p, task.a);
}

// Workers: GEMM1 epilogue of a tile (rows to their source's stage buffer), then its counters.
template <class P, class Acc, class Coord>
__device__ __forceinline__ void finish_gemm1_ws(const Params& p, KernelSmem<P>& sm,
                                                const StageTask& task, const Acc& acc,
                                                const Coord& coord) {
  using Elem = typename P::Elem;
  constexpr int kBN = P::kExpertBN;
  TileRows t;
  if (!tile_rows(p, sm.route, task.a, t)) return;
  sync_workers();  // the previous tile's counter updates have read sm.task
  fill_row_ids(p, sm.task, t);
  sync_workers();
  const int col0 = task.b * kBN;
  const Elem* b2 = p.has_bias ? static_cast<const Elem*>(p.b2) +
                                    static_cast<long long>(t.expert) * p.hidden
                              : nullptr;
  store_gemm1_regs(acc, coord, t.rows, min(kBN, p.hidden - col0), sm.task.row_id, b2, col0,
                   gemm1_stage<Elem>(p, t), p.hidden);
  finish_gemm1(p, sm.task, t);
}

// Workers: every task the producer hands over, until its end marker (or an abort).
template <class P>
__device__ void consume_tasks(const Params& p, KernelSmem<P>& sm, TraceRecorder& trace) {
  using namespace cute;
  using T = Sm90Tile<P>;
  typename P::template TiledMma<T::kBN> mma;
  auto thr = mma.get_thread_slice(threadIdx.x);
  Tensor acc = partition_fragment_C(mma, Shape<Int<T::kBM>, Int<T::kBN>>{});
  const Tensor coord = thr.partition_C(make_identity_tensor(Shape<Int<T::kBM>, Int<T::kBN>>{}));
  PipeState<T::kStages> ps;
  trace.loop_started();
  for (;;) {
    if (!mbar_wait(p, &sm.ring.full[ps.stage], ps.phase, ErrorCode::timeout_pipeline)) break;
    const StageTask task = sm.ring.task[ps.stage];
    const auto type = static_cast<TaskType>(task.type);
    trace.task_taken();
    if (task.type == 0) break;
    if (type == TaskType::combine) {
      if (threadIdx.x % 32 == 0) mbar_arrive(&sm.ring.empty[ps.stage]);  // nothing to read
      ps.advance();
      run_combine<P>(p, task.a, task.b);
      trace.task_done(false);
      continue;
    }
    if (!mma_tile<P>(p, sm.gemm, sm.ring, ps, task.k_tiles, acc)) break;
    if (type == TaskType::gemm0) {
      finish_gemm0_ws<P>(p, sm, task, acc, coord);
    } else {
      finish_gemm1_ws<P>(p, sm, task, acc, coord);
    }
    trace.task_done(true);
  }
  trace.loop_ended();
}

}  // namespace monomoe::device
