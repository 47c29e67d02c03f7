// Filling the tile GEMM's pipeline stages (tile_gemm.cuh): the shared-memory shapes of one
// precision's tiles, and how a stage's operands get there: cp.async from every thread (the gathered
// A rows and their B), or TMA from one thread (tma.cuh: both operands of GEMM1, whose A rows are
// contiguous, for bf16 and for tf32 with [out, in] weights), tf32's in-place rounding.
#pragma once

#include <cute/tensor.hpp>

#include "device/gemm/precision.cuh"
#include "device/gemm/tma.cuh"

namespace monomoe::device {

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const unsigned int dst = smem_addr(smem);
  // src-size 0 zero-fills the 16 bytes without reading: rows past the tile's end become zeros.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}
// One 16-byte st.shared (a plain float4 store through the generic pointer was split into four
// 32-bit stores).
__device__ __forceinline__ void st_shared_16(void* smem, float4 v) {
  const unsigned int dst = smem_addr(smem);
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(dst), "f"(v.x), "f"(v.y), "f"(v.z),
               "f"(v.w)
               : "memory");
}
// One 16-byte ld.shared.
__device__ __forceinline__ float4 ld_shared_16(const void* smem) {
  const unsigned int src = smem_addr(smem);
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(src)
               : "memory");
  return v;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Shared memory of the tile GEMMs of one precision: the operand pipeline, reused for the fp32
// result once the MMAs end, sized for the widest tile (the expert GEMMs); the gate's narrower
// tiles use a part of it.
template <class P, int BN>
struct TileShapes {
  using SmemElem = typename P::SmemElem;
  static constexpr int kBK = P::kBlockK;
  // The gate's tiles (kTileCols wide, and not P's expert tiles) have their own, deeper pipeline in
  // the same buffer: cp.async only (no TMA barriers), x read from HBM. (6 stages instead of 4
  // measured level at the default config, perf log 2026-12-01 01:55: the loads' depth is not what
  // the gate phase waits for there; kept, as it costs no shared memory.)
  static constexpr bool kGateTile =
      BN == kTileCols && !(std::is_same_v<ExpertTiles<P>, P> && BN == P::kExpertBN);
  static constexpr int kStages = kGateTile ? P::kGateStages : P::kStages;
  using SmemLayoutA = decltype(cute::tile_to_shape(
      typename P::SmemAtomA{},
      cute::make_shape(cute::Int<kTileRows>{}, cute::Int<kBK>{}, cute::Int<kStages>{})));
  // wgmma with [in, out] weights (B MN-major): the atoms of one 64-column block are consecutive
  // along K, so that a stage's 64 columns x 64 k are one TMA box (8 KB, 128-byte swizzle), as
  // CUTLASS orders MN-major TMA operands; the cp.async path reads the same layout.
  static constexpr bool kBKFirst = P::kWgmma && !P::kWeightsKMajor;
  using SmemLayoutB = decltype(cute::tile_to_shape(
      typename P::SmemAtomB{},
      cute::make_shape(cute::Int<BN>{}, cute::Int<kBK>{}, cute::Int<kStages>{}),
      std::conditional_t<kBKFirst, cute::Step<cute::_2, cute::_1, cute::_3>,
                         cute::Step<cute::_1, cute::_2, cute::_3>>{}));
  static constexpr int kElemsA = cute::cosize_v<SmemLayoutA>;
  static constexpr int kElemsB = cute::cosize_v<SmemLayoutB>;
  static constexpr int kPipeBytes = (kElemsA + kElemsB) * static_cast<int>(sizeof(SmemElem));
  // fp32 result row pitch, padded for the stores of the accumulators (tests/test_smem_layout.cu,
  // SmemLayout.ResultTileStoresAreFreeOfBankConflicts): the MMA fragments' row-major tiles store
  // 2-float pieces of 4 rows per phase, free of bank conflicts with rows 8 banks apart (pad 8; pad
  // 4 took 2 wavefronts); tf32's transposed register-weight tiles (4-byte pieces, rows 2 apart) are
  // free of them with pad 4, and fp32's FMA blocks (16-byte pieces) take 2 with pad 4, 4 with 8.
  static constexpr bool kMmaRowMajorResult =
      (P::kWgmma || P::kRoundToTf32) && !(P::kRegisterWeights && BN == P::kExpertBN);
  static constexpr int kCPitch = BN + (kMmaRowMajorResult ? 8 : 4);
  static constexpr int kCBytes = kTileRows * kCPitch * 4;
  static constexpr int kBufferBytes = kPipeBytes > kCBytes ? kPipeBytes : kCBytes;
};

