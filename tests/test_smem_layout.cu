// The tile GEMM's shared-memory layouts for bf16 (device/gemm/tile_gemm.cuh), checked on the
// host: the addresses wgmma reads (CuTe's layout through a shared-memory pointer, whose 128-byte
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

using Elem = cute::bfloat16_t;

struct Freer {
  void operator()(void* p) const { std::free(p); }
};

// &sB(n, k, s) - base, in elements, for the B layout of a bf16 tile of BN columns.
template <int BN, bool KMajor = false>
struct BOffsets {
  using Shapes = TileShapes<PrecBf16<KMajor>, BN>;
  std::unique_ptr<Elem, Freer> mem{static_cast<Elem*>(std::aligned_alloc(1024, 1 << 20))};
  decltype(cute::make_tensor(cute::make_smem_ptr(static_cast<Elem*>(nullptr)),
                             typename Shapes::SmemLayoutB{})) t =
      cute::make_tensor(cute::make_smem_ptr(mem.get()), typename Shapes::SmemLayoutB{});
  int operator()(int n, int k, int s) { return static_cast<int>(&t(n, k, s) - mem.get()); }
};

// Where TMA's 128-byte swizzle puts byte `col_bytes` of row r of a box: the 16-byte chunk
// col_bytes / 16 of row r goes to chunk (col_bytes / 16) ^ (r % 8) (a 1024-byte aligned box).
int swizzled(int r, int col_bytes) {
  return 128 * r + 16 * ((col_bytes / 16) ^ (r % 8)) + col_bytes % 16;
}

TEST(SmemLayout, ExpertBTileIsWhereTmaBoxesLandOutIn) {
  // [out, in] weights: a box per half of the tile, 128 weight rows (tile columns) of 64 k.
  BOffsets<PrecBf16<true>::kExpertBN, true> off;
  constexpr int kBN = PrecBf16<true>::kExpertBN, kBK = PrecBf16<true>::kBlockK;
  int bad = 0;
  for (int s = 0; s < PrecBf16<true>::kStages; ++s) {
    for (int n = 0; n < kBN; ++n) {
      for (int k = 0; k < kBK; ++k) {
        const int box = n / (kBN / 2), r = n % (kBN / 2);
        const int want = s * kBN * kBK + box * (kBN / 2) * kBK + swizzled(r, 2 * k) / 2;
        if (off(n, k, s) != want && ++bad <= 5) {
          ADD_FAILURE() << "n " << n << " k " << k << " stage " << s << ": " << off(n, k, s)
                        << " vs " << want;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

// GEMM1's A (hidden_act rows, K-major) by TMA: one box of 128 rows x 64 k per stage.
TEST(SmemLayout, ATileIsWhereATmaBoxLands) {
  using Shapes = TileShapes<PrecBf16<false>, PrecBf16<false>::kExpertBN>;
  constexpr int kBK = PrecBf16<false>::kBlockK;
  std::unique_ptr<Elem, Freer> mem{static_cast<Elem*>(std::aligned_alloc(1024, 1 << 20))};
  auto t = cute::make_tensor(cute::make_smem_ptr(mem.get()), typename Shapes::SmemLayoutA{});
  int bad = 0;
  for (int s = 0; s < PrecBf16<false>::kStages; ++s) {
    for (int r = 0; r < kTileRows; ++r) {
      for (int k = 0; k < kBK; ++k) {
        const int got = static_cast<int>(&t(r, k, s) - mem.get());
        const int want = s * kTileRows * kBK + swizzled(r, 2 * k) / 2;
        if (got != want && ++bad <= 5) {
          ADD_FAILURE() << "row " << r << " k " << k << " stage " << s << ": " << got << " vs "
                        << want;
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
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
