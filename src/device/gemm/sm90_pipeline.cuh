// The Hopper pipeline of the expert GEMM tasks (bf16): one producer warpgroup fills a ring of
// shared-memory stages, the two worker warpgroups consume them with wgmma.
//
//   producer (threads kThreads .. kThreads + 127)   consumers (threads 0 .. kThreads - 1)
//   wait empty[s]                                    wait full[s]  (+ proxy fence, see below)
//   thread 0: task[s] (first stage of a task),       read task[s]; wgmma on stage s
//             arrive + expect_tx, TMA of B           after the next stage's MMAs are issued and
//   every thread: cp.async of its A row,             this one's retired: one arrive per warp on
//             arrive (noinc) when they land           empty[s]
//
// full[s] completes when its 1 + kProducerThreads arrivals have come and the TMA bytes have landed;
// empty[s] when all kThreads / 32 consumer warps have released it. Tasks travel through the ring
// with their first stage, so the producer runs up to kStages k-tiles ahead, across task boundaries:
// the next task's loads overlap this task's epilogue. Stages that carry no operands (a combine task,
// the end) complete full[s] by plain arrivals.
//
// Every wait is bounded by the layer's timeout and gives up when any block has aborted (sync.cuh).
#pragma once

#include <cuda.h>  // CUtensorMap (a type only)

#include "device/params.cuh"
#include "device/sync.cuh"

namespace monomoe::device {

inline constexpr int kProducerThreads = 128;  // one warpgroup
inline constexpr int kWsThreads = kThreads + kProducerThreads;
// Registers after setmaxnreg: 2 x 128 x 224 + 128 x 56 = 64512 <= 65536 per SM.
inline constexpr int kConsumerRegs = 224;
inline constexpr int kProducerRegs = 56;

// What a stage carries besides operands: the task it belongs to (valid in its first stage).
struct StageTask {
  std::uint32_t type;  // TaskType, or 0 = no more tasks
  std::int32_t a, b;
  std::int32_t k_tiles;  // stages of this task (GEMM), 0 for a combine task
};
static_assert(sizeof(StageTask) == 16);

template <int Stages>
struct RingSmem {
  unsigned long long full[Stages];
  unsigned long long empty[Stages];
  StageTask task[Stages];
  Task next;  // the producer's thread 0 hands each popped task to the other producer threads
};

__device__ __forceinline__ unsigned int smem_u32(const void* ptr) {
  return static_cast<unsigned int>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(arrivals));
}
// Release: this thread's shared-memory writes before it are visible to whoever sees the phase end.
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned long long* bar, unsigned int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
// One arrival once this thread's earlier cp.async copies have landed (counted in the init count).
__device__ __forceinline__ void cp_async_arrive_noinc(unsigned long long* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_u32(bar))
               : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(unsigned long long* bar, unsigned int parity) {
  unsigned int done = 0;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits for the phase of `parity` to complete. False on timeout (recorded as `code`) or abort.
// The bound is four timeouts: a stage stays empty while the producer waits for a task, and the
// waits that can name a cause (a late peer, an empty queue slot: twice the timeout) go first.
__device__ __forceinline__ bool mbar_wait(const Params& p, unsigned long long* bar,
                                          unsigned int parity, ErrorCode code) {
  if (mbar_try_wait(bar, parity)) return true;
  const long long start = global_ns();
  for (int spin = 0;; ++spin) {
    if (mbar_try_wait(bar, parity)) return true;
    if ((spin & 15) == 15) {
      if (aborted(p)) return false;
      if (global_ns() - start > 4 * p.timeout_ns) {
        raise_error(p, code, static_cast<int>(threadIdx.x), static_cast<int>(parity));
        return false;
      }
    }
  }
}

// TMA: the box at element coordinates (x innermost, y, z) of a 3D tensor map into shared memory,
// counted in bytes on `bar`. Elements outside the tensor arrive as zeros.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map,
                                            unsigned long long* bar, int x, int y, int z) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(smem_u32(dst)),
      "l"(map), "r"(smem_u32(bar)), "r"(x), "r"(y), "r"(z)
      : "memory");
}

// Ring position: `phase` is the parity of the phase to wait for; it flips every lap.
template <int Stages>
struct PipeState {
  int stage = 0;
  unsigned int phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == Stages) {
      stage = 0;
      phase ^= 1u;
    }
  }
};

template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}

// Barrier of the producer warpgroup alone (named barrier 2).
__device__ __forceinline__ void sync_producer() {
  asm volatile("bar.sync 2, %0;" ::"n"(kProducerThreads) : "memory");
}

template <int Stages>
__device__ __forceinline__ void init_ring(RingSmem<Stages>& ring) {
  if (threadIdx.x == 0) {
    for (int s = 0; s < Stages; ++s) {
      mbar_init(&ring.full[s], 1 + kProducerThreads);
      mbar_init(&ring.empty[s], kThreads / 32);
    }
    // The initialized barriers must be visible to the other threads and to the TMA unit.
    asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;" ::: "memory");
  }
}

}  // namespace monomoe::device
