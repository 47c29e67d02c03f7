// The two halves of one 128 x 256 expert GEMM tile on the ring of sm90_pipeline.cuh:
//   load_tile (producer warpgroup)   per k-tile: B (a weight matrix stored [experts][K][N]) by TMA,
//                                    4 boxes of 64 columns x 64 k; A (128 gathered rows, K
//                                    contiguous) by cp.async, one row per producer thread
//   mma_tile (consumer warpgroups)   wgmma m64n256k16 per warpgroup on its 64 rows, one MMA batch
//                                    in flight, each stage released once its MMAs have retired
// The shared-memory layouts are the ones wgmma reads: A K-major and B N-major, both in 128-byte
// swizzled atoms; a TMA box of 64 columns x 64 k rows with 128-byte swizzle lands as 8 B atoms
// stacked along K, which is why B's atoms are tiled K-first.
#pragma once

#include <cute/tensor.hpp>

#include "device/gemm/precision.cuh"
#include "device/gemm/sm90_pipeline.cuh"
#include "device/gemm/tile_gemm.cuh"

namespace monomoe::device {

template <class P>
struct Sm90Tile {
  using Elem = typename P::Elem;
  using SmemElem = typename P::SmemElem;
  static constexpr int kBM = kTileRows;
  static constexpr int kBN = P::kExpertBN;
  static constexpr int kBK = P::kBlockK;
  static constexpr int kStages = P::kStages;
  static constexpr int kBoxCols = 128 / static_cast<int>(sizeof(Elem));  // one 128-byte swizzle row
  using SmemLayoutA = decltype(cute::tile_to_shape(
      typename P::SmemAtomA{},
      cute::make_shape(cute::Int<kBM>{}, cute::Int<kBK>{}, cute::Int<kStages>{})));
  using SmemLayoutB = decltype(cute::tile_to_shape(
      typename P::SmemAtomB{},
      cute::make_shape(cute::Int<kBN>{}, cute::Int<kBK>{}, cute::Int<kStages>{}),
      cute::Step<cute::_2, cute::_1, cute::_3>{}));
  static constexpr int kElemsA = cute::cosize_v<SmemLayoutA>;
  static constexpr int kStageElemsA = kBM * kBK;
  static constexpr int kStageElemsB = kBN * kBK;
  static constexpr int kBoxElems = kBoxCols * kBK;
  static constexpr int kChunks = kBK * static_cast<int>(sizeof(Elem)) / 16;  // 16-byte A pieces per row

  static_assert(kBN == 256 && kBK == kBoxCols, "a B stage is 4 boxes of 64 columns x 64 k rows");
  static_assert(cute::cosize_v<SmemLayoutA> == kStageElemsA * kStages);
  static_assert((kElemsA + kStageElemsB * kStages) * sizeof(SmemElem) <=
                    sizeof(GemmSmem<P>::buffer),
                "the ring lives in the tile GEMM's buffer");

