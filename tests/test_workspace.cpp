// The workspace plan and the prefixes that the layers of one Communicator share
// (src/host/workspace.hpp): the words the kernel compares with a call's epoch sit at positions
// that no layer's config moves, and no layer's own region reaches into them (label cpu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

#include "host/workspace.hpp"
#include "monomoe/config.hpp"

namespace monomoe {
namespace {

// Configs that differ in every size the plan depends on, for `world` ranks.
std::vector<LayerConfig> configs(std::int64_t world) {
  std::vector<LayerConfig> v;
  LayerConfig small;
  small.max_tokens = 256;
  small.hidden = 256;
  small.ffn = 256;
  small.experts = 4 * world;
  small.world_size = world;
  v.push_back(small);
  LayerConfig big = small;
  big.max_tokens = 4096;
  big.hidden = 1024;
  big.ffn = 768;
  big.experts = 16 * world;
  big.topk = 4;
  big.activation = Activation::swiglu;
  big.dtype = DType::fp32;
  v.push_back(big);
  v.push_back(LayerConfig{});  // the default: 8192 tokens, 2048 x 2048, 64 experts
  v.back().world_size = world;
  return v;
}

// The regions of one plan, as (offset, bytes), of the workspace's layers' area and the window's.
std::vector<std::pair<std::size_t, std::size_t>> body_regions(const LayerConfig& c,
                                                              const detail::WorkspacePlan& p) {
  const std::size_t elem = element_bytes(c.dtype);
  const auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  const std::size_t choices = u(c.max_tokens * c.topk);
  return {{p.control, p.control_bytes},
          {p.gate, u(c.hidden * p.experts_padded) * elem},
          {p.logits, u(p.logit_floats) * 4},
          {p.topk_expert, choices * 4},
          {p.topk_weight, choices * 4},
          {p.topk_kept, choices},
          {p.tile_counts, u(p.token_tiles * c.experts) * 4},
          {p.expert_rows, u(p.rows_in) * 4},
          {p.hidden_act, u(std::max(p.rows_in, p.row_tiles * 128) * c.ffn) * elem},
          {p.stage, choices * u(c.hidden) * elem},
          {p.recv_tiles, u(p.row_tiles) * 16}};
}

TEST(Workspace, SharedPrefixDoesNotMoveWithTheConfig) {
  for (std::int64_t world : {1, 2, 8}) {
    SCOPED_TRACE("world " + std::to_string(world));
    const detail::SharedLayout tiny = detail::plan_shared(1, world, 1);
    for (const LayerConfig& c : configs(world)) {
      const detail::WorkspacePlan p = detail::plan_workspace(c);
      const detail::SharedLayout s =
          detail::plan_shared(p.max_tasks, world, p.window.tiles_per_source);
      // Where the epoch, the error record, slot 0 and every flag array start: the same for any
      // layer of this communicator.
      EXPECT_EQ(s.epoch, tiny.epoch);
      EXPECT_EQ(s.error, tiny.error);
      EXPECT_EQ(s.tasks, tiny.tasks);
      EXPECT_EQ(s.start, tiny.start);
      EXPECT_EQ(s.header_flag, tiny.header_flag);
      EXPECT_EQ(s.arrived, tiny.arrived);
      EXPECT_EQ(s.tasks % 16, 0u);  // slot i of every layer is the same 16 bytes
      EXPECT_GE(s.error, s.epoch + 8);
      EXPECT_GE(s.tasks, s.error + 16);
      EXPECT_GE(s.body, s.tasks + 16 * static_cast<std::size_t>(p.max_tasks));
      EXPECT_EQ(s.body % 256, 0u);
      if (world > 1) {
        EXPECT_GE(s.header_flag, s.start + 8 * static_cast<std::size_t>(world));
        EXPECT_GE(s.arrived, s.header_flag + 8 * static_cast<std::size_t>(world));
        EXPECT_GE(s.window_body,
                  s.arrived + 8 * static_cast<std::size_t>(world * p.window.tiles_per_source));
        EXPECT_EQ(s.window_body % 256, 0u);
      }
      // What LayerConfig::workspace_bytes() reports for a layer alone.
      EXPECT_EQ(p.total, s.body + p.body_bytes);
      EXPECT_EQ(c.workspace_bytes(), p.total);
    }
  }
}

TEST(Workspace, LayerRegionsStayInTheLayersArea) {
  for (std::int64_t world : {1, 4}) {
    for (const LayerConfig& c : configs(world)) {
      SCOPED_TRACE(c.describe());
      const detail::WorkspacePlan p = detail::plan_workspace(c);
      EXPECT_EQ(p.world, world);
      for (const auto& [at, bytes] : body_regions(c, p)) {
        EXPECT_EQ(at % 256, 0u);
        EXPECT_LE(at + bytes, p.body_bytes);
      }
      if (world == 1) {
        EXPECT_EQ(p.window.body_bytes, 0u);
        continue;
      }
      const auto& w = p.window;
      const std::size_t rows_in = static_cast<std::size_t>(world * w.rows_per_source);
      const std::size_t elem = element_bytes(c.dtype);
      EXPECT_LE(w.header + static_cast<std::size_t>(world * c.experts_per_rank()) * 4, w.done);
      EXPECT_EQ(w.reset, w.done);
      EXPECT_EQ(w.reset_bytes, static_cast<std::size_t>(p.token_tiles) * 4);
      EXPECT_LE(w.done + w.reset_bytes, w.inbox);
      EXPECT_LE(w.inbox + rows_in * static_cast<std::size_t>(c.hidden) * elem, w.ids);
      EXPECT_LE(w.ids + rows_in * 4, w.stage);
      EXPECT_LE(w.stage + static_cast<std::size_t>(c.max_tokens * c.topk * c.hidden) * elem,
                w.body_bytes);
    }
  }
}

// A prefix sized for the largest layer holds every layer's slots and flags; a smaller layer's
// arrived[source][tile] (its own tiles_per_source) stays inside it.
TEST(Workspace, PrefixForTheLargestHoldsEveryLayer) {
  const std::int64_t world = 4;
  std::int64_t slots = 0, arrived = 0;
  const std::vector<LayerConfig> cs = configs(world);
  for (const LayerConfig& c : cs) {
    const detail::WorkspacePlan p = detail::plan_workspace(c);
    slots = std::max(slots, p.max_tasks);
    arrived = std::max(arrived, p.window.tiles_per_source);
  }
  const detail::SharedLayout s = detail::plan_shared(slots, world, arrived);
  for (const LayerConfig& c : cs) {
    const detail::WorkspacePlan p = detail::plan_workspace(c);
    EXPECT_LE(s.tasks + 16 * static_cast<std::size_t>(p.max_tasks), s.body);
    const std::size_t last_flag =
        s.arrived + 8 * static_cast<std::size_t>((world - 1) * p.window.tiles_per_source +
                                                 p.window.tiles_per_source - 1);
    EXPECT_LE(last_flag + 8, s.window_body);
  }
}

}  // namespace
}  // namespace monomoe

