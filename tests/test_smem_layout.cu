// The tile GEMM's shared-memory layout of B for bf16 with [in, out] weights (device/gemm/
// tile_gemm.cuh), checked on the host: the addresses wgmma reads (CuTe's layout through a shared-
// memory pointer, whose 128-byte swizzle acts on the address) must be where a TMA box with
// CU_TENSOR_MAP_SWIZZLE_128B writes each element (TileGemm::tma_stage), and the cp.async path's
// per-thread plan (a thread's chunks at fixed steps, plan_chunks) must hold for the same layout,
// for the expert tiles and the gate's narrow ones. A wrong order would pass the compiler and give
// wrong sums on the GPU only.
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

// &sB(n, k, s) - base, in elements, for the B layout of a bf16 [in, out] tile of BN columns.
template <int BN>
struct BOffsets {
  using Shapes = TileShapes<PrecBf16<false>, BN>;
  std::unique_ptr<Elem, Freer> mem{static_cast<Elem*>(std::aligned_alloc(1024, 1 << 20))};
  decltype(cute::make_tensor(cute::make_smem_ptr(static_cast<Elem*>(nullptr)),
                             typename Shapes::SmemLayoutB{})) t =
      cute::make_tensor(cute::make_smem_ptr(mem.get()), typename Shapes::SmemLayoutB{});
  int operator()(int n, int k, int s) { return static_cast<int>(&t(n, k, s) - mem.get()); }
};

TEST(SmemLayout, ExpertBTileIsWhereTmaBoxesLand) {
  BOffsets<PrecBf16<false>::kExpertBN> off;
  constexpr int kBN = PrecBf16<false>::kExpertBN, kBK = PrecBf16<false>::kBlockK;
  static_assert(kBK == 64, "a box is 64 columns (128 bytes) x 64 k rows");
  int bad = 0;
  for (int s = 0; s < PrecBf16<false>::kStages; ++s) {
    for (int n = 0; n < kBN; ++n) {
      for (int k = 0; k < kBK; ++k) {
        // Box n / 64 of stage s: 64 rows of 128 bytes; the 16-byte chunk c / 8 of row r is at
        // chunk (c / 8) ^ (r % 8) (the 128-byte swizzle of a 1024-byte aligned box).
        const int c = n % 64, r = k;
        const int bytes = 128 * r + 16 * ((c / 8) ^ (r % 8)) + 2 * (c % 8);
        const int want = s * kBN * kBK + (n / 64) * 64 * kBK + bytes / 2;
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