  static __device__ __forceinline__ SmemElem* base(GemmSmem<P>& g) {
    return reinterpret_cast<SmemElem*>(g.buffer);
  }
};

// The A pieces one producer thread copies per stage: 16-byte piece `chunk` (of the kChunks of a
// row's k-tile) of rows row0 + i * kRowStep, i < kPieces. Eight consecutive threads cover one
// row's 128 bytes: each warp reads whole lines of global memory and writes 4 consecutive 128-byte
// smem rows (no bank conflicts). The 128-byte swizzle moves a piece by (row % 8), the same for all
// i, so piece i lands at off + i * kRowStep rows.
template <class P>
struct APlan {
  using T = Sm90Tile<P>;
  static constexpr int kRowStep = kProducerThreads / T::kChunks;  // 16 rows
  static constexpr int kPieces = T::kBM / kRowStep;               // 8 per thread and stage
  static_assert(kRowStep % 8 == 0, "piece i must keep the swizzle phase of piece 0");
  int row0, chunk, off, step;
  __device__ APlan(GemmSmem<P>& g, int t) : row0(t / T::kChunks), chunk(t % T::kChunks) {
    using namespace cute;
    typename T::SmemElem* b = T::base(g);
    Tensor sa = make_tensor(make_smem_ptr(b), typename T::SmemLayoutA{});
    constexpr int kPieceElems = 16 / static_cast<int>(sizeof(typename T::Elem));
    off = static_cast<int>(&sa(row0, chunk * kPieceElems, 0) - b);
    step = static_cast<int>(&sa(row0 + kRowStep, chunk * kPieceElems, 0) - b) - off;
  }
};

// What the producer needs to load one tile.
struct TileLoad {
  const void* rows[APlan<PrecBf16>::kPieces];  // this thread's A rows (K contiguous), nullptr past
                                               // the tile's rows
  const CUtensorMap* b;  // weights [experts][K][N] as a 3D tensor map
  int expert;           // z coordinate of B
  int col_lo, col_hi;   // B columns [col_lo, +128) and [col_hi, +128)
  int n;                // B's columns: boxes at or past n are not loaded (their MMA columns are
                        // never stored)
  int k_tiles;
};

// Producer warpgroup: the k-tiles of one tile into the ring. The first stage carries `task`.
template <class P, int Stages>
__device__ __forceinline__ bool load_tile(const Params& p, GemmSmem<P>& g, RingSmem<Stages>& ring,
                                          PipeState<Stages>& ps, const APlan<P>& plan,
                                          const TileLoad& t, const StageTask& task) {
  using T = Sm90Tile<P>;
  using Elem = typename T::Elem;
  constexpr int kPieceElems = 16 / static_cast<int>(sizeof(Elem));
  const bool leader = threadIdx.x == kThreads;
  const Elem* dummy = static_cast<const Elem*>(p.w1);  // a valid address for zero-filled copies
  for (int kt = 0; kt < t.k_tiles; ++kt, ps.advance()) {
    // The first lap waits for the phase before the barrier's first, which counts as completed.
    if (!mbar_wait(p, &ring.empty[ps.stage], ps.phase ^ 1u, ErrorCode::timeout_pipeline)) {
      return false;
    }
    typename T::SmemElem* sa = T::base(g) + ps.stage * T::kStageElemsA;
    typename T::SmemElem* sb = T::base(g) + T::kElemsA + ps.stage * T::kStageElemsB;
    if (leader) {
      if (kt == 0) ring.task[ps.stage] = task;  // published by the arrivals below
      // N is a multiple of 128: a box lies wholly inside B or wholly past its end.
      const int boxes = 2 * ((t.col_lo < t.n ? 1 : 0) + (t.col_hi < t.n ? 1 : 0));
      mbar_arrive_expect_tx(&ring.full[ps.stage], boxes * T::kBoxElems * sizeof(typename T::SmemElem));
#pragma unroll
      for (int box = 0; box < 4; ++box) {
        const int col = (box < 2 ? t.col_lo : t.col_hi) + (box % 2) * T::kBoxCols;
        if (col < t.n) {
          tma_load_3d(sb + box * T::kBoxElems, t.b, &ring.full[ps.stage], col, kt * T::kBK,
                      t.expert);
        }
      }
    }
    const int k = kt * T::kBK + plan.chunk * kPieceElems;
#pragma unroll
    for (int i = 0; i < APlan<P>::kPieces; ++i) {
      const Elem* row = static_cast<const Elem*>(t.rows[i]);
      cp_async_16(sa + plan.off + i * plan.step, row ? row + k : dummy, row != nullptr);
    }
    cp_async_arrive_noinc(&ring.full[ps.stage]);
  }
  return true;
}

// Producer warpgroup: a stage without operands (a combine task, or type 0 = the end).
template <int Stages>
__device__ __forceinline__ bool send_marker(const Params& p, RingSmem<Stages>& ring,
                                            PipeState<Stages>& ps, const StageTask& task) {
  if (!mbar_wait(p, &ring.empty[ps.stage], ps.phase ^ 1u, ErrorCode::timeout_pipeline)) {
    return false;
  }
  if (threadIdx.x == kThreads) {
    ring.task[ps.stage] = task;
    mbar_arrive(&ring.full[ps.stage]);  // the arrival TMA's expect_tx would have made
  }
  mbar_arrive(&ring.full[ps.stage]);
  ps.advance();
  return true;
}

// Consumer warpgroups: acc (this thread's part of the 128 x 256 fp32 tile) = A * B over k_tiles
// stages, starting at ps (whose first stage the caller has already waited for).
template <class P, int Stages, class Acc>
__device__ __forceinline__ bool mma_tile(const Params& p, GemmSmem<P>& g, RingSmem<Stages>& ring,
                                         PipeState<Stages>& ps, int k_tiles, Acc& acc) {
  using T = Sm90Tile<P>;
  using namespace cute;
  typename P::template TiledMma<T::kBN> mma;
  auto thr = mma.get_thread_slice(threadIdx.x);
  Tensor sA = make_tensor(make_smem_ptr(T::base(g)), typename T::SmemLayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(T::base(g) + T::kElemsA), typename T::SmemLayoutB{});
  Tensor tCrA = thr.make_fragment_A(thr.partition_A(sA));  // smem descriptors
  Tensor tCrB = thr.make_fragment_B(thr.partition_B(sB));
  const bool warp_leader = threadIdx.x % 32 == 0;
  clear(acc);
  warpgroup_fence_operand(acc);
  int held = -1;  // the stage whose MMAs may still run
  // A failed wait does not leave the loop: a wgmma under a condition with the accumulators live
  // makes ptxas serialize every wgmma (C7518). After an abort every later wait fails at once and
  // the result is discarded.
  bool ok = true;
  for (int kt = 0; kt < k_tiles; ++kt) {
    if (kt > 0) ok = mbar_wait(p, &ring.full[ps.stage], ps.phase, ErrorCode::timeout_pipeline) && ok;
    // A came through cp.async (the generic proxy); wgmma reads through the async proxy.
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    warpgroup_arrive();
    gemm(mma, tCrA(_, _, _, ps.stage), tCrB(_, _, _, ps.stage), acc);
    warpgroup_commit_batch();
    warpgroup_wait<1>();  // the previous stage's MMAs have retired: release it
    if (held >= 0 && warp_leader) mbar_arrive(&ring.empty[held]);
    held = ps.stage;
    ps.advance();
  }
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc);
  if (held >= 0 && warp_leader) mbar_arrive(&ring.empty[held]);
  return ok;
}

}  // namespace monomoe::device