// The split-K rule (device/split.hpp) against the bounds the workspace plan and the kernel's
// counter/partial indexing rely on, over a grid of shapes and block counts.
TEST(Workspace, SplitKStaysWithinItsPlannedRoom) {
  using monomoe::device::k_split_for;
  using monomoe::device::k_split_room;
  using monomoe::device::kMaxKSplit;
  using monomoe::device::kSplitTargetMax;
  int splits = 0;
  for (int target : {1, 2, 16, 33, 66, 114, 132, 148, kSplitTargetMax}) {
    for (int rows = 0; rows <= 200; rows += rows < 20 ? 1 : 13) {
      for (int g0 : {1, 2, 3, 6, 8, 12, 16, 24, 48}) {
        for (int g1 : {1, 2, 4, 8, 16, 28, 56}) {
          for (int depth : {1, 2, 3, 6, 8, 16, 56}) {
            const int hidden = 128 * depth, ffn = 128 * (depth + 1);
            const int s = k_split_for(rows, g0, g1, hidden, ffn, target);
            ASSERT_GE(s, 1);
            ASSERT_LE(s, kMaxKSplit);
            if (s == 1) continue;
            ++splits;
            ASSERT_LE(s, depth) << "every slice at least 128 deep";
            const int room = k_split_room(rows, g0, g1, hidden, ffn);
            for (int g : {g0, g1}) {  // each phase: its groups and partial tiles
              ASSERT_LE(2 * rows * g, target);
              ASSERT_LE(rows * g * s, target);
              ASSERT_LE(rows * g * s, room) << "the partial tiles the plan sized (workspace.cpp)";
            }
            ASSERT_LE(rows * (g0 + g1) * s, 2 * kSplitTargetMax) << "queue room (workspace.cpp)";
          }
        }
      }
    }
  }
  EXPECT_GT(splits, 1000);
  // One token at top-2 on the default shape (bf16: 2048 / 256 = 8 column tiles each way), 132 SMs.
  EXPECT_EQ(k_split_for(2, 8, 8, 2048, 2048, 132), 8);
  // 128 tokens at top-8 of 128 experts (128 row tiles): whole tasks.
  EXPECT_EQ(k_split_for(128, 12, 16, 4096, 1536, 132), 1);
  EXPECT_EQ(k_split_for(0, 8, 8, 2048, 2048, 132), 1);
  // The room: the default shape's layer needs every partial tile; a 128-deep K never splits; a
  // small layer (4 row tiles x 2 column tiles, K of 2 steps) needs 16.
  EXPECT_EQ(k_split_room(200, 16, 16, 2048, 2048), kSplitTargetMax);
  EXPECT_EQ(k_split_room(200, 16, 16, 2048, 128), 0);
  EXPECT_EQ(k_split_room(4, 2, 1, 256, 256), 16);
}

