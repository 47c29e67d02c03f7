// The three precisions and the CuTe building blocks each one uses for a 128x128 output tile
// computed by 8 warps (bf16: 128x256), each for both weight layouts: KMajorB = false for weights
// stored [in, out] ([K, N], N contiguous), true for PyTorch's [out, in] ([N, K], K contiguous).
// These are the only template arguments of the kernel (launch.hpp lists the instantiations).
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>

#include "device/params.cuh"

// 1: the bf16 kernels have a producer warpgroup (PrecBf16::kProducer); 0: none (every thread of
// a block runs the tile GEMM's loads as well as its MMAs). A setting for measurements.
#ifndef MONOMOE_PRODUCER
#define MONOMOE_PRODUCER 1
#endif

namespace monomoe::device {

// bf16 operands on Hopper's warpgroup tensor cores (wgmma m64nBNk16, both operands read from
// shared memory), fp32 accumulation: two warpgroups, 64 rows of the 128 x BN tile each. A (token
// rows, K contiguous) is K-major, B MN-major ([in, out] weights) or K-major ([out, in]), both in
// the 128-byte swizzled layouts wgmma reads. Expert GEMMs use 128 x 256 tiles: twice the MMA work
// per byte of a 128 x 128 tile, which is what keeps the tensor cores fed from L2.
template <bool KMajorB>
struct PrecBf16 {
  using Elem = cute::bfloat16_t;  // as stored in global memory
  using SmemElem = cute::bfloat16_t;
  static constexpr int kBlockK = 64;  // 128-byte rows in shared memory
  static constexpr int kStages = 4;
  // The gate GEMM's 128 x 128 tiles (stage_loads.cuh, TileShapes::kStages): 6 stages of 32 KB in
  // the expert tiles' 192 KB, four k-tiles loading ahead (x is read from HBM once, by ~132 blocks).
  static constexpr int kGateStages = 6;
  static constexpr int kExpertBN = 256;  // output columns of an expert GEMM task
  static constexpr bool kRoundToTf32 = false;
  static constexpr bool kRegisterWeights = false;
  static constexpr bool kWgmma = true;
  // A producer warpgroup (kernel.cuh) issues the TMA loads of the expert tiles whose operands are
  // both contiguous (GEMM1), so that their k-loops wait on stage barriers, not on block barriers.
  static constexpr bool kProducer = MONOMOE_PRODUCER != 0;
  static constexpr bool kFastActivations = true;  // epilogue.cuh, activate_fast
  static constexpr bool kWeightsKMajor = KMajorB;
  static constexpr bool kBlockScaled = false;  // fp8's expert tiles only (Fp8Tiles)
  static constexpr cute::GMMA::Major kMajorB = KMajorB ? cute::GMMA::Major::K : cute::GMMA::Major::MN;
  template <int BN>
  using TiledMma = std::conditional_t<
      BN == 256,
      decltype(cute::make_tiled_mma(
          cute::SM90::GMMA::MMA_64x256x16_F32BF16BF16_SS<cute::GMMA::Major::K, kMajorB>{},
          cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{})),
      decltype(cute::make_tiled_mma(
          cute::SM90::GMMA::MMA_64x128x16_F32BF16BF16_SS<cute::GMMA::Major::K, kMajorB>{},
          cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}))>;
  using SmemAtomA = cute::GMMA::Layout_K_SW128_Atom<SmemElem>;  // 8 x 64
  using SmemAtomB = std::conditional_t<KMajorB, cute::GMMA::Layout_K_SW128_Atom<SmemElem>,  // 8 x 64
                                       cute::GMMA::Layout_MN_SW128_Atom<SmemElem>>;        // 64 x 8
  using CopyA = void;  // wgmma reads shared memory itself
  using CopyB = void;
};

// Shared-memory atoms of the fp32-element paths: rows of 32 K (K-major: A, and B of [out, in]
// weights) or columns of 32 N (B of [in, out] weights), 16-byte pieces swizzled.
using SmemAtomF32K = decltype(cute::composition(
    cute::Swizzle<3, 2, 3>{},
    cute::Layout<cute::Shape<cute::_8, cute::_32>, cute::Stride<cute::_32, cute::_1>>{}));
using SmemAtomF32N = decltype(cute::composition(
    cute::Swizzle<3, 2, 3>{},
    cute::Layout<cute::Shape<cute::_32, cute::_8>, cute::Stride<cute::_1, cute::_32>>{}));

