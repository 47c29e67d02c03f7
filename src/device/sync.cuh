// Ordering and waiting primitives. Every wait is bounded by the configured timeout and gives up when
// any block has aborted, so a failure turns into an error record, never a hang.
#pragma once

#include <cstdint>

#include "device/params.cuh"

namespace monomoe::device {

// The block barrier of the worker threads (threads 0..kThreads-1, which run every role): named
// barrier 1, so that a precision's producer warpgroup (P::kProducer: threads kThreads.., issuing
// the tile GEMM's TMA loads, kernel.cuh) never has to take part. The same ordering as
// __syncthreads among the workers; without a producer the workers are the block. Through the
// compiler's intrinsic: the same barrier as inline `bar.sync 1, 256` with a memory clobber, with
// which ptxas spilled ~100 bytes in the task loop and GEMM0's tasks ran ~5% longer (perf log
// 2026-12-01 11:15, 11:25).
__device__ __forceinline__ void sync_workers() { __barrier_sync_count(1, kThreads); }
// sync_workers, returning whether `pred` held in every worker thread.
__device__ __forceinline__ bool sync_workers_and(bool pred) {
  int all;
  asm volatile(
      "{\n.reg .pred p, q;\nsetp.ne.s32 p, %1, 0;\nbar.red.and.pred q, 1, %2, p;\n"
      "selp.s32 %0, 1, 0, q;\n}\n"
      : "=r"(all)
      : "r"(static_cast<int>(pred)), "n"(kThreads)
      : "memory");
  return all != 0;
}

__device__ __forceinline__ long long global_ns() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned int ld_acquire_gpu(const unsigned int* p) {
  unsigned int v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned long long ld_acquire_gpu(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release_gpu(unsigned int* p, unsigned int v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
// A strong store without ordering of its own: after a fence, a release of what precedes the fence.
__device__ __forceinline__ void st_relaxed_gpu(unsigned long long* p, unsigned long long v) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// This launch's epoch. Written by call_prologue before the launch (stream order, or the graph's
// edge) and by nothing during it, so the read-only (non-coherent) path is safe.
__device__ __forceinline__ unsigned long long call_epoch(const Params& p) { return __ldg(p.epoch); }

__device__ __forceinline__ int ld_relaxed_gpu(const int* p) {
  int v;
  asm volatile("ld.relaxed.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Records the first error (code, block, details) for the host, without stopping the launch: for
// bad input that the kernel steps around (a given routing's invalid choice, skipped), so that this
// launch and the peers that wait for it finish as usual, and the host still reports it.
__device__ __forceinline__ void record_error(const Params& p, ErrorCode code, int d0, int d1) {
  if (atomicCAS(&p.error->code, 0, static_cast<int>(code)) == 0) {
    p.error->block = static_cast<int>(blockIdx.x);
    p.error->detail0 = d0;
    p.error->detail1 = d1;
  }
}

// Records the first error and raises the abort flag that every wait checks.
__device__ __forceinline__ void raise_error(const Params& p, ErrorCode code, int d0, int d1) {
  record_error(p, code, d0, d1);
  atomicExch(&p.control->abort, 1);
}

__device__ __forceinline__ bool aborted(const Params& p) {
  return ld_relaxed_gpu(&p.control->abort) != 0;
}

// What one poll of a bounded wait found: keep waiting, the awaited state (the wait succeeds), or a
// state from which it can never come (the wait fails without an error).
enum class Poll { wait, ready, never };

// The bounded wait every spin in the kernel goes through (one thread): polls until `poll` answers
// ready (true) or never (false); every kEvery polls (a power of two) it gives up on an abort
// (false) or, once more than `bound_ns` have passed since the first poll, records `code` with
// (d0, d1), raises the abort and gives up. kSleepNs: the pause between polls (0: none).
template <int kEvery, unsigned int kSleepNs, class PollFn>
__device__ __forceinline__ bool spin_bounded(const Params& p, long long bound_ns, ErrorCode code,
                                             int d0, int d1, PollFn&& poll) {
  static_assert(kEvery > 0 && (kEvery & (kEvery - 1)) == 0, "kEvery: a power of two");
  const long long start = global_ns();
  for (int spin = 0;; ++spin) {
    const Poll found = poll();
    if (found != Poll::wait) return found == Poll::ready;
    if ((spin & (kEvery - 1)) == kEvery - 1) {
      if (aborted(p)) return false;
      if (global_ns() - start > bound_ns) {
        raise_error(p, code, d0, d1);
        return false;
      }
    }
    if constexpr (kSleepNs > 0) __nanosleep(kSleepNs);
  }
}

// Spins (one thread) until *word >= target with acquire semantics (Word: unsigned int or unsigned
// long long). Returns false on timeout or abort; on timeout it records `code` itself.
template <class Word>
__device__ __forceinline__ bool wait_at_least(const Params& p, const Word* word, Word target,
                                              ErrorCode code, int detail) {
  return spin_bounded<64, 64>(p, p.timeout_ns, code, detail, static_cast<int>(target), [&] {
    return ld_acquire_gpu(word) >= target ? Poll::ready : Poll::wait;
  });
}

// Makes this block's global writes visible GPU-wide before one of its threads signals a counter:
// each thread's fence orders its own writes, the barrier all of them before the signal.
__device__ __forceinline__ void publish_block_writes() {
  __threadfence();
  sync_workers();
}

// Counts this block's arrival at `counter` (Word: int or unsigned int) once its global writes are
// visible GPU-wide. Returns true, in every thread, in the block that arrives `expected`-th: the
// writes of every block that arrived before are visible to its loads after the call.
template <class Word>
__device__ __forceinline__ bool arrive_last(Word* counter, Word expected) {
  __shared__ int last;
  publish_block_writes();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, Word{1}) == expected - 1;
    if (last) __threadfence();  // acquire side: the other arrivals' writes precede what follows
  }
  sync_workers();
  return last != 0;
}

// Grid-wide barrier number `n` (1, 2, ...) of this launch. All blocks are co-resident (cooperative
// launch). Returns false in every thread if it timed out or some block aborted.
__device__ __forceinline__ bool grid_barrier(const Params& p, unsigned int n) {
  __shared__ int ok;
  publish_block_writes();  // before the block's arrival is counted
  if (threadIdx.x == 0) {
    atomicAdd(&p.control->barrier, 1u);
    ok = wait_at_least(p, &p.control->barrier, n * gridDim.x, ErrorCode::timeout_barrier,
                       static_cast<int>(n));
  }
  sync_workers();
  return ok != 0;
}

}  // namespace monomoe::device
