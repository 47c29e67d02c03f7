// One 128 x BN output tile C = A[rows] * B[:, cols] computed by a whole block: rows of A are
// gathered through a per-row pointer table (token rows of x, or rows of the activation buffer), B is
// a weight matrix stored [K, N] with N contiguous, or [N, K] with K contiguous when the precision's
// kWeightsKMajor says so (PyTorch's [out, in]); ldb is its row pitch. The stages of a multi-stage
// pipeline are filled as stage_loads.cuh says (cp.async, TMA; tf32 rounded in place), then wgmma
// reads them from shared memory, or shared -> registers and mma.sync / FMA, through CuTe atoms
// (precision.cuh). The fp32 result is left in shared memory for the caller's epilogue.
#pragma once

#include <cute/tensor.hpp>

#include "device/gemm/stage_loads.cuh"

// tf32 on the register-weight path (run_wgmma_rs; docs/hopper-pipeline.md, perf log 2026-11-30
// 07:43). Compile-time settings kept for diagnosis, not for users:
// - MONOMOE_TF32_RS_SLOTS: k8 weight fragments held in registers at once (with 4, ptxas
//   serialized the wgmmas for want of registers).
// - MONOMOE_TF32_RS_GEMM0: 1 puts GEMM0 (gathered x rows by cp.async, rounded by a tokens-only
//   pass) on the path too (2.02 -> 1.935 ms at the default tf32 config); 0 leaves it on run_wgmma.
// - MONOMOE_TF32_RS_COPY: the weights' shared -> register copy atom; AutoVectorizingCopy (each
//   thread's own elements by plain loads) is the fallback to rule ldmatrix out when results look
//   wrong.
#ifndef MONOMOE_TF32_RS_SLOTS
#define MONOMOE_TF32_RS_SLOTS 2
#endif
#ifndef MONOMOE_TF32_RS_GEMM0
#define MONOMOE_TF32_RS_GEMM0 1
#endif
#ifndef MONOMOE_TF32_RS_COPY
#define MONOMOE_TF32_RS_COPY SM75_U32x4_LDSM_N
#endif

namespace monomoe::device {

// One 128 x BN output tile from the stages StageLoads fills (stage_loads.cuh).
template <class P, int BN>
struct TileGemm : StageLoads<P, BN> {
  using Loads = StageLoads<P, BN>;
  using typename Loads::Elem;
  using typename Loads::SmemElem;
  using typename Loads::Smem;
  using typename Loads::SmemLayoutA;
  using typename Loads::SmemLayoutB;
  using typename Loads::ChunkPlan;
  using Loads::kBK;
  using Loads::kStages;
  using Loads::kElemsA;
  using Loads::kCPitch;
  using Loads::kTmaCapable;
  using Loads::load_stage;
  using Loads::plan_chunks;
  using Loads::round_stage;
  using Loads::round_stage_tokens;
  using Loads::tma_stage;

  // kTma (GEMM1, whose A rows are contiguous in hidden_act): both operands by TMA where the
  // precision's tiles allow it (bf16; tf32 with [out, in] weights: StageLoads::kTmaCapable),
  // through the maps of `tma` (b is then not read); otherwise every thread copies them by
  // cp.async. False when a TMA wait gave up (abort or timeout, recorded): the result is then not
  // to be used.
  template <bool kTma = false>
  static __device__ bool run(Smem& sm, const Elem* b, int ldb, int col_lo, int col_hi,
                             int valid_lo, int valid_hi, int k_total, int rows = kTileRows,
                             TmaTile tma = TmaTile{}) {
    if constexpr (kRs && (MONOMOE_TF32_RS_GEMM0 || (kTma && kTmaCapable))) {
      return run_wgmma_rs<kTma>(sm, b, ldb, col_lo, col_hi, valid_lo, valid_hi, k_total, tma);
    } else if constexpr (P::kWgmma) {
      // The producer warpgroup loads both operands (kByProducer: bf16's GEMM1 tiles, whatever
      // their rows: it keeps every stage loading, as the deep pipeline below does for few rows).
      if constexpr (kByProducer && kTma) {
        return run_wgmma_ws(sm, col_lo, col_hi, k_total, rows, tma);
      }
      // Few rows: the deep pipeline (run_wgmma), its own instantiation (one loop for both kept more
      // state live and spilled in the [out, in] kernel).
      if constexpr (kDeepCapable && kTma) {  // GEMM1 (TMA): GEMM0's gathers spilled with it
        if (rows <= kTileRows / 2) {
          return run_wgmma<kTma, true>(sm, b, ldb, col_lo, col_hi, valid_lo, valid_hi, k_total,
                                       rows, tma);
        }
      }
      return run_wgmma<kTma, false>(sm, b, ldb, col_lo, col_hi, valid_lo, valid_hi, k_total, rows,
                                    tma);
    } else {
      run_mma_sync(sm, b, ldb, col_lo, col_hi, valid_lo, valid_hi, k_total);
      return true;
    }
  }

