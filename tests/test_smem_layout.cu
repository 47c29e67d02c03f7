// The tile GEMM's shared-memory layouts for bf16 and tf32 (device/gemm/tile_gemm.cuh), checked on
// the host: the addresses wgmma reads (CuTe's layout through a shared-memory pointer, whose 128-byte
// swizzle acts on the address) must be where a TMA box with CU_TENSOR_MAP_SWIZZLE_128B writes each
// element (TileGemm::tma_stage), for B in both weight layouts and for A (GEMM1's hidden_act
// rows), and the cp.async path's per-thread plan
// (a thread's chunks at fixed steps, plan_chunks) must hold for the [in, out] layout, for the
// expert tiles and the gate's narrow ones. A wrong order would pass the compiler and give wrong
// sums on the GPU only.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

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

// The gate's 128-wide tiles run a deeper pipeline than the expert tiles where they are not the
// precision's expert tiles (stage_loads.cuh, TileShapes::kGateTile), inside the buffer the expert
// tiles need anyway: the deeper pipeline costs no shared memory.
template <class P>
void expect_gate_pipeline_in_the_expert_buffer(int gate_stages) {
  using Gate = TileShapes<P, kTileCols>;
  using Expert = TileShapes<ExpertTiles<P>, ExpertTiles<P>::kExpertBN>;
  EXPECT_EQ(Gate::kStages, gate_stages);
  EXPECT_EQ(Expert::kStages, ExpertTiles<P>::kStages);  // the expert tiles keep theirs
  EXPECT_LE(Gate::kBufferBytes,
            std::max(Expert::kBufferBytes, static_cast<int>(GemmSmem<P>::kExpertBytes)));
}
TEST(SmemLayout, GateTilesPipelineDeeperInTheExpertBuffer) {
  EXPECT_TRUE((TileShapes<PrecBf16<false>, kTileCols>::kGateTile));
  EXPECT_FALSE((TileShapes<PrecBf16<false>, PrecBf16<false>::kExpertBN>::kGateTile));
  expect_gate_pipeline_in_the_expert_buffer<PrecBf16<false>>(6);
  expect_gate_pipeline_in_the_expert_buffer<PrecBf16<true>>(6);
  expect_gate_pipeline_in_the_expert_buffer<PrecTf32<true>>(6);
  expect_gate_pipeline_in_the_expert_buffer<PrecFp8>(6);  // fp8's gate: bf16 [out, in] tiles
  // Where the gate's tile is the expert tile (128 wide), one pipeline serves both, unchanged.
  EXPECT_FALSE((TileShapes<PrecTf32<false>, kTileCols>::kGateTile));
  EXPECT_FALSE((TileShapes<PrecFp32<false>, kTileCols>::kGateTile));
  EXPECT_FALSE((TileShapes<Fp8Tiles, Fp8Tiles::kExpertBN>::kGateTile));
  expect_gate_pipeline_in_the_expert_buffer<PrecTf32<false>>(PrecTf32<false>::kStages);
  expect_gate_pipeline_in_the_expert_buffer<PrecFp32<false>>(PrecFp32<false>::kStages);
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

// The store of the fp32 result tile into shared memory (TileGemm::store_result: CuTe's copy of the
// accumulator fragment, vectorized over the elements that are consecutive in both; run_wgmma_rs's
// transposed tile likewise): shared-memory wavefronts that one warp's store instructions take, over
// the minimum they could take (1.0: free of bank conflicts). Model: a warp's access of V-byte
// pieces goes in V / 4 phases of 128 / V lanes; a phase takes as many wavefronts as the most
// distinct 32-bit words any one bank holds.
struct StoreCost {
  long wavefronts = 0, minimum = 0;
  double ratio() const { return static_cast<double>(wavefronts) / static_cast<double>(minimum); }
};

// offsets(t): thread t's element offsets (in floats) in fragment order.
template <class Offsets>
StoreCost result_store_cost(Offsets&& offsets) {
  std::vector<std::vector<int>> per(kThreads);
  for (int t = 0; t < kThreads; ++t) per[static_cast<std::size_t>(t)] = offsets(t);
  const int n = static_cast<int>(per[0].size());
  // The widest piece (up to 16 bytes) whose elements are consecutive and aligned in every thread.
  int vec = 4;
  const auto fits = [&](int v) {
    for (const auto& o : per) {
      for (int i = 0; i < n; i += v) {
        if (o[static_cast<std::size_t>(i)] % v != 0) return false;
        for (int e = 1; e < v; ++e) {
          if (o[static_cast<std::size_t>(i + e)] != o[static_cast<std::size_t>(i)] + e) return false;
        }
      }
    }
    return true;
  };
  while (vec > 1 && (n % vec != 0 || !fits(vec))) vec /= 2;
  StoreCost cost;
  const int lanes_per_phase = 32 / vec;
  for (int warp = 0; warp < kThreads / 32; ++warp) {
    for (int i = 0; i < n; i += vec) {  // one store instruction
      for (int phase = 0; phase < vec; ++phase) {
        std::vector<std::vector<int>> words(32);  // distinct words per bank
        for (int l = phase * lanes_per_phase; l < (phase + 1) * lanes_per_phase; ++l) {
          const auto& o = per[static_cast<std::size_t>(warp * 32 + l)];
          for (int e = 0; e < vec; ++e) {
            const int w = o[static_cast<std::size_t>(i + e)];
            auto& b = words[static_cast<std::size_t>(w % 32)];
            if (std::find(b.begin(), b.end(), w) == b.end()) b.push_back(w);
          }
        }
        std::size_t most = 1;
        for (const auto& b : words) most = std::max(most, b.size());
        cost.wavefronts += static_cast<long>(most);
        cost.minimum += 1;
      }
    }
  }
  return cost;
}

// Row-major result tiles ([128][kCPitch]) of a precision's tiled MMA for BN columns.
template <class P, int BN>
StoreCost row_major_store_cost(int pitch = TileShapes<P, BN>::kCPitch) {
  using namespace cute;
  typename P::template TiledMma<BN> tiled;
  Tensor id = make_identity_tensor(make_shape(Int<kTileRows>{}, Int<BN>{}));
  return result_store_cost([&](int t) {
    Tensor c = tiled.get_thread_slice(t).partition_C(id);
    std::vector<int> o;
    for (int i = 0; i < size(c); ++i) {
      o.push_back(get<0>(c(i)) * pitch + get<1>(c(i)));
    }
    return o;
  });
}

TEST(SmemLayout, ResultTileStoresAreFreeOfBankConflicts) {
  using namespace cute;
  EXPECT_EQ((row_major_store_cost<PrecBf16<false>, 256>().ratio()), 1.0);  // bf16 expert tiles
  EXPECT_EQ((row_major_store_cost<PrecBf16<true>, 256>().ratio()), 1.0);
  EXPECT_EQ((row_major_store_cost<PrecBf16<false>, kTileCols>().ratio()), 1.0);  // the gate's
  EXPECT_EQ((row_major_store_cost<PrecTf32<true>, kTileCols>().ratio()), 1.0);   // tf32 gate
  EXPECT_EQ((row_major_store_cost<PrecTf32<false>, 128>().ratio()), 1.0);  // mma.sync
  // Strict fp32 (FMA, 8 x 8 blocks per thread, 16-byte pieces): 2 wavefronts per phase at its pad
  // of 4, the least of the pads 0..16 (8: 4).
  EXPECT_EQ((row_major_store_cost<PrecFp32<false>, 128>().ratio()), 2.0);
  EXPECT_EQ((row_major_store_cost<PrecFp32<false>, 128>(128 + 8).ratio()), 4.0);
  // What the pad of 8 fixed: with 4 the MMA tiles' stores took twice the wavefronts.
  EXPECT_EQ((row_major_store_cost<PrecBf16<false>, 256>(256 + 4).ratio()), 2.0);
  // tf32's register-weight tiles: C^T [BN][128 rows], element (column m, row n) at n * kCPitch + m.
  using Rs = PrecTf32<true>;
  constexpr int kBN = Rs::kExpertBN;
  typename Rs::TiledMmaRs rs;
  Tensor id = make_identity_tensor(make_shape(Int<kBN>{}, Int<kTileRows>{}));
  const StoreCost transposed = result_store_cost([&](int t) {
    Tensor c = rs.get_thread_slice(t).partition_C(id);
    std::vector<int> o;
    for (int i = 0; i < size(c); ++i) {
      o.push_back(get<1>(c(i)) * TileShapes<Rs, kBN>::kCPitch + get<0>(c(i)));
    }
    return o;
  });
  EXPECT_EQ(transposed.ratio(), 1.0);
}

}  // namespace
}  // namespace monomoe::device
