// TMA loads for the tile GEMM (tile_gemm.cuh) where both operands' rows are contiguous (bf16
// GEMM1): one thread issues a stage's A box (rows of hidden_act) and B boxes (a 3D tensor map of
// the weights, [experts][K][N] or [experts][N][K], host/tensor_maps.cpp) that complete a
// transaction-count mbarrier; every thread waits on it, bounded like every wait.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only)

#include "device/params.cuh"
#include "device/sync.cuh"

namespace monomoe::device {

// Where a tile GEMM's operands come from when TMA loads them: B's map (the weights), its expert
// (the map's third coordinate), the first K row of the task's K range there, and A's map, first
// row and first K column (a shared expert's slice starts deeper in its W2 than in its A rows).
struct TmaTile {
  const CUtensorMap* map = nullptr;  // the weights
  int expert = 0;
  int k0 = 0;
  int a_k0 = 0;
  const Params* p = nullptr;  // for the bounded wait (abort, timeout)
  int col_lo = 0, col_hi = 0;  // the tile's two column halves (set by the tile GEMM)
  const CUtensorMap* map_a = nullptr;  // A's rows (GEMM1: hidden_act [rows][ffn])
  int a_row0 = 0;                      // the tile's first row there
  // Block-scaled tiles (fp8): the weight scales of the tile's two column halves, one per 128-deep
  // k-tile from the task's first (every tile GEMM reads them, by TMA or not).
  const float* b_scale_lo = nullptr;
  const float* b_scale_hi = nullptr;
};

__device__ __forceinline__ unsigned int smem_addr(const void* ptr) {
  return static_cast<unsigned int>(__cvta_generic_to_shared(ptr));
}

// Once per launch, thread 0: `count` barriers of `arrivals` arrivals each (the stage barriers of
// TMA loads: one, the thread that announces the bytes), made visible to the TMA unit.
__device__ __forceinline__ void init_tma_barriers(unsigned long long* bars, int count,
                                                  unsigned int arrivals = 1) {
  for (int s = 0; s < count; ++s) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bars + s)),
                 "r"(arrivals));
  }
  asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;" ::: "memory");
}

// Threads of a producer command's named barrier (producer.cuh): the producer warp and the
// workers' warp 0.
inline constexpr int kCommandThreads = 64;

// One arrival (release: this thread's preceding accesses to shared memory come first).
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_expect_bytes(unsigned long long* bar, unsigned int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ bool mbar_test(unsigned long long* bar, unsigned int parity) {
  unsigned int done = 0;
  asm volatile(
      "{\n.reg .pred q;\nmbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2;\n"
      "selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(done)
      : "r"(smem_addr(bar)), "r"(parity)
      : "memory");
  return done != 0;
}

// Waits for the phase of `parity` of `bar`. False on abort or past the layer's timeout (recorded
// as timeout_tma: a GEMM1 stage never landed). t.p (in shared memory) is read on the slow path
// only.
__device__ __forceinline__ bool mbar_wait_bounded(const TmaTile& t, unsigned long long* bar,
                                                  unsigned int parity) {
  if (mbar_test(bar, parity)) return true;
  const Params& p = *t.p;
  return spin_bounded<16, 0>(p, p.timeout_ns, ErrorCode::timeout_tma, static_cast<int>(threadIdx.x),
                             static_cast<int>(parity), [&] {
    return mbar_test(bar, parity) ? Poll::ready : Poll::wait;
  });
}

// The box at element coordinates (x innermost, y, z = expert) into shared memory, its bytes counted
// on `bar`. Elements outside the tensor arrive as zeros (and count).
__device__ __forceinline__ void tma_load_box(void* dst, const CUtensorMap* map,
                                             unsigned long long* bar, int x, int y, int z) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(smem_addr(dst)),
      "l"(map), "r"(smem_addr(bar)), "r"(x), "r"(y), "r"(z)
      : "memory");
}

}  // namespace monomoe::device