  // Hopper: wgmma reads both operands from the pipeline stage. cp.async (kTma: TMA) fills the
  // stage of k-tile kt + kAhead while the MMAs of k-tiles kt-kInFlight..kt run. Each k-tile: wait
  // for this thread's copies of it (kTma: for the stage's barrier); tf32 (P::kRoundToTf32, only
  // by cp.async here: the gate's tiles, and the expert tiles with MONOMOE_TF32_RS_GEMM0 0): round
  // this thread's chunks to nearest tf32 in place and fence them to the async proxy; one barrier;
  // issue the warpgroup MMAs; refill; wait until at most kInFlight batches are pending. 4 stages,
  // 2 ahead, 1 batch pending, 128 x 256 expert tiles (tf32 with [out, in] weights: 128 x 128 and 5
  // stages before, perf log 2026-11-30 06:41). tf32's expert tiles otherwise run run_wgmma_rs:
  // wgmma truncates unrounded operands (relative error ~1.6e-3 against ~4.6e-4, measured), and a
  // rounding pass over both operands competed with wgmma for shared-memory bandwidth (a third of
  // the task time).
  // Each warpgroup computes 64 of the 128 rows; with at most 64 valid rows (a few-row tile: the
  // last tile of an expert, decode calls) the second warpgroup's rows are all zeros, so it issues
  // no MMAs (its accumulators stay cleared) and only helps load the operands: half the tensor-core
  // work, on tiles that are bound by the weights' bytes.
  // Tiles whose TMA loads the producer warpgroup issues (producer.cuh): the TMA tiles of a kernel
  // precision with a producer.
  static constexpr bool kByProducer = SmemOwnerOf<P>::type::kProducer && kTmaCapable;
  // Tiles that may take the deep pipeline (run_wgmma's kDeep): bf16's expert tiles.
  static constexpr bool kDeepCapable = !P::kRoundToTf32 && BN == P::kExpertBN && P::kWgmma &&
                                       !P::kRegisterWeights;
  static constexpr int kInFlight = 1;                      // MMA batches pending after each k-tile
  static constexpr int kAhead = kStages - kInFlight - 1;   // k-tiles loading ahead of the MMAs

