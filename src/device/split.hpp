// Split K (the few-rows path): its sizes and the rules that pick the number of K slices, of the
// expert GEMM tasks and of the gate GEMM, in plain C++ so that the kernel (route.cuh, ep.cuh,
// processor.cuh, gate.cuh), the host (host/layer.cu, host/workspace.cpp) and a CPU test
// (tests/test_workspace.cpp) share one definition.
//
// When a call gives this rank's experts fewer GEMM tasks than the GPU has blocks, each task's K
// range is cut into up to kMaxKSplit slices that different blocks run; the last slice to finish
// sums the partial tiles (in slice order) and runs the epilogue. At most kSplitTargetMax blocks
// are planned for: per phase (GEMM0, GEMM1) at most kSplitTargetMax / 2 task groups and
// kSplitTargetMax partial slots, one per (group, slice): each phase has its own kSplitTargetMax
// counters (2 * kSplitTargetMax control words in all) and its own k_split_room slots of one partial
// tile; fp8 SwiGLU's GEMM0 stores two results a slice, in two sets of slots (gemm0_results).
#pragma once

#if defined(__CUDACC__)
#define MONOMOE_HOST_DEVICE __host__ __device__
#else
#define MONOMOE_HOST_DEVICE
#endif

namespace monomoe::device {

inline constexpr int kMaxKSplit = 8;
// Expert GEMM slices are whole 128-deep steps (every precision's k-tile divides 128).
inline constexpr int kKSplitStep = 128;
inline constexpr int kSplitTargetMax = 160;

// K slices per expert GEMM task for a call whose rank computes `row_tiles` row tiles of
// `gemm0_cols` GEMM0 and `gemm1_cols` GEMM1 column tiles each, with `split_target` blocks (about
// the grid, at most kSplitTargetMax). A call with few rows has few tasks, e.g. one token at top-2 makes
// 2 row tiles x 8 column tiles, so 16 blocks would each stream a 1 MB slice of weights while the
// other SMs idle. When even the wider phase has at most half as many tasks as split_target, every
// task's K range is cut into S slices, S * tasks <= split_target, each slice at least 128 deep
// (hidden and ffn are multiples of 128); 1 otherwise. Bounds the planner relies on (tested): with
// S > 1, each phase has at most split_target / 2 groups (row tiles x its column tiles) and at most
// split_target partial tiles (groups x S).
MONOMOE_HOST_DEVICE constexpr int k_split_for(int row_tiles, int gemm0_cols, int gemm1_cols,
                                              int hidden, int ffn, int split_target) {
  if (row_tiles <= 0) return 1;
  const int wider = row_tiles * (gemm0_cols > gemm1_cols ? gemm0_cols : gemm1_cols);
  if (wider <= 0 || 2 * wider > split_target) return 1;
  const int depth = (hidden < ffn ? hidden : ffn) / 128;
  int slices = split_target / wider;
  if (slices > kMaxKSplit) slices = kMaxKSplit;
  if (slices > depth) slices = depth;
  return slices < 1 ? 1 : slices;
}

// Partial slots one phase can need in a layer whose calls have at most `max_row_tiles` row tiles:
// a split call has groups * S slots per phase, groups <= its row tiles x the wider phase's column
// tiles (at most kSplitTargetMax / 2 when S > 1) and S <= min(kMaxKSplit, depth), so at most
// kSplitTargetMax; 0 when no call can split (a K range of one 128-deep step). The workspace plan
// sizes the partial tiles with it (split_partial_tiles), so a small layer does not carry the
// default's ~40 MiB.
MONOMOE_HOST_DEVICE constexpr int k_split_room(long long max_row_tiles, int gemm0_cols,
                                               int gemm1_cols, int hidden, int ffn) {
  const int depth = (hidden < ffn ? hidden : ffn) / 128;
  const int slices = depth < kMaxKSplit ? depth : kMaxKSplit;
  if (slices < 2 || max_row_tiles <= 0) return 0;
  long long groups = max_row_tiles * (gemm0_cols > gemm1_cols ? gemm0_cols : gemm1_cols);
  if (groups > kSplitTargetMax / 2) groups = kSplitTargetMax / 2;
  const long long room = groups * slices;
  return static_cast<int>(room < kSplitTargetMax ? room : kSplitTargetMax);
}

// Result tiles a GEMM0 task leaves for its epilogue: two for block-scaled (fp8) SwiGLU, whose task
// runs the tile GEMM over 128 gate, then 128 up columns so that a 128-channel quantization group
// of the activation never spans tasks (processor.cuh, gemm0_math); one otherwise. A split task's
// slice stores each of them and the last slice sums each: GEMM0 has this many sets of slots.
MONOMOE_HOST_DEVICE constexpr int gemm0_results(bool block_scaled, bool swiglu) {
  return block_scaled && swiglu ? 2 : 1;
}

// The partial tiles of a layer whose phases have `room` slots each (k_split_room), in sets of
// `room` tiles: GEMM0's results, GEMM1's, then, with `results0` = 2 (gemm0_results), GEMM0's second
// results (fp8 SwiGLU's gate tiles). So every other layer's tiles are where they were, and a
// group's slices of one result stay consecutive tiles. Where the slots of result `result` (1:
// GEMM0's second) of `phase` start, in tiles, and the tiles in all (the workspace plan's
// split_partial region): the host's plan and the kernel's finish_k_split compute both from the
// layer alone.
MONOMOE_HOST_DEVICE constexpr long long split_slots_first_tile(int phase, int result,
                                                               long long room) {
  return result == 0 ? phase * room : 2 * room;
}
MONOMOE_HOST_DEVICE constexpr long long split_partial_tiles(long long room, int results0) {
  return room * (results0 + 1);
}

// The row pitch, in elements of the expert GEMMs' operand type, of a matrix whose rows hold
// `width` operand values: width itself, or for fp8 (scaled) the E4M3 values followed by their
// fp32 scales (one per 128 channels), padded to 16 bytes (TMA and cp.async copy 16-byte pieces).
// Params::x_pitch, h_pitch (device/params.cuh); the workspace plan sizes x_quant, hidden_act and
// the inbox with it.
MONOMOE_HOST_DEVICE constexpr long long operand_pitch(long long width, bool scaled) {
  return scaled ? width + (width / 128 * 4 + 15) / 16 * 16 : width;
}

// K slice `slice` of `slices` over a depth of `depth` elements: [first, first + count), whole
// `step`-deep steps (depth is a multiple of step), the remainder spread over the first slices.
struct KSlice {
  int first, count;
};
MONOMOE_HOST_DEVICE constexpr KSlice k_slice(int depth, int slice, int slices,
                                             int step = kKSplitStep) {
  const int steps = depth / step;
  const int lo = steps * slice / slices, hi = steps * (slice + 1) / slices;
  return {lo * step, (hi - lo) * step};
}

// Combine tasks: a token tile's output columns in tiles of combine_cols_for(token tiles, hidden)
// columns. With the widest tiles a call of few token tiles gives the whole combine to a few blocks:
// 128 tokens at hidden 4096 made 8 tasks of 1 MB of stage rows each, ~49 us while the other SMs
// idled (perf log 2026-11-30 11:04, --trace). So the tile halves (512, 256, ..., 32 columns)
// while the call has fewer than kCombineTaskTarget tasks (about the grid). hidden is a multiple of
// 128, so every width of 128 or less divides it; a wider one may leave a narrower last tile.
inline constexpr int kCombineColsMax = 512;
inline constexpr int kCombineColsMin = 32;
inline constexpr int kCombineTaskTarget = 128;

MONOMOE_HOST_DEVICE constexpr int combine_cols_for(long long token_tiles, int hidden) {
  int cols = kCombineColsMax;
  while (cols > kCombineColsMin && token_tiles * ((hidden + cols - 1) / cols) < kCombineTaskTarget) {
    cols /= 2;
  }
  return cols;
}

// Combine tasks a call of at most `max_token_tiles` token tiles can have (the workspace's task
// queue holds them; tested): the widest tiles' count, or below kCombineTaskTarget before the last
// halving, so less than twice that after it.
MONOMOE_HOST_DEVICE constexpr long long combine_tasks_bound(long long max_token_tiles, int hidden) {
  const long long wide = max_token_tiles * ((hidden + kCombineColsMax - 1) / kCombineColsMax);
  return wide > 2 * kCombineTaskTarget ? wide : 2 * kCombineTaskTarget;
}

// The gate GEMM's K split. A token tile's logits (128 tokens x experts_padded) are computed by S
// blocks, each over a K slice, into S partial sums that the tile's routing adds in slice order.
// With S = 1 or 2 one or two blocks stream the whole gate (hidden x experts_padded: 512 KB for the
// default bf16 layer), ~8 us at one SM's share of the bandwidth, while a one-token call has every
// other block idle. So S is as large as the blocks, the depth and the summing allow:
//   - 1 when there are not two blocks per token tile (2 * tiles > blocks), as before;
//   - else at most blocks / tiles (one block per item), kMaxGateSplit, and hidden / kGateKStep
//     (each slice whole 64-deep steps: every precision's k-tile divides 64);
//   - and at most kGateSumBytes / (tokens * experts_padded * 4): the partial sums of the call, all
//     read by the blocks that route, stay within 512 KB (8 slices of a 128-token tile of 128 gate
//     columns: with that call's rows routed on several blocks, "routed" came at 36.5 instead of
//     50 us on 2 GPUs, perf log 2026-11-30 07:43), so only calls of at most 256 tokens split
//     further than 2;
//   - at least 2 (today's halves) when the first rule allows a split.
// Bounds the workspace plan relies on (tested): S * tokens * experts_padded <=
// gate_partial_floats(max_tokens, experts_padded) for tokens <= max_tokens, any block count.
inline constexpr int kGateKStep = 64;
inline constexpr int kMaxGateSplit = 32;
inline constexpr long long kGateSumBytes = 512 * 1024;

MONOMOE_HOST_DEVICE constexpr int gate_split_for(long long tokens, int hidden, int experts_padded,
                                                 int blocks) {
  const long long tiles = (tokens + 127) / 128;
  if (tiles <= 0 || experts_padded <= 0 || 2 * tiles > blocks) return 1;
  long long s = blocks / tiles;
  if (s > kMaxGateSplit) s = kMaxGateSplit;
  const long long by_sum = kGateSumBytes / (tokens * experts_padded * 4);
  if (s > by_sum) s = by_sum;
  if (s < 2) s = 2;
  const int depth = hidden / kGateKStep;
  if (s > depth) s = depth;
  return s < 1 ? 1 : static_cast<int>(s);
}

// Floats of partial logits a layer of at most `max_tokens` tokens needs: S x tokens x
// experts_padded is at most 2 x max_tokens x experts_padded when S <= 2, and at most
// kGateSumBytes / 4 when S > 2.
MONOMOE_HOST_DEVICE constexpr long long gate_partial_floats(long long max_tokens,
                                                            int experts_padded) {
  const long long halves = 2 * max_tokens * experts_padded;
  return halves > kGateSumBytes / 4 ? halves : kGateSumBytes / 4;
}

}  // namespace monomoe::device
