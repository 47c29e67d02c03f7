// Where an expert GEMM task's operands are: its row tile (a routed expert's rows, or the shared
// expert's tokens), its column tile's weights (W1's columns, SwiGLU's gate and up halves, W2), their
// block scales (fp8), its A rows (gathered from x, or consecutive rows read by TMA), and the TMA maps
// and K offsets of both, and the row table entries the tile GEMM reads (set_a_row). The processor
// role (processor.cuh) runs the tile GEMMs on them.
#pragma once

#include "device/smem.cuh"

namespace monomoe::device {

struct RowTile {
  int expert;  // global expert id
  int first;   // first row of the tile in expert_rows / hidden_act
  int rows;    // valid rows, 1..128
};

__device__ __forceinline__ RowTile locate_row_tile(const Params& p, const RouteSmem& rs, int tile) {
  int lo = 0, hi = p.experts;  // largest e with tile_base[e] <= tile; empty experts share a base
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (rs.tile_base[mid] <= tile) lo = mid; else hi = mid;
  }
  const int m = tile - rs.tile_base[lo];
  RowTile rt;
  rt.expert = lo;
  rt.first = rs.row_base[lo] + m * kTileRows;
  rt.rows = min(kTileRows, rs.kept[lo] - m * kTileRows);
  return rt;
}

// The shared expert's row tile `index` (counted from the first one after the routed tiles): slice
// index / token_tiles over token tile index % token_tiles. Its rows are the tile's tokens in order,
// its activations hidden_act's rows from (routed tiles + index) * 128, like any row tile's with
// peers. Invalid (rows 0) outside [0, shared_tiles).
struct SharedTile {
  int slice, token0, rows;
};
__device__ __forceinline__ SharedTile shared_tile(const Params& p, int index) {
  if (index < 0 || index >= shared_tiles(p)) return {0, 0, 0};
  const int slice = index / p.token_tiles;
  const int token0 = (index - slice * p.token_tiles) * kTileRows;
  return {slice, token0, min(kTileRows, p.tokens - token0)};
}

// The columns of GEMM0 column tile `col_tile`. SwiGLU: kHalf gate columns (col0...) and the matching
// kHalf up columns (ffn + col0...) make kHalf outputs. Otherwise kBN consecutive columns, fewer in
// the last tile.
struct Gemm0Cols {
  int w1_cols, col0, col_hi, out_cols, valid_lo, valid_hi;
};
// Block-scaled (fp8) SwiGLU tiles make kBN outputs instead, one quantization group of the
// activation (docs/fp8.md): the tile GEMM runs twice, over kBN gate columns (col0...) and kBN up
// columns (col_hi...), each as two halves of kHalf (gemm0_math).
template <class P>
__device__ __forceinline__ Gemm0Cols gemm0_cols(const Params& p, int col_tile) {
  constexpr int kBN = P::kExpertBN;
  constexpr int kHalf = kBN / 2;
  constexpr bool kWholeGroups = ExpertTiles<P>::kBlockScaled;
  const bool swiglu = p.act == Act::swiglu;
  Gemm0Cols c;
  c.w1_cols = swiglu ? 2 * p.ffn : p.ffn;
  c.col0 = col_tile * (swiglu && !kWholeGroups ? kHalf : kBN);
  c.col_hi = swiglu ? p.ffn + c.col0 : c.col0 + kHalf;
  c.out_cols = swiglu ? (kWholeGroups ? kBN : kHalf) : min(kBN, p.ffn - c.col0);
  c.valid_lo = min(kHalf, c.out_cols);
  c.valid_hi = swiglu ? kHalf : max(0, c.out_cols - kHalf);
  return c;
}