// The shared memory of kernel precision P's tile GEMMs (its own tiles, and its expert tiles'
// where they differ: fp8's, SmemOwnerOf).
template <class P>
struct GemmSmem {
  static_assert(ExpertTiles<P>::kStages == P::kStages, "one set of TMA stage barriers");
  using Experts = TileShapes<ExpertTiles<P>, ExpertTiles<P>::kExpertBN>;
  static constexpr int kWide = TileShapes<P, P::kExpertBN>::kBufferBytes;
  static constexpr int kNarrow = TileShapes<P, kTileCols>::kBufferBytes;
  // fp8's SwiGLU tiles keep their gate half's fp32 result past the pipeline while the up half's
  // runs (processor.cuh, gemm0_math): a second result tile after the stages.
  static constexpr int kSecondResult = ExpertTiles<P>::kBlockScaled ? Experts::kCBytes : 0;
  static constexpr int kExpertBytes =
      ExpertTiles<P>::kBlockScaled ? Experts::kPipeBytes + kSecondResult : Experts::kBufferBytes;
  static constexpr int kOwn = kWide > kNarrow ? kWide : kNarrow;
  alignas(1024) unsigned char buffer[kOwn > kExpertBytes ? kOwn : kExpertBytes];  // 1024-B atoms
  // A row sources, as the tile's Elem (P's, or its expert tiles'); nullptr rows read as zeros.
  const void* rows[kTileRows];
  // Block-scaled tiles (fp8): each A row's activation scales from the task's first k-tile on (one
  // per 128-deep k-tile); nullptr past the valid rows (scale 0). One unused slot elsewhere.
  const float* row_scales[ExpertTiles<P>::kBlockScaled ? kTileRows : 1];
  // Stages filled by TMA (tma.cuh): a barrier per pipeline stage, initialized once per launch, and
  // the parity of each stage's next phase (bit s), the same in every thread between tile GEMMs.
  unsigned long long full_tma[P::kStages];
  unsigned int tma_phase;
  // With a producer warpgroup (P::kProducer, producer.cuh): a barrier per stage that the worker
  // warps complete once their MMAs have read it (one arrival each), and the command's k-tiles to
  // load (of `tma`; < 0: the block is done), written by thread 0 (command_producer).
  unsigned long long empty_tma[P::kStages];
  int cmd_k_tiles;
  TmaTile tma;  // the current tile GEMM's (run_wgmma), kept here rather than in registers
};