// The gate's K split (device/split.hpp, gate_split_for) against the partial sums the workspace
// plan reserves (gate_partial_floats) and the slices the kernel computes (k_slice in 64-deep
// steps), over token counts, shapes and block counts; a large call keeps the halves it had.
TEST(Workspace, GateSplitStaysWithinItsPlannedRoom) {
  using monomoe::device::gate_partial_floats;
  using monomoe::device::gate_split_for;
  using monomoe::device::k_slice;
  using monomoe::device::kGateKStep;
  using monomoe::device::kGateSumBytes;
  using monomoe::device::kMaxGateSplit;
  int many = 0;
  for (int blocks : {1, 2, 3, 16, 33, 66, 132, 148, 264}) {
    for (long long tokens = 1; tokens <= 20000; tokens += tokens < 40 ? 1 : tokens / 3) {
      for (int ep : {128, 256}) {
        for (int depth : {1, 2, 3, 8, 16, 56, 512}) {
          const int hidden = 128 * depth;
          const int s = gate_split_for(tokens, hidden, ep, blocks);
          ASSERT_GE(s, 1);
          ASSERT_LE(s, kMaxGateSplit);
          ASSERT_LE(s, hidden / kGateKStep) << "every slice at least 64 deep";
          const long long tiles = (tokens + 127) / 128;
          // The rule it replaces: halves when there are two blocks per token tile.
          ASSERT_EQ(s > 1, 2 * tiles <= blocks);
          if (s > 1) {
            ASSERT_LE(s * tiles, blocks) << "one block per (tile, slice) item";
          }
          if (s > 2) {
            ++many;
            ASSERT_LE(s * tokens * ep * 4, kGateSumBytes) << "what the routing blocks sum";
          }
          // The plan's room (sized for max_tokens >= tokens; tokens itself is the tightest).
          ASSERT_LE(s * tokens * ep, gate_partial_floats(tokens, ep));
          // The kernel's slices: contiguous, whole 64-deep steps, covering K.
          int next = 0;
          for (int i = 0; i < s; ++i) {
            const auto ks = k_slice(hidden, i, s, kGateKStep);
            ASSERT_EQ(ks.first, next);
            ASSERT_GE(ks.count, kGateKStep);
            ASSERT_EQ(ks.count % kGateKStep, 0);
            next += ks.count;
          }
          ASSERT_EQ(next, hidden);
          if (s == 2) {
            ASSERT_EQ(k_slice(hidden, 1, 2, kGateKStep).first, hidden / 2);
          }
        }
      }
    }
  }
  EXPECT_GT(many, 1000);
  // One token on the default shape (2048 x 128 gate columns) on 132 SMs: 32 slices of 64; 16
  // tokens: 16; a 128-token tile: halves, as before; 8192 tokens: halves; on fewer than 128 blocks:
  // whole.
  EXPECT_EQ(gate_split_for(1, 2048, 128, 132), 32);
  EXPECT_EQ(gate_split_for(16, 2048, 128, 132), 16);
  EXPECT_EQ(gate_split_for(128, 2048, 128, 132), 2);
  EXPECT_EQ(gate_split_for(8192, 2048, 128, 132), 2);
  EXPECT_EQ(gate_split_for(8192, 2048, 128, 127), 1);
  // The default layer's room: the two halves of 8192 x 128 logits, as before.
  EXPECT_EQ(gate_partial_floats(8192, 128), 2 * 8192 * 128);
}