// Where GEMM0 column tile `col_tile` of `expert` reads W1 and b1: expert < experts_local is a
// routed expert ([hidden, w1_cols] at w1 + expert * hidden * w1_cols); beyond, slice expert -
// experts_local of the shared expert, columns of its whole [hidden, shared w1 columns] matrix (or
// the transposes for [out, in] weights): slice j's columns start at j * ffn, its swiglu up half at
// shared_ffn + j * ffn, so the weights need no repacking. lo, hi: the tile's two column halves in
// that matrix (Gemm0Cols' col0, col_hi, offset); b1 indexed by the same columns.
// fp8: scale, the matrix's block scales ([cols / 128][hidden / 128]).
template <class P>
struct W1Tile {
  const typename ExpertTiles<P>::Elem* w1;  // the matrix
  const typename P::Elem* b1;               // its bias vector, or nullptr
  int cols;                    // its columns (its row pitch [in, out], its rows [out, in])
  int lo, hi;
  const float* scale;
};
template <class P>
__device__ __forceinline__ W1Tile<P> w1_tile(const Params& p, int expert, const Gemm0Cols& c) {
  using Elem = typename P::Elem;
  using W = typename ExpertTiles<P>::Elem;
  const bool swiglu = p.act == Act::swiglu;
  if (expert < p.experts_local) {
    const long long at = static_cast<long long>(expert) * c.w1_cols;
    return {static_cast<const W*>(p.w1) + at * p.hidden,
            p.has_bias ? static_cast<const Elem*>(p.b1) + at : nullptr,
            c.w1_cols,
            c.col0,
            c.col_hi,
            p.w1_scale ? p.w1_scale + at / kScaleBlock * (p.hidden / kScaleBlock) : nullptr};
  }
  const int width = p.shared_slices * p.ffn;
  const int first = (expert - p.experts_local) * p.ffn;
  const int lo = first + c.col0;
  return {static_cast<const W*>(p.shared_w1),
          p.has_bias ? static_cast<const Elem*>(p.shared_b1) : nullptr,
          swiglu ? 2 * width : width,
          lo,
          swiglu ? width + lo : c.col_hi + first,
          p.shared_w1_scale};
}

// fp8: where the block scales of weight column (output) `col` start for K position k in a [cols,
// depth] matrix whose scales are `scale` ([cols / 128][depth / 128]): one per 128-deep k-tile
// from k on. nullptr for the other precisions.
__device__ __forceinline__ const float* weight_scales(const float* scale, int col, int depth,
                                                      int k) {
  return scale ? scale + static_cast<long long>(col / kScaleBlock) * (depth / kScaleBlock) +
                     k / kScaleBlock
               : nullptr;
}

// Row r of an expert GEMM's A operand (threads r < 128): `row` (nullptr: zeros) from K position
// k on. Block-scaled tiles: the row's `width` values are followed by their scales, one float per
// 128 (x_rows, the inbox, fp8's hidden_act), from k / 128 on.
template <class P>
__device__ __forceinline__ void set_a_row(GemmSmem<P>& g, int r, const void* row, int width,
                                          int k) {
  using Op = typename ExpertTiles<P>::Elem;
  const Op* src = static_cast<const Op*>(row);
  g.rows[r] = src ? src + k : nullptr;
  if constexpr (ExpertTiles<P>::kBlockScaled) {
    g.row_scales[r] = src ? reinterpret_cast<const float*>(src + width) + k / kScaleBlock : nullptr;
  }
}

// The expert GEMMs' copy of x: x itself, or (fp8) x quantized by the gate phase.
template <class P>
__device__ __forceinline__ const typename ExpertTiles<P>::Elem* expert_x(const Params& p) {
  using Op = typename ExpertTiles<P>::Elem;
  return static_cast<const Op*>(ExpertTiles<P>::kBlockScaled ? p.x_quant : p.x);
}

// Weight element offset of K position k in a matrix whose rows are K ([K, N], row pitch ldn) or,
// for [out, in] weights, whose rows are N ([N, K]): where a K slice's B starts.
template <class P>
__device__ __forceinline__ long long k_offset(int k, int ldn) {
  return P::kWeightsKMajor ? static_cast<long long>(k) : static_cast<long long>(k) * ldn;
}