// Workers' warp 0 (every lane): hands the producer warpgroup (producer.cuh) its next command,
// k_tiles k-tiles of g.tma (< 0: stop), once the workers are done with the buffer (their barrier
// precedes: a result tile's reads, a gathered stage).
template <class P>
__device__ __forceinline__ void command_producer(GemmSmem<P>& g, int k_tiles) {
  if (threadIdx.x == 0) {
    g.cmd_k_tiles = k_tiles;
    // The workers' generic-proxy use of the buffer before the producer's TMA writes.
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncwarp();
  asm volatile("bar.arrive 2, %0;" ::"n"(kCommandThreads) : "memory");
}

// How a pipeline stage of a 128 x BN tile is filled: A's gathered rows and B's weight tile by
// cp.async from every thread (a per-thread plan computed once per tile), or both (GEMM1's
// contiguous A rows and its weight tile) by TMA from one thread; tf32's in-place rounding. The B
// columns of the tile come in two halves of BN/2: [0, BN/2) from col_lo, [BN/2, BN) from col_hi (a
// SwiGLU tile holds the gate and up halves of an expert); only the first valid_lo / valid_hi
// columns of each half are read by cp.async (the rest are zeros), so N need not be a multiple of
// BN.
template <class P, int BN>
struct StageLoads : TileShapes<P, BN> {
  using Shapes = TileShapes<P, BN>;
  using Elem = typename P::Elem;
  using SmemElem = typename P::SmemElem;
  using Smem = GemmSmem<typename SmemOwnerOf<P>::type>;
  using typename Shapes::SmemLayoutA;
  using typename Shapes::SmemLayoutB;
  static constexpr int kBN = BN;
  static constexpr int kBK = P::kBlockK;
  static constexpr int kStages = Shapes::kStages;
  static constexpr int kElemsA = Shapes::kElemsA;
  static constexpr bool kBKFirst = Shapes::kBKFirst;
  static constexpr int kCPitch = Shapes::kCPitch;
  static constexpr int kChunkElems = 16 / sizeof(Elem);  // elements per 16-byte copy
  static constexpr int kChunksA = kTileRows * kBK / kChunkElems / kThreads;  // per thread
  static constexpr int kChunksB = BN * kBK / kChunkElems / kThreads;

  static_assert(sizeof(Elem) == sizeof(SmemElem));
  static_assert(kChunksA * kChunkElems * kThreads == kTileRows * kBK, "A tile: whole chunks per thread");
  static_assert(kChunksB * kChunkElems * kThreads == BN * kBK, "B tile: whole chunks per thread");

  static __device__ __forceinline__ const float* result(const Smem& sm) {
    return reinterpret_cast<const float*>(sm.buffer);
  }

  // Where this thread's cp.async chunks of a k-tile go and come from. Thread t copies the A chunks
  // of rows t / kChunksPerRowA + i * kRowsPerPassA at one k offset, and the B chunks of k rows
  // t / kChunksPerRowB + i * kKPerPassB at one column. Successive chunks of a thread are whole
  // swizzle atoms apart (1024 bytes and more), and the 128-byte swizzles only mix address bits
  // inside an atom, so chunk i lands at the first chunk's offset plus i times a fixed step; the
  // stage adds a fixed step too. Computed once per tile, this keeps the swizzle arithmetic out of
  // the main loop (the GPU tests check every layout against the CPU reference).
  static constexpr int kChunksPerRowA = kBK / kChunkElems;
  static constexpr int kChunksPerRowB = BN / kChunkElems;
  static constexpr int kRowsPerPassA = kThreads / kChunksPerRowA;
  static constexpr int kKPerPassB = kThreads / kChunksPerRowB;
  static_assert(kThreads % kChunksPerRowA == 0 && kThreads % kChunksPerRowB == 0,
                "a thread's chunks must share one column (B) and one k offset (A)");
  static_assert(kRowsPerPassA % 8 == 0 && (P::kWeightsKMajor || kKPerPassB % 8 == 0),
                "successive chunks of a thread must be whole 8-row swizzle atoms apart");
  // K-major B ([out, in] weights: tile column n is weight row col_lo + n, or col_hi + n - BN/2 in
  // the high half, K contiguous): B is copied like A, thread t taking piece t % kChunksPerRowBK of
  // tile columns t / kChunksPerRowBK + i * kNPerPassB; the first kLoChunksB of them are in the low
  // half.
  static constexpr int kChunksPerRowBK = kBK / kChunkElems;
  static constexpr int kNPerPassB = kThreads / kChunksPerRowBK;
  static constexpr int kLoChunksB = (BN / 2) / kNPerPassB;
  static_assert(kThreads % kChunksPerRowBK == 0 && kNPerPassB % 8 == 0 &&
                    (BN / 2) % kNPerPassB == 0,
                "K-major B: whole swizzle atoms between a thread's pieces, halves on piece bounds");

  struct ChunkPlan {
    int a_row0, a_k;             // first A row of this thread, its k offset in the k-tile
    int a_smem, a_step, a_stage;  // element offsets in the pipeline buffer
    int b_smem, b_step, b_stage;
    const Elem* b_src;           // this thread's first B chunk of k-tile 0 (K-major: low half)
    const Elem* b_src_hi;        // K-major: its first chunk of the high half
    long long b_pass;            // elements between its successive B chunks (of one half)
    bool b_valid;                // N-major: its column is inside the tile's valid columns
    unsigned int b_valid_mask;   // K-major: bit i: chunk i's column is a valid one
  };

  static __device__ __forceinline__ ChunkPlan plan_chunks(Smem& sm, const Elem* b, int ldb,
                                                          int col_lo, int col_hi, int valid_lo,
                                                          int valid_hi) {
    using namespace cute;
    // Offsets through the smem tensors, as wgmma reads them: the bf16 atoms swizzle the shared
    // memory address itself (smem_ptr_flag), so the layout function alone would not give them.
    SmemElem* base = reinterpret_cast<SmemElem*>(sm.buffer);
    Tensor sa = make_tensor(make_smem_ptr(base), SmemLayoutA{});
    Tensor sb = make_tensor(make_smem_ptr(base + kElemsA), SmemLayoutB{});
    const auto off_a = [&](int r, int k, int s) { return static_cast<int>(&sa(r, k, s) - base); };
    const auto off_b = [&](int n, int k, int s) {
      return static_cast<int>(&sb(n, k, s) - (base + kElemsA));
    };
    const int t = static_cast<int>(threadIdx.x);
    ChunkPlan c;
    c.a_row0 = t / kChunksPerRowA;
    c.a_k = (t % kChunksPerRowA) * kChunkElems;
    c.a_smem = off_a(c.a_row0, c.a_k, 0);
    c.a_step = off_a(c.a_row0 + kRowsPerPassA, c.a_k, 0) - c.a_smem;
    c.a_stage = off_a(c.a_row0, c.a_k, 1) - c.a_smem;
    if constexpr (P::kWeightsKMajor) {
      const int n0 = t / kChunksPerRowBK;
      const int k = (t % kChunksPerRowBK) * kChunkElems;
      c.b_smem = off_b(n0, k, 0);
      c.b_step = off_b(n0 + kNPerPassB, k, 0) - c.b_smem;
      c.b_stage = off_b(n0, k, 1) - c.b_smem;
      c.b_valid_mask = 0;
#pragma unroll
      for (int i = 0; i < kChunksB; ++i) {
        const bool hi = i >= kLoChunksB;
        const int in_half = n0 + (hi ? i - kLoChunksB : i) * kNPerPassB;
        if (in_half < (hi ? valid_hi : valid_lo)) c.b_valid_mask |= 1u << i;
      }
      // Invalid pieces are zero-filled from the matrix's first row (never read past it).
      c.b_src = b + (c.b_valid_mask & 1u ? static_cast<long long>(col_lo + n0) * ldb + k : 0);
      c.b_src_hi = b + ((c.b_valid_mask >> kLoChunksB) & 1u
                            ? static_cast<long long>(col_hi + n0) * ldb + k
                            : 0);
      c.b_pass = static_cast<long long>(kNPerPassB) * ldb;
    } else {
      const int k0 = t / kChunksPerRowB;
      const int n = (t % kChunksPerRowB) * kChunkElems;
      c.b_smem = off_b(n, k0, 0);
      c.b_step = off_b(n, k0 + kKPerPassB, 0) - c.b_smem;
      c.b_stage = off_b(n, k0, 1) - c.b_smem;
      const bool hi = n >= BN / 2;
      const int in_half = hi ? n - BN / 2 : n;
      c.b_valid = in_half < (hi ? valid_hi : valid_lo);
      const int col = (hi ? col_hi : col_lo) + in_half;
      c.b_src = b + static_cast<long long>(k0) * ldb + (c.b_valid ? col : 0);
      c.b_pass = static_cast<long long>(kKPerPassB) * ldb;
    }
    return c;
  }

  // Calls copy(j, smem destination, global source, valid) for each of this thread's chunks of
  // k-tile `kt` in pipeline stage `stage`: j = 0..kChunksA-1 for A, kChunksA.. for B. An invalid
  // chunk (a row past the tile's end, a column past the valid ones) must become zeros; its source
  // is then an address inside B (the matrix's first row), not to be read.
  template <class Copy>
  static __device__ __forceinline__ void for_each_chunk(Smem& sm, const ChunkPlan& c, int ldb,
                                                        int kt, int stage, Copy&& copy) {
    SmemElem* base = reinterpret_cast<SmemElem*>(sm.buffer);
    SmemElem* sa = base + c.a_smem + stage * c.a_stage;
    SmemElem* sb = base + kElemsA + c.b_smem + stage * c.b_stage;
    const int k = kt * kBK + c.a_k;
#pragma unroll
    for (int i = 0; i < kChunksA; ++i) {
      const Elem* src = static_cast<const Elem*>(sm.rows[c.a_row0 + i * kRowsPerPassA]);
      copy(i, sa + i * c.a_step, src ? src + k : c.b_src, src != nullptr);
    }
    if constexpr (P::kWeightsKMajor) {
      const Elem* lo = c.b_src + kt * kBK;
      const Elem* hi = c.b_src_hi + kt * kBK;
#pragma unroll
      for (int i = 0; i < kChunksB; ++i) {
        const bool valid = (c.b_valid_mask >> i) & 1u;
        const Elem* src = i < kLoChunksB ? lo + i * c.b_pass : hi + (i - kLoChunksB) * c.b_pass;
        copy(kChunksA + i, sb + i * c.b_step, valid ? src : lo, valid);
      }
    } else {
      const Elem* bsrc = c.b_src + static_cast<long long>(kt) * kBK * ldb;
#pragma unroll
      for (int i = 0; i < kChunksB; ++i) {
        copy(kChunksA + i, sb + i * c.b_step, bsrc + i * c.b_pass, c.b_valid);
      }
    }
  }

  // Issues the cp.async copies of k-tile `kt` into pipeline stage `stage`.
  static __device__ __forceinline__ void load_stage(Smem& sm, const ChunkPlan& c, int ldb, int kt,
                                                    int stage) {
    for_each_chunk(sm, c, ldb, kt, stage, [](int, SmemElem* dst, const Elem* src, bool valid) {
      cp_async_16(dst, src, valid);
    });
  }

  // Both operands of k-tile `kt` by TMA into stage `stage` (thread 0). A: the 128 rows from row
  // t.a_row0 of the map t.map_a (contiguous rows: GEMM1's hidden_act), one box of 128 rows x kBK
  // (rows past the tile's valid ones feed output rows nobody stores; past the map's end they are
  // zeros). B: the first half's columns from col_lo, the second half's from col_hi; columns past
  // the matrix arrive as zeros (whatever lies past the valid ones only feeds output columns nobody
  // stores). [in, out] weights: BN / kAtomCols boxes of kAtomCols columns (128 bytes) x kBK (map
  // [experts][K][N]); [out, in]: one box per half, BN / 2 weight rows x kBK (map [experts][N][K]),
  // the K-major atoms of consecutive rows being consecutive already. Every k-tile row is one
  // 128-byte swizzle row (bf16: 64 k; tf32: 32 k). tf32's tokens arrive rounded and its weights
  // are rounded in registers (tile_gemm.cuh, run_wgmma_rs).
  static constexpr int kAtomCols = 128 / static_cast<int>(sizeof(SmemElem));
  static constexpr bool kTmaCapable = P::kWgmma && kBK == kAtomCols &&
                                      BN == P::kExpertBN && (kBKFirst || P::kWeightsKMajor);
  static __device__ __forceinline__ void tma_stage(Smem& sm, int kt, int stage) {
    static_assert(kTmaCapable, "wgmma expert tiles whose k-tile rows are 128 bytes");
    const TmaTile& t = sm.tma;
    const int col_lo = t.col_lo, col_hi = t.col_hi;
    constexpr int kBoxes = P::kWeightsKMajor ? 2 : BN / kAtomCols;
    constexpr int kBoxElems = BN * kBK / kBoxes;
    constexpr int kBytes = (kTileRows + BN) * kBK * static_cast<int>(sizeof(SmemElem));
    SmemElem* sa = reinterpret_cast<SmemElem*>(sm.buffer) + stage * (kTileRows * kBK);
    SmemElem* sb = reinterpret_cast<SmemElem*>(sm.buffer) + kElemsA + stage * (BN * kBK);
    mbar_expect_bytes(&sm.full_tma[stage], kBytes);
    tma_load_box(sa, t.map_a, &sm.full_tma[stage], t.a_k0 + kt * kBK, t.a_row0, 0);
#pragma unroll
    for (int box = 0; box < kBoxes; ++box) {
      const int half_box = box % (kBoxes / 2);
      const int col = (box < kBoxes / 2 ? col_lo : col_hi) + half_box * (BN / kBoxes);
      if constexpr (P::kWeightsKMajor) {
        tma_load_box(sb + box * kBoxElems, t.map, &sm.full_tma[stage], t.k0 + kt * kBK, col,
                     t.expert);
      } else {
        tma_load_box(sb + box * kBoxElems, t.map, &sm.full_tma[stage], col, t.k0 + kt * kBK,
                     t.expert);
      }
    }
  }

  // tf32 with register weights (tile_gemm.cuh, run_wgmma_rs): rounds this thread's own chunks of
  // the token rows (A) of stage `stage` in place; the weights are rounded in registers.
  static __device__ __forceinline__ void round_stage_tokens(Smem& sm, const ChunkPlan& c, int ldb,
                                                            int kt, int stage) {
    static_assert(sizeof(Elem) == 4, "fp32 chunks");
    for_each_chunk(sm, c, ldb, kt, stage, [](int j, SmemElem* dst, const Elem*, bool) {
      if (j < kChunksA) st_shared_16(dst, rna_tf32(ld_shared_16(dst)));
    });
  }

  // tf32 on wgmma: rounds this thread's own chunks of stage `stage` to tf32 in place, once its
  // cp.async copies of them have landed (cp.async.wait_group makes them visible to the thread that
  // issued them, so no barrier is needed before; the caller's proxy fence and barrier follow).
  // Zero-filled chunks stay zeros. The tensor cores would truncate (precision.cuh).
  static __device__ __forceinline__ void round_stage(Smem& sm, const ChunkPlan& c, int ldb, int kt,
                                                     int stage) {
    static_assert(sizeof(Elem) == 4, "fp32 chunks");
    for_each_chunk(sm, c, ldb, kt, stage, [](int, SmemElem* dst, const Elem*, bool) {
      st_shared_16(dst, rna_tf32(ld_shared_16(dst)));
    });
  }

  // C[128 x BN] (fp32, in shared memory, pitch kCPitch) = A[rows, 0:K] * B[0:K, cols]. The caller
  // fills sm.rows before the call (rows past `rows` null: they read as zeros); K is a multiple of
  // kBK. Every thread of the block must call.
};

}  // namespace monomoe::device
