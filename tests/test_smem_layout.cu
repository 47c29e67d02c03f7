// The tile GEMM's shared-memory layouts for bf16 and tf32 (device/gemm/tile_gemm.cuh), checked on
// the host: the addresses wgmma reads (CuTe's layout through a shared-memory pointer, whose 128-byte
// swizzle acts on the address) must be where a TMA box with CU_TENSOR_MAP_SWIZZLE_128B writes each
// element (TileGemm::tma_stage), for B in both weight layouts and for A (GEMM1's hidden_act
// rows), and the cp.async path's per-thread plan
// (a thread's chunks at fixed steps, plan_chunks) must hold for the [in, out] layout, for the
// expert tiles and the gate's narrow ones. A wrong order would pass the compiler and give wrong
// sums on the GPU only.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>

#include "device/gemm/tile_gemm.cuh"

namespace monomoe::device {
namespace {

struct Freer {
  void operator()(void* p) const { std::free(p); }
};

// &sB(n, k, s) - base, in elements, for the B layout of precision P's tile of BN columns.
template <int BN, bool KMajor = false, class P = PrecBf16<KMajor>>
struct BOffsets {
  using Shapes = TileShapes<P, BN>;
  using E = typename P::SmemElem;
  std::unique_ptr<E, Freer> mem{static_cast<E*>(std::aligned_alloc(1024, 1 << 20))};
  decltype(cute::make_tensor(cute::make_smem_ptr(static_cast<E*>(nullptr)),
                             typename Shapes::SmemLayoutB{})) t =
      cute::make_tensor(cute::make_smem_ptr(mem.get()), typename Shapes::SmemLayoutB{});
  int operator()(int n, int k, int s) { return static_cast<int>(&t(n, k, s) - mem.get()); }
};

// Where TMA's 128-byte swizzle puts byte `col_bytes` of row r of a box: the 16-byte chunk
// col_bytes / 16 of row r goes to chunk (col_bytes / 16) ^ (r % 8) (a 1024-byte aligned box).
int swizzled(int r, int col_bytes) {
  return 128 * r + 16 * ((col_bytes / 16) ^ (r % 8)) + col_bytes % 16;
}

// [out, in] weights: a box per half of the tile, BN / 2 weight rows (tile columns) of one k-tile
// (128 bytes: bf16 64 k, tf32 32 k).
template <class P>
int out_in_b_box_mismatches() {
  BOffsets<P::kExpertBN, true, P> off;
  constexpr int kBN = P::kExpertBN, kBK = P::kBlockK;
  constexpr int kE = sizeof(typename P::SmemElem);
  static_assert(kBK * kE == 128, "a k-tile row is one 128-byte swizzle row");
  int bad = 0;
  for (int s = 0; s < P::kStages; ++s) {
    for (int n = 0; n < kBN; ++n) {
      for (int k = 0; k < kBK; ++k) {
        const int box = n / (kBN / 2), r = n % (kBN / 2);
        const int want = s * kBN * kBK + box * (kBN / 2) * kBK + swizzled(r, kE * k) / kE;
        if (off(n, k, s) != want && ++bad <= 5) {
          ADD_FAILURE() << "n " << n << " k " << k << " stage " << s << ": " << off(n, k, s)
                        << " vs " << want;
        }
      }
    }
  }
  return bad;
}

TEST(SmemLayout, ExpertBTileIsWhereTmaBoxesLandOutIn) {
  EXPECT_EQ(out_in_b_box_mismatches<PrecBf16<true>>(), 0);
  EXPECT_EQ(out_in_b_box_mismatches<PrecTf32<true>>(), 0);  // tf32 GEMM1 by TMA
}

// GEMM1's A (hidden_act rows, K-major) by TMA: one box of 128 rows x one k-tile per stage.
template <class P>
int a_box_mismatches() {
  using Shapes = TileShapes<P, P::kExpertBN>;
  using E = typename P::SmemElem;
  constexpr int kBK = P::kBlockK, kE = sizeof(E);
  std::unique_ptr<E, Freer> mem{static_cast<E*>(std::aligned_alloc(1024, 1 << 20))};
  auto t = cute::make_tensor(cute::make_smem_ptr(mem.get()), typename Shapes::SmemLayoutA{});
  int bad = 0;
  for (int s = 0; s < P::kStages; ++s) {
    for (int r = 0; r < kTileRows; ++r) {
      for (int k = 0; k < kBK; ++k) {
        const int got = static_cast<int>(&t(r, k, s) - mem.get());
        const int want = s * kTileRows * kBK + swizzled(r, kE * k) / kE;
        if (got != want && ++bad <= 5) {
          ADD_FAILURE() << "row " << r << " k " << k << " stage " << s << ": " << got << " vs "
                        << want;
        }
      }
    }
  }
  return bad;
}

TEST(SmemLayout, ATileIsWhereATmaBoxLands) {
  EXPECT_EQ(a_box_mismatches<PrecBf16<false>>(), 0);
  EXPECT_EQ(a_box_mismatches<PrecTf32<true>>(), 0);  // tf32 GEMM1 by TMA ([out, in] weights)
}

// Which kernels load GEMM1 by TMA (the host encodes the maps for exactly these: gemm1_by_tma).
TEST(SmemLayout, TmaWhereTheLayoutAllows) {
  EXPECT_TRUE((StageLoads<PrecBf16<false>, PrecBf16<false>::kExpertBN>::kTmaCapable));
  EXPECT_TRUE((StageLoads<PrecBf16<true>, PrecBf16<true>::kExpertBN>::kTmaCapable));
  EXPECT_TRUE((StageLoads<PrecTf32<true>, PrecTf32<true>::kExpertBN>::kTmaCapable));
  EXPECT_FALSE((StageLoads<PrecTf32<false>, PrecTf32<false>::kExpertBN>::kTmaCapable));
  EXPECT_FALSE((StageLoads<PrecFp32<true>, PrecFp32<true>::kExpertBN>::kTmaCapable));
  EXPECT_FALSE((StageLoads<PrecBf16<false>, kTileCols>::kTmaCapable));  // the gate's tiles
}

TEST(SmemLayout, ExpertBTileIsWhereTmaBoxesLand) {
  BOffsets<PrecBf16<false>::kExpertBN> off;
  constexpr int kBN = PrecBf16<false>::kExpertBN, kBK = PrecBf16<false>::kBlockK;
  static_assert(kBK == 64, "a box is 64 columns (128 bytes) x 64 k rows");
  int bad = 0;
  for (int s = 0; s < PrecBf16<false>::kStages; ++s) {
    for (int n = 0; n < kBN; ++n) {
      for (int k = 0; k < kBK; ++k) {
        // Box n / 64 of stage s: 64 rows (k) of 128 bytes (64 columns).
        const int want = s * kBN * kBK + (n / 64) * 64 * kBK + swizzled(k, 2 * (n % 64)) / 2;
        if (off(n, k, s) != want && ++bad <= 5) {
          ADD_FAILURE() << "n " << n << " k " << k << " stage " << s << ": " << off(n, k, s)
                        << " vs " << want;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

// plan_chunks (N-major B): thread t copies 8 columns from column (t % (BN / 8)) * 8 of k rows
// t / (BN / 8) + i * (kThreads / (BN / 8)); chunk i of stage s must start at its first chunk's
// offset + i * step + s * stage step, its 8 elements consecutive.
template <int BN>
int chunk_plan_mismatches() {
  BOffsets<BN> off;
  constexpr int kPerRow = BN / 8, kPass = kThreads / kPerRow;
  constexpr int kChunks = BN * PrecBf16<false>::kBlockK / 8 / kThreads;
  int bad = 0;
  for (int t = 0; t < kThreads; ++t) {
    const int k0 = t / kPerRow, n = (t % kPerRow) * 8;
    const int first = off(n, k0, 0);
    const int step = off(n, k0 + kPass, 0) - first, stage = off(n, k0, 1) - first;
    for (int s = 0; s < PrecBf16<false>::kStages; ++s) {
      for (int i = 0; i < kChunks; ++i) {
        for (int e = 0; e < 8; ++e) {
          bad += off(n + e, k0 + i * kPass, s) != first + i * step + s * stage + e ? 1 : 0;
        }
      }
    }
  }
  return bad;
}

TEST(SmemLayout, CpAsyncPlanHoldsForTheBLayout) {
  EXPECT_EQ(chunk_plan_mismatches<PrecBf16<false>::kExpertBN>(), 0);  // expert tiles
  EXPECT_EQ(chunk_plan_mismatches<kTileCols>(), 0);                    // the gate's tiles
}

}  // namespace
}  // namespace monomoe::device