// fp8 SwiGLU GEMM0: where the gate columns' fp32 result waits while the up columns' tile GEMM runs:
// GemmSmem's second result tile, past the pipeline stages (so the up tile's loads leave it alone)
// and past the result tile (the up columns' result), with the result tile's row pitch.
template <class P>
__device__ __forceinline__ float* gate_result(KernelSmem<P>& sm) {
  using Experts = typename GemmSmem<P>::Experts;
  static_assert(ExpertTiles<P>::kBlockScaled, "only fp8's SwiGLU tasks keep a second result");
  static_assert(Experts::kPipeBytes >= Experts::kCBytes, "the gate result past the result tile");
  return reinterpret_cast<float*>(sm.gemm.buffer + Experts::kPipeBytes);
}

// The operands of an expert tile GEMM: its A rows, consecutive rows of a buffer (GEMM1's
// hidden_act; with Params::x_rows, GEMM0's x_rows) read by TMA where the kernel can
// (StageLoads::kTmaCapable), or gathered token by token by the caller (GEMM0 otherwise: a and the
// maps unused); and its weights. One or two passes (fp8 SwiGLU's GEMM0: the gate columns' tile,
// then the up columns'), each over column halves lo and hi with their weight scales (fp8).
template <class P>
struct RowsOperands {
  TmaTile t;      // maps, expert, K offsets, the tile's first A row
  const void* a;  // the tile's first A row
  int a_pitch;    // elements from one A row to the next
  int a_width;    // values in an A row (fp8: its scales follow them)
  const typename ExpertTiles<P>::Elem* b;  // the weights from the K slice's start
  int ldb;
  int passes;
  int lo0, hi0, lo1, hi1;
  int valid_lo, valid_hi;
  const float* scale_lo0;
  const float* scale_hi0;
  const float* scale_lo1;
  const float* scale_hi1;
};

// Where a RowsOperands reads A: `rows`' row hidden_row0 on (pitch elements apart, width values
// each) through `map` from K position k_first; and B: `b` (ldb; from the K slice's start) of
// expert `expert` through `map_b` from K position k0.
template <class P>
__device__ __forceinline__ void set_rows_a(RowsOperands<P>& o, const CUtensorMap* map,
                                           const void* rows, int pitch, int width,
                                           int hidden_row0, int k_first) {
  using Op = typename ExpertTiles<P>::Elem;
  o.t.map_a = map;
  o.t.a_row0 = hidden_row0;
  o.t.a_k0 = k_first;
  o.a = static_cast<const Op*>(rows) + static_cast<long long>(hidden_row0) * pitch;
  o.a_pitch = pitch;
  o.a_width = width;
}
template <class P>
__device__ __forceinline__ void set_rows_b(RowsOperands<P>& o, const Params& p,
                                           const CUtensorMap* map, int expert, int k0,
                                           const typename ExpertTiles<P>::Elem* b, int ldb) {
  o.t.map = map;
  o.t.expert = expert;
  o.t.k0 = k0;
  o.t.p = &p;
  o.b = b;
  o.ldb = ldb;
}