// fp32 operands, TF32 tensor-core math, fp32 accumulation. wgmma's tf32 form reads both operands
// K-major (it has no transpose for 32-bit types), so only [out, in] weights (KMajorB) run on it:
// wgmma m64n256k8 per warpgroup for the expert tiles (m64n128k8 for the gate's), two warpgroups of
// 64 rows, tiles in the 128-byte swizzled K-major layout (8 rows of 32 elements per atom). [in,
// out] weights keep SM80 mma.sync m16n8k8 and 128-column expert tiles.
// The tensor cores truncate the low 13 bits of each fp32 operand (a biased error: 2.3e-3 against
// the 2e-3 tolerance in the run of 2026-11-23, ~1.6e-3 on wgmma at the default config on
// 2026-11-30); both paths round to nearest (ties away) first: mma.sync in registers after
// ld.shared, wgmma in shared memory once a stage has landed (tile_gemm.cuh, run_wgmma).
template <bool KMajorB>
struct PrecTf32 {
  using Elem = float;
  using SmemElem = cute::tfloat32_t;  // same bits as float; the tensor cores read the top 19
  static constexpr int kBlockK = 32;  // 128-byte rows in shared memory
  // 4 stages (wgmma: 48 KB each, 2 k-tiles loading ahead; tile_gemm.cuh, run_wgmma).
  static constexpr int kStages = 4;
  // wgmma: 128 x 256 expert tiles as bf16 (twice the MMA work per k-tile and per byte of A);
  // mma.sync keeps 128 (its cp.async plan needs 8 k rows per pass of a 128-column tile).
  static constexpr int kExpertBN = KMajorB ? 256 : 128;
  // The gate's tiles (as bf16's; with [in, out] weights the gate tile is the expert tile).
  static constexpr int kGateStages = KMajorB ? 6 : kStages;
  static constexpr bool kRoundToTf32 = true;
  static constexpr bool kWgmma = KMajorB;
  static constexpr bool kProducer = false;
  // The fast forms (epilogue.cuh): GEMM0's outputs are rounded to tf32 (10 mantissa bits) anyway;
  // the [out, in] kernel spills 316 bytes with them, 364 without (ptxas, sm_90a).
  static constexpr bool kFastActivations = true;
  static constexpr bool kWeightsKMajor = KMajorB;
  static constexpr bool kBlockScaled = false;
  template <int BN>
  using TiledMma = std::conditional_t<
      KMajorB,
      std::conditional_t<
          BN == 256,
          decltype(cute::make_tiled_mma(cute::SM90::GMMA::MMA_64x256x8_F32TF32TF32_SS_TN<>{},
                                        cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{})),
          decltype(cute::make_tiled_mma(
              cute::SM90::GMMA::MMA_64x128x8_F32TF32TF32_SS_TN<>{},
              cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}))>,
      decltype(cute::make_tiled_mma(cute::MMA_Atom<cute::SM80_16x8x8_F32TF32TF32F32_TN>{},
                                    cute::Layout<cute::Shape<cute::_2, cute::_4, cute::_1>>{},
                                    cute::Tile<cute::_32, cute::_32, cute::_8>{}))>;
  using SmemAtomA =
      std::conditional_t<KMajorB, cute::GMMA::Layout_K_SW128_Atom<SmemElem>,  // 8 x 32
                         SmemAtomF32K>;
  using SmemAtomB =
      std::conditional_t<KMajorB, cute::GMMA::Layout_K_SW128_Atom<SmemElem>, SmemAtomF32N>;
  using CopyA = std::conditional_t<KMajorB, void,  // wgmma reads shared memory itself
                                   cute::Copy_Atom<cute::UniversalCopy<SmemElem>, SmemElem>>;
  using CopyB = CopyA;
  // wgmma expert tiles (tile_gemm.cuh, run_wgmma_rs): the product transposed, C^T = W * X^T, so
  // that the weights are wgmma's register operand (M: the tile's BN output columns, 64 per
  // warpgroup per instruction) and are rounded in registers; the token rows (N = 128) stay in
  // shared memory, rounded where they are produced or once they land.
  static constexpr bool kRegisterWeights = KMajorB;
  using TiledMmaRs =
      decltype(cute::make_tiled_mma(cute::SM90::GMMA::MMA_64x128x8_F32TF32TF32_RS_TN<>{},
                                    cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
};

// Strict fp32: plain FMA on the CUDA cores, 16x16 threads each owning an 8x8 block of the tile.
template <bool KMajorB>
struct PrecFp32 {
  using Elem = float;
  using SmemElem = float;
  static constexpr int kBlockK = 32;
  static constexpr int kStages = 3;
  static constexpr int kGateStages = kStages;  // the gate tile is the expert tile
  static constexpr bool kRoundToTf32 = false;
  static constexpr bool kRegisterWeights = false;
  static constexpr bool kWgmma = false;
  static constexpr bool kProducer = false;
  static constexpr bool kFastActivations = false;  // erff and an IEEE division, as the reference
  static constexpr bool kWeightsKMajor = KMajorB;
  static constexpr bool kBlockScaled = false;
  static constexpr int kExpertBN = 128;
  template <int BN>
  using TiledMma = decltype(cute::make_tiled_mma(
      cute::UniversalFMA<float, float, float, float>{},
      cute::Layout<cute::Shape<cute::_16, cute::_16, cute::_1>>{}));
  using SmemAtomA = SmemAtomF32K;
  using SmemAtomB = std::conditional_t<KMajorB, SmemAtomF32K, SmemAtomF32N>;
  using CopyA = cute::Copy_Atom<cute::UniversalCopy<float>, float>;
  using CopyB = cute::Copy_Atom<cute::UniversalCopy<float>, float>;
};

// DType::fp8 (docs/fp8.md). The kernel's precision is PrecFp8: bf16 for everything but the expert
// GEMMs (x, y, the gate GEMM, biases, the stage rows, the combine: PrecBf16 with [out, in]
// weights), whose tiles are Fp8Tiles': E4M3 x E4M3 on wgmma m64n128k32 (fp32 accumulation), both
// operands K-major from 128-byte swizzled shared memory (the token rows, and the [out, in]
// weights: FP8 wgmma has no transpose). A k-tile is 128 deep, exactly one scale block: each
// k-tile's MMAs go into a fresh fragment, which is then scaled by its rows' activation scales and
// its column half's weight scale and added to the fp32 accumulator (the promotion;
// tile_gemm.cuh). 128-column tiles: the fresh fragment doubles the accumulator registers.
struct Fp8Tiles {
  using Elem = cute::float_e4m3_t;  // as stored in global memory (1 byte)
  using SmemElem = cute::float_e4m3_t;
  static constexpr int kBlockK = 128;  // 128-byte rows in shared memory; one scale block deep
  static constexpr int kStages = 4;
  static constexpr int kGateStages = kStages;  // (no gate tiles: PrecFp8's are bf16's)
  static constexpr int kExpertBN = 128;
  static constexpr bool kRoundToTf32 = false;
  static constexpr bool kRegisterWeights = false;
  static constexpr bool kWgmma = true;
  static constexpr bool kProducer = false;
  static constexpr bool kFastActivations = true;
  static constexpr bool kWeightsKMajor = true;
  static constexpr bool kBlockScaled = true;
  template <int BN>
  using TiledMma =
      decltype(cute::make_tiled_mma(cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_SS_TN<>{},
                                    cute::Layout<cute::Shape<cute::_2, cute::_1, cute::_1>>{}));
  using SmemAtomA = cute::GMMA::Layout_K_SW128_Atom<SmemElem>;  // 8 x 128
  using SmemAtomB = cute::GMMA::Layout_K_SW128_Atom<SmemElem>;
  using CopyA = void;
  using CopyB = void;
};

// The kernel's precision for DType::fp8 ([out, in] weights only): bf16's with [out, in] weights
// for the gate, the I/O and the combine, Fp8Tiles for the expert GEMMs (ExpertTiles).
struct PrecFp8 : PrecBf16<true> {
  static constexpr int kExpertBN = Fp8Tiles::kExpertBN;
  static constexpr bool kProducer = false;  // its expert tiles keep every thread's loads
};
static_assert(!PrecFp8::kProducer, "fp8.cuh's quantize_x_groups_to counts the block's warps");

// The tiles of precision P's expert GEMMs: P's own, fp8's E4M3 tiles for PrecFp8.
template <class P>
struct ExpertTilesOf {
  using type = P;
};
template <>
struct ExpertTilesOf<PrecFp8> {
  using type = Fp8Tiles;
};
template <class P>
using ExpertTiles = typename ExpertTilesOf<P>::type;

// The kernel precision whose shared memory (GemmSmem) a tile precision's GEMMs use: itself, or
// PrecFp8 for fp8's expert tiles (one buffer for the gate's bf16 tiles and the E4M3 ones).
template <class T>
struct SmemOwnerOf {
  using type = T;
};
template <>
struct SmemOwnerOf<Fp8Tiles> {
  using type = PrecFp8;
};

// The threads of a block of precision P's kernel: the kThreads workers, which run every role, and
// where P has one the producer warpgroup (kernel.cuh, produce_stages).
inline constexpr int kProducerThreads = 128;
template <class P>
constexpr int block_threads() {
  return kThreads + (P::kProducer ? kProducerThreads : 0);
}

// fp32 -> tf32 rounded to nearest, ties away from zero, as a float (low 13 bits zero).
__device__ __forceinline__ float rna_tf32(float f) {
  unsigned int r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
  return __uint_as_float(r);
}
__device__ __forceinline__ float4 rna_tf32(float4 v) {
  return make_float4(rna_tf32(v.x), rna_tf32(v.y), rna_tf32(v.z), rna_tf32(v.w));
}

// Rounds every element of a register fragment of tfloat32_t to nearest (ties away), in place.
template <class Fragment>
__device__ __forceinline__ void round_to_tf32(Fragment&& frag) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(frag); ++i) {
    frag(i) = cute::tfloat32_t::bitcast(
        __float_as_uint(rna_tf32(__uint_as_float(frag(i).raw()))));
  }
}

// Element conversions used by epilogues and the combine.
__device__ __forceinline__ float to_float(cute::bfloat16_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(float v) { return v; }
template <class Elem>
__device__ __forceinline__ Elem from_float(float v) {
  return static_cast<Elem>(v);
}

}  // namespace monomoe::device
