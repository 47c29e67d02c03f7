// Split K (the few-rows path): its sizes and the rule that picks the number of K slices, in plain
// C++ so that the kernel (route.cuh, ep.cuh, processor.cuh), the host's workspace plan
// (host/workspace.cpp) and a CPU test (tests/test_workspace.cpp) share one definition.
//
// When a call gives this rank's experts fewer GEMM tasks than the GPU has blocks, each task's K
// range is cut into up to kMaxKSplit slices that different blocks run; the last slice to finish
// sums the partial tiles (in slice order) and runs the epilogue. At most kSplitTargetMax blocks
// are planned for: per phase (GEMM0, GEMM1) at most kSplitTargetMax / 2 task groups and
// kSplitTargetMax partial tiles: each phase has its own kSplitTargetMax counters (2 *
// kSplitTargetMax control words in all) and its own k_split_room partial tiles.
#pragma once

#if defined(__CUDACC__)
#define MONOMOE_HOST_DEVICE __host__ __device__
#else
#define MONOMOE_HOST_DEVICE
#endif

namespace monomoe::device {

inline constexpr int kMaxKSplit = 8;
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

// Partial tiles one phase can need in a layer whose calls have at most `max_row_tiles` row tiles:
// a split call has groups * S partial tiles per phase, groups <= its row tiles x the wider phase's
// column tiles (at most kSplitTargetMax / 2 when S > 1) and S <= min(kMaxKSplit, depth), so at
// most kSplitTargetMax; 0 when no call can split (a K range of one 128-deep step). The workspace
// plan sizes the partial tiles with it, so a small layer does not carry the default's ~40 MiB.
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

}  // namespace monomoe::device