  // Fills stage `stage` with k-tile kt: by TMA from the issuer (kByTma; thread 0), or every
  // thread's cp.async chunks.
  template <bool kByTma>
  static __device__ __forceinline__ void refill_stage(Smem& sm, const ChunkPlan& chunks, int ldb,
                                                      int kt, int stage, bool issuer) {
    if constexpr (kByTma) {
      if (issuer) tma_stage(sm, kt, stage);
    } else {
      load_stage(sm, chunks, ldb, kt, stage);
    }
  }
  // The pipeline's start: the first kAhead k-tiles, one cp.async group each (empty with TMA or
  // past the last k-tile, so that every k-tile waits for the same count). With TMA the buffer's
  // last use was the generic proxy's (the previous result, a combine's staging): ordered before
  // this call's TMA writes by the caller's barrier and the fence here.
  template <bool kByTma>
  static __device__ __forceinline__ void start_stages(Smem& sm, const ChunkPlan& chunks, int ldb,
                                                      int k_tiles, bool issuer) {
    if (issuer) asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#pragma unroll
    for (int s = 0; s < kAhead; ++s) {
      if (s < k_tiles) refill_stage<kByTma>(sm, chunks, ldb, s, s, issuer);
      cp_async_commit();
    }
  }
  // Waits until stage kt % kStages holds k-tile kt for this thread: by TMA (kByTma) its barrier,
  // whose parity bit in `phase` flips (false when the wait gave up: abort or timeout, recorded);
  // by cp.async this thread's group of k-tile kt (the newest kLanding groups may still land).
  template <bool kByTma, int kLanding = kAhead - 1>
  static __device__ __forceinline__ bool wait_stage(Smem& sm, int kt, unsigned int& phase) {
    if constexpr (kByTma) {
      const int stage = kt % kStages;
      const bool landed = mbar_wait_bounded(sm.tma, &sm.full_tma[stage], (phase >> stage) & 1u);
      phase ^= 1u << stage;
      return landed;
    } else {
      cp_async_wait<kLanding>();
      return true;
    }
  }
  // kTma (GEMM1): thread 0 issues each stage's boxes where the cp.async path has every thread
  // copy 12 16-byte chunks; every thread waits on the stage's barrier before the k-tile's
  // barrier, which is then sync_workers_and of the waits, so that a wait that gives up (abort,
  // timeout: recorded) ends the loop in every thread at once.
  template <bool kTma, bool kDeep>
  static __device__ bool run_wgmma(Smem& sm, const Elem* b, int ldb, int col_lo, int col_hi,
                                   int valid_lo, int valid_hi, int k_total, int rows,
                                   TmaTile tma) {
    using namespace cute;
    if (threadIdx.x == 0) {  // read after the barrier (issue, slow waits)
      sm.tma = tma;
      sm.tma.col_lo = col_lo;
      sm.tma.col_hi = col_hi;
    }
    sync_workers();  // sm.rows written by the caller; the previous result fully consumed

    typename P::template TiledMma<BN> tiled;
    auto thr = tiled.get_thread_slice(threadIdx.x);
    SmemElem* sa_ptr = reinterpret_cast<SmemElem*>(sm.buffer);
    Tensor sA = make_tensor(make_smem_ptr(sa_ptr), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(sa_ptr + kElemsA), SmemLayoutB{});
    Tensor tCsA = thr.partition_A(sA);  // (MMA, MMA_M, MMA_K, stage)
    Tensor tCsB = thr.partition_B(sB);
    Tensor tCrA = thr.make_fragment_A(tCsA);  // smem descriptors
    Tensor tCrB = thr.make_fragment_B(tCsB);
    Tensor acc = partition_fragment_C(tiled, Shape<Int<kTileRows>, Int<BN>>{});
    clear(acc);
    // Block-scaled tiles (fp8): each k-tile's sums go into `part` first, then are scaled into acc
    // (promote). Unused otherwise.
    Tensor part = partition_fragment_C(tiled, Shape<Int<kTileRows>, Int<BN>>{});

    const int k_tiles = k_total / kBK;
    const ChunkPlan chunks = plan_chunks(sm, b, ldb, col_lo, col_hi, valid_lo, valid_hi);
    static_assert(kAhead >= 2, "one stage computing, one landing, one refilling, + pending");
    // Warpgroup-uniform: the wgmma fence, commit and wait below are warpgroup-collective.
    const bool mma = rows > kTileRows / 2 || threadIdx.x < kThreads / 2;
    // The stage refilled in iteration kt last held k-tile kt+kAhead-kStages = kt-1-kInFlight,
    // whose MMAs both warpgroups finished before they reached this iteration's barrier (each left
    // at most k-tiles kt-kInFlight..kt-1 pending in iteration kt-1), so one barrier per k-tile
    // suffices.
    // TMA: GEMM1 of bf16 (both weight layouts) and of tf32 with [out, in] weights, whose A rows
    // are contiguous. GEMM0 gathers its A
    // rows, and copies B by cp.async too: B by TMA beside A by cp.async made its tasks ~20% slower,
    // both by TMA made GEMM1's ~5% faster (perf log 2026-11-30 04:51). The gate's narrow tiles
    // and the other precisions copy by cp.async. Decided at compile time: a run-time choice kept
    // both paths' state live (spills).
    constexpr bool by_tma = kTma && kTmaCapable;
    unsigned int phase = sm.tma_phase;  // bit s: the parity of stage s's next phase
    const bool issuer = by_tma && threadIdx.x == 0;
    const auto refill = [&](int kt, int stage) {
      refill_stage<by_tma>(sm, chunks, ldb, kt, stage, issuer);
    };
    start_stages<by_tma>(sm, chunks, ldb, k_tiles, issuer);
    // Makes k-tile kt's stage ready for the MMAs as far as this thread goes: its data has landed
    // (this thread's cp.async group: one per k-tile, of which the newest kAhead - 1 (k-tiles
    // kt+1..) may still be landing; or the stage's TMA barrier, false when that wait gave up), and
    // with tf32 its chunks are rounded and fenced to the async proxy (the rounding's st.shared are
    // the generic proxy's, wgmma's reads the async proxy's). Without rounding no fence (as
    // CUTLASS's cp.async wgmma mainloops): it compiled to MEMBAR.ALL.CTA. (tf32 preparing k-tile
    // kt+1 right after issuing kt's MMAs, to hide the pass under them, was not faster: the pass
    // and wgmma share the shared memory's bandwidth; perf log 2026-11-30 06:32.)
    static_assert(!(by_tma && P::kRoundToTf32), "tf32 by TMA runs run_wgmma_rs");
    const auto prepare = [&](int kt) -> bool {
      // (deep: k-tiles kt+1..kt+kStages-2 may still be landing)
      const bool landed = wait_stage<by_tma, kDeep ? kStages - 2 : kAhead - 1>(sm, kt, phase);
      if constexpr (P::kRoundToTf32) {
        round_stage(sm, chunks, ldb, kt, kt % kStages);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      }
      return landed;
    };
    warpgroup_fence_operand(acc);
    // The promotion of block-scaled tiles: after k-tile kt's MMAs are complete, acc += part *
    // (scale of the element's row for kt) * (scale of its column half for kt). wgmma's fp32
    // fragment of m64nBN (per warpgroup): element i of thread t lies in row (t % 128) / 32 * 16 +
    // (t % 32) / 4 + 8 * ((i / 2) % 2) of the warpgroup's 64, column (i / 4) * 8 + (t % 4) * 2 +
    // i % 2: two rows per thread, and the high column half from i = BN / 4 on (the second half of
    // the thread's BN / 2 elements).
    const int my_row =
        static_cast<int>(threadIdx.x) / 32 * 16 + static_cast<int>(threadIdx.x) % 32 / 4;
    float a_scale[2] = {0.f, 0.f};
    float b_scale[2] = {0.f, 0.f};
    // k-tile kt's scales (loaded while its MMAs run): the rows' activation scales were written in
    // this launch (x quantized by the gate phase, h by GEMM0's epilogue): read through L2.
    const auto load_scales = [&](int kt) {
      if constexpr (P::kBlockScaled) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const float* rs = sm.row_scales[my_row + 8 * s];
          a_scale[s] = rs ? __ldcg(rs + kt) : 0.f;
        }
        b_scale[0] = __ldg(sm.tma.b_scale_lo + kt);
        b_scale[1] = __ldg(sm.tma.b_scale_hi + kt);
      }
    };
    const auto promote = [&] {
      if constexpr (P::kBlockScaled) {
        static_assert(decltype(size(acc))::value == BN / 2, "wgmma m64nBN: BN / 2 floats a thread");
        warpgroup_fence_operand(part);
        const float s[2][2] = {{a_scale[0] * b_scale[0], a_scale[0] * b_scale[1]},
                               {a_scale[1] * b_scale[0], a_scale[1] * b_scale[1]}};
#pragma unroll
        for (int i = 0; i < decltype(size(acc))::value; ++i) {
          acc(i) = fmaf(part(i), s[(i / 2) % 2][i >= BN / 4 ? 1 : 0], acc(i));
        }
      }
    };
    bool ok = true;
    // kDeep (few rows: bf16's expert tiles of at most 64 rows; only the first warpgroup computes,
    // its MMAs of a k-tile take half a full tile's, and the task streams its weights from HBM, 32
    // KB per k-tile): three k-tiles loading instead of two, each k-tile's MMAs waited for at once,
    // and iteration kt refills the stage of k-tile kt - 1 (its MMAs were waited for before this
    // iteration's barrier) with k-tile kt + kStages - 1. (Two k-tiles, 64 KB per SM in flight,
    // streamed a decode call's tasks at ~86% of the HBM rate: perf log 2026-11-30 11:04.)
    static_assert(!kDeep || kDeepCapable, "bf16's expert tiles only");
    static_assert(kAhead == kStages - 2, "the deep pipeline loads one k-tile more than kAhead");
    if constexpr (kDeep) {
      if (kAhead < k_tiles) refill(kAhead, kAhead);
      cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
      const int stage = kt % kStages;
      const bool ready = prepare(kt);
      if constexpr (by_tma) {
        // stage kt complete for every thread (its barrier); k-tile kt-1-kInFlight done (deep: kt-1).
        // A wait that gave up ends the loop in every thread at once.
        if (!sync_workers_and(ready)) {
          ok = false;
          break;
        }
      } else {
        sync_workers();  // stage kt complete for every thread's copies; kt-1-kInFlight done
      }
      const auto issue_mmas = [&] {
        warpgroup_arrive();
        if constexpr (P::kBlockScaled) {
          // Fresh sums for this k-tile: its first k-block overwrites the fragment.
          tiled.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
          for (int kb = 0; kb < decltype(size<2>(tCrA))::value; ++kb) {
            gemm(tiled, tCrA(_, _, kb, stage), tCrB(_, _, kb, stage), part);
            tiled.accumulate_ = GMMA::ScaleOut::One;
          }
        } else {
          gemm(tiled, tCrA(_, _, _, stage), tCrB(_, _, _, stage), acc);
        }
        warpgroup_commit_batch();
        load_scales(kt);
      };
      // Deep and block-scaled: the refill first, then this k-tile's MMAs, waited for at once.
      // Block-scaled (fp8) refills first because GEMM0's cp.async addressing, live beside `part`
      // in flight and `acc`, needed more registers than the kernel has: ptxas then serialized
      // every wgmma of the kernel (advisory C7512: each MMA waited for before the next issued;
      // perf log 2026-11-30 18:08). Removing that did not make fp8 faster (18:30): most likely
      // the two warpgroups' MMAs interleave on the tensor cores.
      constexpr bool kRefillFirst = kDeep || P::kBlockScaled;
      if (!kRefillFirst && mma) issue_mmas();
      // Deep: into the stage of k-tile kt - 1; block-scaled: of k-tile kt - 2 (its MMAs were
      // waited for in iteration kt - 2); otherwise after this k-tile's MMAs were issued.
      const int next = kt + (kDeep ? kStages - 1 : kAhead);
      if (next < k_tiles) refill(next, next % kStages);
      cp_async_commit();
      if (mma) {
        if constexpr (kRefillFirst) {
          issue_mmas();
          // Block-scaled: the promotion reads this k-tile's sums, so none stays pending.
          warpgroup_wait<0>();
        } else {
          warpgroup_wait<kInFlight>();
        }
        promote();
      }
    }
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc);
    cp_async_wait<0>();
    sync_workers();  // all MMAs have read the pipeline: the buffer becomes the result tile
    if (!ok) return false;  // (TMA stages may still be landing: the launch is giving up)
    if (threadIdx.x == 0) sm.tma_phase = phase;  // read again after the next call's first barrier
    store_result(sm, thr, acc);
    return true;
  }

  // kByProducer: run_wgmma's TMA tile without the loads and the block barriers. Warp 0 hands the
  // tile (sm.tma) and its k-tile count to the producer (producer.cuh), which fills the stages as
  // the worker warps release them; each thread waits for stage kt's barrier, its warpgroup issues
  // the k-tile's MMAs and waits until only those are pending, and each warp then releases the
  // stage of k-tile kt - 1 (its MMAs are done): 3 k-tiles load while one computes, and no warp
  // waits for another within the loop. A wait that gives up (abort, timeout: recorded) does not
  // leave the loop (wgmma needs the whole warpgroup): its k-tiles are computed from whatever the
  // stage holds, the later waits give up at once, and the tile reports false after the loop.
  static __device__ bool run_wgmma_ws(Smem& sm, int col_lo, int col_hi, int k_total, int rows,
                                      TmaTile tma) {
    using namespace cute;
    static_assert(kByProducer);
    const int k_tiles = k_total / kBK;
    if (threadIdx.x == 0) {
      sm.tma = tma;
      sm.tma.col_lo = col_lo;
      sm.tma.col_hi = col_hi;
    }
    sync_workers();  // the previous result fully consumed (and sm.rows, unused here, written)
    // (No command without k-tiles: the producer must have taken each command before the next.)
    if (threadIdx.x < 32 && k_tiles > 0) command_producer(sm, k_tiles);

    typename P::template TiledMma<BN> tiled;
    auto thr = tiled.get_thread_slice(threadIdx.x);
    SmemElem* sa_ptr = reinterpret_cast<SmemElem*>(sm.buffer);
    Tensor sA = make_tensor(make_smem_ptr(sa_ptr), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(sa_ptr + kElemsA), SmemLayoutB{});
    Tensor tCsA = thr.partition_A(sA);
    Tensor tCsB = thr.partition_B(sB);
    Tensor tCrA = thr.make_fragment_A(tCsA);
    Tensor tCrB = thr.make_fragment_B(tCsB);
    Tensor acc = partition_fragment_C(tiled, Shape<Int<kTileRows>, Int<BN>>{});
    clear(acc);
    // Warpgroup-uniform: with at most 64 rows the second warpgroup's rows are zeros; it only waits
    // and releases.
    const bool mma = rows > kTileRows / 2 || threadIdx.x < kThreads / 2;
    const bool releaser = threadIdx.x % 32 == 0;
    unsigned int phase = sm.tma_phase;  // bit s: the parity of stage s's next phase
    bool landed = true;
    warpgroup_fence_operand(acc);
    for (int kt = 0; kt < k_tiles; ++kt) {
      const int stage = kt % kStages;
      landed &= wait_stage<true>(sm, kt, phase);
      if (mma) {
        warpgroup_arrive();
        gemm(tiled, tCrA(_, _, _, stage), tCrB(_, _, _, stage), acc);
        warpgroup_commit_batch();
        warpgroup_wait<1>();
      }
      if (kt > 0 && releaser) mbar_arrive(&sm.empty_tma[(kt - 1) % kStages]);
    }
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc);
    if (k_tiles > 0 && releaser) mbar_arrive(&sm.empty_tma[(k_tiles - 1) % kStages]);
    // Every MMA has read the pipeline: the buffer becomes the result tile.
    if (!sync_workers_and(landed)) return false;
    if (threadIdx.x == 0) sm.tma_phase = phase;  // read again after the next call's first barrier
    store_result(sm, thr, acc);
    return true;
  }

  // tf32's expert tiles (P::kRegisterWeights): wgmma with the weights as its register operand, the
  // product transposed (C^T[BN x 128] = W[BN x K] * X[128 x K]^T; M: the tile's columns, two
  // warpgroups of 64 and two M blocks each; N: the 128 token rows), so that the weights are
  // rounded to tf32 in registers on their way from the stage to wgmma, and no pass writes them
  // back to shared memory (the in-place pass and wgmma's own operand reads shared the shared
  // memory's bandwidth: a third of tf32's task time, perf log 2026-11-30 06:32). The token rows
  // are wgmma's shared-memory operand, rounded before: GEMM1's (the activation buffer, by TMA)
  // when GEMM0's epilogue stored them, GEMM0's (gathered x rows, by cp.async) by a pass over this
  // thread's token chunks only. Stages and loads as run_wgmma (the same smem layouts: the token
  // tile is A's, the weight tile B's). Each k-tile's kBK / 8 k-blocks are their own commit
  // groups: k-block g's registers are loaded once group g - kRegSlots (the same registers) is
  // done, so up to kRegSlots - 1 groups stay in flight.
  static constexpr bool kRs = P::kRegisterWeights && BN == P::kExpertBN;
  template <bool kTma>
  static __device__ bool run_wgmma_rs(Smem& sm, const Elem* b, int ldb, int col_lo, int col_hi,
                                      int valid_lo, int valid_hi, int k_total, TmaTile tma) {
    using namespace cute;
    using TiledMmaRs = typename P::TiledMmaRs;
    if (threadIdx.x == 0) {
      sm.tma = tma;
      sm.tma.col_lo = col_lo;
      sm.tma.col_hi = col_hi;
    }
    sync_workers();  // sm.rows written by the caller; the previous result fully consumed

    TiledMmaRs tiled;
    auto thr = tiled.get_thread_slice(threadIdx.x);
    SmemElem* base = reinterpret_cast<SmemElem*>(sm.buffer);
    Tensor sT = make_tensor(make_smem_ptr(base), SmemLayoutA{});             // tokens (128, kBK, s)
    Tensor sW_ = make_tensor(make_smem_ptr(base + kElemsA), SmemLayoutB{});  // weights (BN, kBK, s)
    Tensor sW = as_position_independent_swizzle_tensor(sW_);
    Tensor tCsT = thr.partition_B(sT);          // (MMA, MMA_N, MMA_K, stage)
    Tensor tCrT = thr.make_fragment_B(tCsT);    // smem descriptors
    Tensor tCrW = thr.partition_fragment_A(sW(_, _, 0));  // registers (MMA, MMA_M, MMA_K)
    auto s2r = make_tiled_copy_A(Copy_Atom<MONOMOE_TF32_RS_COPY, SmemElem>{}, tiled);
    auto thr_s2r = s2r.get_thread_slice(threadIdx.x);
    Tensor tXsW = thr_s2r.partition_S(sW);      // (CPY, CPY_M, CPY_K, stage)
    Tensor tXrW = thr_s2r.retile_D(tCrW);       // (CPY, CPY_M, CPY_K)
    Tensor acc = partition_fragment_C(tiled, Shape<Int<BN>, Int<kTileRows>>{});
    clear(acc);
    constexpr int kKBlocks = decltype(size<2>(tCrW))::value;  // k-blocks of a k-tile
    // Register slots for the weights of kRegSlots k-blocks (of the fragment's kKBlocks, the rest
    // unused): k-block g loads into slot g % kRegSlots once group g - kRegSlots is done.
    constexpr int kRegSlots = MONOMOE_TF32_RS_SLOTS;
    static_assert(kRegSlots >= 2 && kRegSlots <= kKBlocks && kKBlocks % kRegSlots == 0);

    const int k_tiles = k_total / kBK;
    const ChunkPlan chunks = plan_chunks(sm, b, ldb, col_lo, col_hi, valid_lo, valid_hi);
    constexpr bool by_tma = kTma && kTmaCapable;
    unsigned int phase = sm.tma_phase;
    const bool issuer = by_tma && threadIdx.x == 0;
    const auto refill = [&](int kt, int stage) {
      refill_stage<by_tma>(sm, chunks, ldb, kt, stage, issuer);
    };
    start_stages<by_tma>(sm, chunks, ldb, k_tiles, issuer);
    // Stage kt ready for this thread: TMA (GEMM1: its tokens rounded already) its barrier; cp.async
    // (GEMM0) its own copies, their token chunks rounded and fenced to the async proxy.
    const auto prepare = [&](int kt) -> bool {
      const bool landed = wait_stage<by_tma>(sm, kt, phase);
      if constexpr (!by_tma) {
        round_stage_tokens(sm, chunks, ldb, kt, kt % kStages);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      }
      return landed;
    };
    warpgroup_fence_operand(acc);
    bool ok = true;
    for (int kt = 0; kt < k_tiles; ++kt) {
      const int stage = kt % kStages;
      const bool ready = prepare(kt);
      // Stage kt complete for every thread; k-tile kt-2's groups done (each warpgroup left at most
      // k-tile kt-1's in flight), so the refill below may overwrite its stage.
      if (!sync_workers_and(ready)) {
        ok = false;
        break;
      }
#pragma unroll
      for (int kb = 0; kb < kKBlocks; ++kb) {
        const int slot = kb % kRegSlots;
        warpgroup_wait<kRegSlots - 1>();  // the group that last read this slot is done
        copy(s2r, tXsW(_, _, kb, stage), tXrW(_, _, slot));
        round_to_tf32(tCrW(_, _, slot));
        warpgroup_fence_operand(tCrW);
        warpgroup_arrive();
        gemm(tiled, tCrW(_, _, slot), tCrT(_, _, kb, stage), acc);
        warpgroup_commit_batch();
      }
      const int next = kt + kAhead;
      if (next < k_tiles) refill(next, next % kStages);
      cp_async_commit();
    }
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc);
    cp_async_wait<0>();
    sync_workers();  // all MMAs have read the pipeline: the buffer becomes the result tile
    if (!ok) return false;
    if (threadIdx.x == 0) sm.tma_phase = phase;
    // C^T into the result tile: element (column m, row n) at n * kCPitch + m.
    Tensor sC = make_tensor(make_smem_ptr(reinterpret_cast<float*>(sm.buffer)),
                            make_layout(make_shape(Int<BN>{}, Int<kTileRows>{}),
                                        make_stride(Int<1>{}, Int<kCPitch>{})));
    Tensor tCsC = thr.partition_C(sC);
    copy(acc, tCsC);
    sync_workers();
    return true;
  }

  template <class ThrMma, class Acc>
  static __device__ __forceinline__ void store_result(Smem& sm, const ThrMma& thr, const Acc& acc) {
    using namespace cute;
    Tensor sC = make_tensor(
        make_smem_ptr(reinterpret_cast<float*>(sm.buffer)),
        make_layout(make_shape(Int<kTileRows>{}, Int<BN>{}),
                    make_stride(Int<kCPitch>{}, Int<1>{})));
    Tensor tCsC = thr.partition_C(sC);
    copy(acc, tCsC);
    sync_workers();
  }

  // Ampere-style: ldmatrix/ld.shared into registers, mma.sync (tf32) or FMA (fp32).
  static __device__ void run_mma_sync(Smem& sm, const Elem* b, int ldb, int col_lo, int col_hi,
                                      int valid_lo, int valid_hi, int k_total) {
    using namespace cute;
    sync_workers();  // sm.rows written by the caller; the previous result fully consumed

    typename P::template TiledMma<BN> mma;
    auto thr = mma.get_thread_slice(threadIdx.x);
    SmemElem* sa_ptr = reinterpret_cast<SmemElem*>(sm.buffer);
    Tensor sA = make_tensor(make_smem_ptr(sa_ptr), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(sa_ptr + kElemsA), SmemLayoutB{});
    Tensor tCrA = thr.partition_fragment_A(sA(_, _, 0));
    Tensor tCrB = thr.partition_fragment_B(sB(_, _, 0));
    Tensor acc = partition_fragment_C(mma, Shape<Int<kTileRows>, Int<BN>>{});
    clear(acc);

    auto copy_a = make_tiled_copy_A(typename P::CopyA{}, mma);
    auto thr_a = copy_a.get_thread_slice(threadIdx.x);
    Tensor tXsA = thr_a.partition_S(sA);
    Tensor tXrA = thr_a.retile_D(tCrA);
    auto copy_b = make_tiled_copy_B(typename P::CopyB{}, mma);
    auto thr_b = copy_b.get_thread_slice(threadIdx.x);
    Tensor tXsB = thr_b.partition_S(sB);
    Tensor tXrB = thr_b.retile_D(tCrB);

    const int k_tiles = k_total / kBK;
    const ChunkPlan chunks = plan_chunks(sm, b, ldb, col_lo, col_hi, valid_lo, valid_hi);
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < k_tiles) load_stage(sm, chunks, ldb, s, s);
      cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; ++kt) {
      cp_async_wait<kStages - 2>();
      // Stage kt has landed for every thread, and every thread is done with stage kt-1, which the
      // load below overwrites.
      sync_workers();
      const int next = kt + kStages - 1;
      if (next < k_tiles) load_stage(sm, chunks, ldb, next, next % kStages);
      cp_async_commit();
      const int stage = kt % kStages;
      constexpr int kBlocks = decltype(size<2>(tCrA))::value;
#pragma unroll
      for (int kb = 0; kb < kBlocks; ++kb) {
        copy(copy_a, tXsA(_, _, kb, stage), tXrA(_, _, kb));
        copy(copy_b, tXsB(_, _, kb, stage), tXrB(_, _, kb));
        if constexpr (P::kRoundToTf32) {
          round_to_tf32(tCrA(_, _, kb));
          round_to_tf32(tCrB(_, _, kb));
        }
        gemm(mma, tCrA(_, _, kb), tCrB(_, _, kb), acc);
      }
    }
    cp_async_wait<0>();
    sync_workers();  // all MMAs have read the pipeline: the buffer becomes the result tile
    store_result(sm, thr, acc);
  }
};

}  // namespace monomoe::device