// GEMM1's operands for K range [k_first, ...) of one row tile: A rows hidden_act[hidden_row0 +
// r], B the expert's W2 (or the shared expert's slice).
template <class P>
__device__ __forceinline__ RowsOperands<P> gemm1_operands(const Params& p, int expert,
                                                          int hidden_row0, int col_tile,
                                                          int k_first) {
  using T = ExpertTiles<P>;
  using Op = typename T::Elem;
  using Gemm = TileGemm<T, T::kExpertBN>;
  constexpr int kHalf = Gemm::kBN / 2;
  const int col0 = col_tile * Gemm::kBN;
  const int out_cols = min(Gemm::kBN, p.hidden - col0);
  // W2 of a routed expert: [ffn, hidden], or [hidden, ffn] for [out, in] weights. The shared
  // expert's whole W2 ([S, hidden] or [hidden, S]) is read as one expert of depth S, slice j from
  // K = j * ffn (its TMA map likewise: one expert, layer.cu).
  const bool shared = expert >= p.experts_local;
  const int depth = shared ? p.shared_slices * p.ffn : p.ffn;
  const int k0 = (shared ? (expert - p.experts_local) * p.ffn : 0) + k_first;
  const int ldb = T::kWeightsKMajor ? depth : p.hidden;
  const Op* w2 =
      shared ? static_cast<const Op*>(p.shared_w2)
             : static_cast<const Op*>(p.w2) + static_cast<long long>(expert) * p.ffn * p.hidden;
  // fp8: W2's block scales, [hidden / 128][depth / 128] per expert.
  const float* w2_scale =
      shared ? p.shared_w2_scale
             : (p.w2_scale ? p.w2_scale + static_cast<long long>(expert) *
                                              (p.hidden / kScaleBlock) * (p.ffn / kScaleBlock)
                           : nullptr);
  RowsOperands<P> o;
  set_rows_a(o, &p.tma_h, p.hidden_act, p.h_pitch, p.ffn, hidden_row0, k_first);
  set_rows_b(o, p, shared ? &p.tma_w2_shared : &p.tma_w2, shared ? 0 : expert, k0,
             w2 + k_offset<T>(k0, ldb), ldb);
  o.passes = 1;
  o.lo0 = o.lo1 = col0;
  o.hi0 = o.hi1 = col0 + kHalf;
  o.valid_lo = min(kHalf, out_cols);
  o.valid_hi = max(0, out_cols - kHalf);
  o.scale_lo0 = o.scale_lo1 = weight_scales(w2_scale, col0, depth, k0);
  o.scale_hi0 = o.scale_hi1 = weight_scales(w2_scale, col0 + kHalf, depth, k0);
  return o;
}

// GEMM0's weights for K range [k_first, ...) of a row tile of `expert` (a routed one, or a shared
// slice): W1's columns of col_tile; fp8 SwiGLU: two passes, kBN gate then kBN up columns (whole
// quantization groups of the activation). A is the caller's: x_rows' rows (set_rows_a) or rows
// gathered from x.
template <class P>
__device__ __forceinline__ RowsOperands<P> gemm0_operands(const Params& p, int expert,
                                                          int col_tile, int k_first) {
  using T = ExpertTiles<P>;
  using Gemm = TileGemm<T, T::kExpertBN>;
  constexpr int kHalf = Gemm::kBN / 2;
  const Gemm0Cols c = gemm0_cols<P>(p, col_tile);
  const W1Tile<P> w = w1_tile<P>(p, expert, c);
  // W1: [hidden, cols], or [cols, hidden] for [out, in] weights.
  const int ldb = T::kWeightsKMajor ? p.hidden : w.cols;
  RowsOperands<P> o;
  set_rows_b(o, p, &p.tma_w1, expert, k_first, w.w1 + k_offset<T>(k_first, ldb), ldb);
  if constexpr (T::kBlockScaled) {  // whole groups: kBN gate columns, then kBN up columns
    o.passes = p.act == Act::swiglu ? 2 : 1;
    o.lo0 = w.lo;
    o.hi0 = w.lo + kHalf;
    o.lo1 = w.hi;
    o.hi1 = w.hi + kHalf;
    o.valid_lo = o.valid_hi = kHalf;
    o.scale_lo0 = o.scale_hi0 = weight_scales(w.scale, w.lo, p.hidden, k_first);
    o.scale_lo1 = o.scale_hi1 = weight_scales(w.scale, w.hi, p.hidden, k_first);
  } else {
    o.passes = 1;
    o.lo0 = o.lo1 = w.lo;
    o.hi0 = o.hi1 = w.hi;
    o.valid_lo = c.valid_lo;
    o.valid_hi = c.valid_hi;
    o.scale_lo0 = o.scale_hi0 = o.scale_lo1 = o.scale_hi1 = nullptr;
  }
  return o;
}

}  // namespace monomoe::device
