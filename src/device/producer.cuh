// Producer role (precisions with P::kProducer: bf16). Threads kThreads.. of every block form one
// warpgroup that hands most of its registers to the workers (setmaxnreg) and, in one warp (lane 0),
// issues the TMA loads of the workers' tile GEMMs whose operands are both contiguous (GEMM1:
// TileGemm::run_wgmma_ws): per tile GEMM one command (the k-tiles to load; the operands are in
// GemmSmem::tma), each k-tile into its stage once the worker warps have released the stage's
// previous k-tile. The workers then wait on stage barriers instead of block barriers, and the
// next k-tiles load while the current ones' MMAs run.
#pragma once

#include "device/gemm/tile_gemm.cuh"

namespace monomoe::device {

// Registers per thread after the split (kernel.cuh). A block starts with the launch's share of
// the register file (64 K / 384 threads: 168 each) and setmaxnreg moves registers between its
// warps within that pool: the producer's 128 threads give 144 each, the workers' 256 take 72.
inline constexpr int kLaunchRegs = 168;
inline constexpr int kProducerRegs = 24;
inline constexpr int kWorkerRegs = 240;
static_assert(kWorkerRegs * kThreads + kProducerRegs * kProducerThreads <=
                  kLaunchRegs * (kThreads + kProducerThreads),
              "the workers' and the producer's registers fit the block's pool");

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

// The producer's wait for the phase of `parity` of a stage's `bar`: bounded like every wait, at
// 4x the timeout so that the workers' own waits, which can name a cause, fire first.
__device__ __forceinline__ bool producer_wait(const Params& p, unsigned long long* bar,
                                              unsigned int parity) {
  if (mbar_test(bar, parity)) return true;
  return spin_bounded<16, 0>(p, 4 * p.timeout_ns, ErrorCode::timeout_tma,
                             static_cast<int>(threadIdx.x), static_cast<int>(parity), [&] {
    return mbar_test(bar, parity) ? Poll::ready : Poll::wait;
  });
}

// The producer warp's loop (warp kThreads / 32; its other three warps have left), until the stop
// command or an abort. A command is a phase of named barrier 2 (the producer warp and the workers'
// warp 0, which wrote it: command_producer), so that the producer sleeps in hardware while the
// workers run other tasks; lane 0 then issues the command's loads. Stage s's fills and the workers'
// releases alternate (every k-tile the workers wait for, they release), and every tile GEMM starts
// at stage 0, so a bit per stage tracks the parity of the release to wait for; the first fill of
// a stage waits for parity 1, which a new barrier passes.
template <class P>
__device__ void produce_stages(const Params& p, GemmSmem<P>& g) {
  using Gemm = TileGemm<ExpertTiles<P>, P::kExpertBN>;
  static_assert(Gemm::kByProducer, "the producer serves TMA tiles only");
  const bool issuer = threadIdx.x % 32 == 0;
  unsigned int empty_parity = ~0u;  // lane 0's
  for (;;) {
    asm volatile("bar.sync 2, %0;" ::"n"(kCommandThreads) : "memory");
    const int k_tiles = g.cmd_k_tiles;
    if (k_tiles < 0) return;
    int ok = 1;
    if (issuer) {
      // The buffer's last use was the workers' (generic proxy: a result tile, a gathered stage),
      // ordered before the command by their barrier and thread 0's fence.
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      for (int kt = 0; kt < k_tiles; ++kt) {
        const int stage = kt % Gemm::kStages;
        if (!producer_wait(p, &g.empty_tma[stage], (empty_parity >> stage) & 1u)) {
          ok = 0;  // the launch is giving up
          break;
        }
        empty_parity ^= 1u << stage;
        Gemm::tma_stage(g, kt, stage);
      }
    }
    if (!__shfl_sync(0xffffffffu, ok, 0)) return;
  }
}

}  // namespace monomoe::device
