// The workspace plan and the prefixes that the layers of one Communicator share
// (src/host/workspace.hpp): the words the kernel compares with a call's epoch sit at positions
// that no layer's config moves, and no layer's own region reaches into them (label cpu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "device/pack.hpp"
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
  LayerConfig shared = big;  // a shared expert of 3 slices
  shared.shared_ffn = 3 * big.ffn;
  v.push_back(shared);
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
          {p.hidden_act, u(std::max(p.rows_in, p.gemm_tiles * 128) * c.ffn) * elem},
          {p.x_rows, p.x_rows_bytes},
          {p.stage, choices * u(c.hidden) * elem},
          {p.shared_stage, u(c.max_tokens * c.shared_slices() * c.hidden) * elem},
          {p.recv_tiles, u(p.row_tiles) * 16},
          {p.recv_part, u(p.recv_parts) * 16}};
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

// GEMM0's expert-ordered copy of x (device::Params::x_rows): one rank, fp8 only (bf16 measured
// slower), a row of the expert GEMMs' x (values and scales) per row of hidden_act.
TEST(Workspace, XRowsOnlyWhereGemm0ReadsThemByTma) {
  for (std::int64_t world : {1, 2}) {
    for (DType d : {DType::bf16, DType::fp8, DType::tf32, DType::fp32}) {
      LayerConfig c;
      c.world_size = world;
      c.experts = 8 * world;
      c.max_tokens = 1000;
      c.dtype = d;
      if (d == DType::fp8) c.weight_layout = WeightLayout::out_in;
      SCOPED_TRACE(c.describe());
      const detail::WorkspacePlan p = detail::plan_workspace(c);
      const auto x_row = static_cast<std::size_t>(device::operand_pitch(c.hidden, true));
      const bool by_tma = world == 1 && d == DType::fp8;
      EXPECT_EQ(detail::TileShape::gemm0_rows_by_tma(d, world), by_tma);
      EXPECT_EQ(p.x_rows_bytes, by_tma ? static_cast<std::size_t>(p.hidden_rows) * x_row : 0u);
      EXPECT_LE(p.x_rows + p.x_rows_bytes, p.body_bytes);
    }
  }
}

TEST(Workspace, LayerRegionsStayInTheLayersArea) {
  for (std::int64_t world : {1, 4}) {
    for (const LayerConfig& c : configs(world)) {
      SCOPED_TRACE(c.describe());
      const detail::WorkspacePlan p = detail::plan_workspace(c);
      EXPECT_EQ(p.world, world);
      EXPECT_EQ(p.recv_parts, device::recv_parts_bound(p.row_tiles));
      // The shared expert's row tiles (every slice over every token tile) come on top of the
      // routed ones: counters, hidden_act rows, tasks.
      EXPECT_EQ(p.shared_tiles, c.shared_slices() * p.token_tiles);
      EXPECT_EQ(p.gemm_tiles, p.row_tiles + p.shared_tiles);
      EXPECT_GE(p.hidden_rows, p.gemm_tiles * 128);
      const std::int64_t gemm_cols = c.w1_columns() / 128 + c.hidden / 128;
      EXPECT_GE(p.max_tasks, p.gemm_tiles * gemm_cols + p.token_tiles);
      EXPECT_GE(p.control_bytes, 72 + 4 * static_cast<std::size_t>(2 * c.experts + p.gemm_tiles +
                                                                     2 * p.token_tiles));
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
  using monomoe::device::gemm0_results;
  using monomoe::device::k_split_for;
  using monomoe::device::k_split_room;
  using monomoe::device::kMaxKSplit;
  using monomoe::device::kSplitTargetMax;
  using monomoe::device::split_partial_tiles;
  using monomoe::device::split_slots_first_tile;
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
            // The partial tiles: GEMM0's slots end where GEMM1's start, GEMM1's where fp8
            // SwiGLU's gate tiles start, and those within the plan's tiles.
            ASSERT_EQ(split_slots_first_tile(0, 0, room), 0);
            ASSERT_LE(rows * g0 * s, split_slots_first_tile(1, 0, room));
            ASSERT_LE(split_slots_first_tile(1, 0, room) + rows * g1 * s,
                      split_partial_tiles(room, 1));
            ASSERT_LE(split_slots_first_tile(0, 1, room) + rows * g0 * s,
                      split_partial_tiles(room, 2));
            ASSERT_GE(split_slots_first_tile(0, 1, room), split_partial_tiles(room, 1));
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
  // A second set of GEMM0 slots (the gate tiles) for block-scaled (fp8) SwiGLU only.
  EXPECT_EQ(gemm0_results(true, true), 2);
  EXPECT_EQ(gemm0_results(true, false), 1);
  EXPECT_EQ(gemm0_results(false, true), 1);
  EXPECT_EQ(split_partial_tiles(kSplitTargetMax, 2), 3 * kSplitTargetMax);
}

// The split-K partial tiles a layer's plan sizes (host/workspace.cpp) against the kernel's indexing
// (processor.cuh, finish_k_split): split_room slots of one tile per phase, and for fp8 SwiGLU a
// second set for GEMM0's gate tiles. Every call the layer can make (row tiles up to the plan's, any
// block count) that splits stays inside the region.
TEST(Workspace, SplitPartialsHoldEverySlotsTiles) {
  using namespace monomoe;
  using monomoe::device::kSplitTargetMax;
  const auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  for (DType d : {DType::bf16, DType::fp32, DType::fp8}) {
    for (Activation a : {Activation::gelu, Activation::swiglu}) {
      LayerConfig c;
      c.max_tokens = 64;
      c.hidden = 1024;
      c.ffn = 768;
      c.experts = 8;
      c.topk = 2;
      c.dtype = d;
      c.activation = a;
      if (d == DType::fp8) c.weight_layout = WeightLayout::out_in;
      SCOPED_TRACE(c.describe());
      const detail::WorkspacePlan p = detail::plan_workspace(c);
      ASSERT_GT(p.split_room, 0);
      const std::int64_t bn = detail::TileShape::expert_cols(d, c.weight_layout);
      const std::size_t tile_bytes = u(128 * bn * 4);
      const bool two = d == DType::fp8 && a == Activation::swiglu;
      const int results0 = device::gemm0_results(d == DType::fp8, a == Activation::swiglu);
      EXPECT_EQ(results0, two ? 2 : 1);
      EXPECT_EQ(p.split_partial_bytes, u(p.split_room * (results0 + 1)) * tile_bytes);
      EXPECT_LE(p.split_partial + p.split_partial_bytes, p.body_bytes);
      // The column tiles the kernel plans with (layer.cu): SwiGLU reads bn / 2 gate and bn / 2 up
      // columns a task, except fp8's, which makes bn outputs from bn of each.
      const int g0 = static_cast<int>(
          a == Activation::swiglu && d != DType::fp8 ? c.ffn / (bn / 2) : (c.ffn + bn - 1) / bn);
      const int g1 = static_cast<int>((c.hidden + bn - 1) / bn);
      const long long room = p.split_room;
      const long long gate0 = device::split_slots_first_tile(0, 1, room);
      int splits = 0;
      for (int target = 2; target <= kSplitTargetMax; ++target) {
        for (int rows = 1; rows <= p.gemm_tiles; ++rows) {
          const int s = device::k_split_for(rows, g0, g1, static_cast<int>(c.hidden),
                                            static_cast<int>(c.ffn), target);
          if (s == 1) continue;
          ++splits;
          // finish_k_split's bound (slots), then past the last tile each set of slots has.
          ASSERT_LE(rows * g0 * s, room);
          ASSERT_LE(rows * g1 * s, room);
          const long long end0 = device::split_slots_first_tile(0, 0, room) + rows * g0 * s;
          const long long end1 = device::split_slots_first_tile(1, 0, room) + rows * g1 * s;
          ASSERT_LE(end0, device::split_slots_first_tile(1, 0, room));
          ASSERT_LE(u(end1) * tile_bytes, p.split_partial_bytes);
          if (two) {  // the gate tiles, after GEMM1's
            ASSERT_LE(end1, gate0);
            ASSERT_LE(u(gate0 + rows * g0 * s) * tile_bytes, p.split_partial_bytes);
          }
        }
      }
      EXPECT_GT(splits, 0);
    }
  }
}

// The packing of received rows into row tiles (device/pack.hpp) over random and adversarial
// headers: every row of every (source, local expert) lands in exactly one tile, each part inside
// one of its source's row tiles (the arrival flag it waits on), tiles of one expert and at most 128
// rows, packed only where that saves tiles, and within the bounds the workspace plan sizes
// recv_tiles and recv_parts with (host/workspace.cpp).
namespace {

struct PackCase {
  int world, experts_local, rank;
  std::vector<int> header;       // [world][experts_local]
  std::vector<int> local_first;  // [experts_local]
  long long max_tiles;           // the workspace plan's row_tiles for the case's max_tokens
};

// Runs pack_recv_tiles with room for `max_tiles` tiles and `max_parts` parts and checks the result
// against the rule. Returns "" or what went wrong.
std::string check_pack(const PackCase& c, monomoe::device::PackResult* result = nullptr) {
  using namespace monomoe::device;
  const int w = c.world, el = c.experts_local;
  const long long max_parts = recv_parts_bound(c.max_tiles);
  std::vector<RecvTile> tiles(static_cast<std::size_t>(c.max_tiles) + 1, RecvTile{-7, -7, -7, -7});
  std::vector<RecvPart> parts(static_cast<std::size_t>(max_parts) + 1, RecvPart{-7, -7, -7, -7});
  std::vector<int> seg_rows(static_cast<std::size_t>(w)), seg_tiles(static_cast<std::size_t>(w));
  const PackResult r = pack_recv_tiles(
      w, el, c.rank, c.header.data(), c.local_first.data(), seg_rows.data(), seg_tiles.data(),
      tiles.data(), static_cast<int>(c.max_tiles), parts.data(), static_cast<int>(max_parts));
  if (result) *result = r;
  if (!r.ok) return "the plan's bounds were too small";
  if (tiles.back().rows != -7 || parts.back().rows != -7) return "wrote past the room";
  const auto hdr = [&](int s, int e) { return c.header[static_cast<std::size_t>(s * el + e)]; };
  // Expected tiles per expert, and where each (source, expert)'s rows start: its segment offset and
  // tile (experts in order), or local_first for this rank's own rows.
  std::vector<int> want_tiles(static_cast<std::size_t>(el), 0);
  long long unpacked = 0;
  std::vector<int> base(static_cast<std::size_t>(w * el)), tile0(static_cast<std::size_t>(w * el));
  for (int s = 0; s < w; ++s) {
    int rows = 0, t = 0;
    for (int e = 0; e < el; ++e) {
      base[static_cast<std::size_t>(s * el + e)] =
          s == c.rank ? c.local_first[static_cast<std::size_t>(e)] : rows;
      tile0[static_cast<std::size_t>(s * el + e)] = t;
      rows += hdr(s, e);
      t += (hdr(s, e) + 127) / 128;
    }
  }
  for (int e = 0; e < el; ++e) {
    int full = 0, rem = 0, rem_rows = 0;
    for (int s = 0; s < w; ++s) {
      full += hdr(s, e) / 128;
      rem += hdr(s, e) % 128 ? 1 : 0;
      rem_rows += hdr(s, e) % 128;
    }
    unpacked += full + rem;
    want_tiles[static_cast<std::size_t>(e)] = full + std::min(rem, (rem_rows + 127) / 128);
  }
  if (r.tiles > unpacked) return "more tiles than one per segment piece";
  if (unpacked > c.max_tiles) return "the case exceeds the plan's row tiles";
  if (r.parts > recv_parts_bound(unpacked)) return "more parts than the bound";
  // Every row of (s, e) covered once: [base, base + rows) as a multiset of (s, index).
  std::set<std::pair<int, int>> seen;
  std::vector<int> got_tiles(static_cast<std::size_t>(el), 0);
  int next_part = 0, packed = 0, prev_expert = 0;
  for (int i = 0; i < r.tiles; ++i) {
    const RecvTile& t = tiles[static_cast<std::size_t>(i)];
    const std::string at = "tile " + std::to_string(i) + ": ";
    if (t.expert_local < prev_expert || t.expert_local >= el) return at + "expert out of order";
    prev_expert = t.expert_local;
    ++got_tiles[static_cast<std::size_t>(t.expert_local)];
    if (t.rows < 1 || t.rows > 128) return at + "rows out of 1..128";
    if (t.parts < 1 || t.parts > w) return at + "parts out of 1..world";
    if (t.part_first != next_part) return at + "parts not consecutive";
    next_part += t.parts;
    packed += t.parts > 1 ? 1 : 0;
    int sum = 0, prev_source = -1;
    for (int j = 0; j < t.parts; ++j) {
      const RecvPart& q = parts[static_cast<std::size_t>(t.part_first + j)];
      if (q.source <= prev_source || q.source >= w) return at + "sources not in rank order";
      prev_source = q.source;
      const int e = t.expert_local;
      const int b = base[static_cast<std::size_t>(q.source * el + e)];
      const int k0 = q.first - b, k1 = q.first + q.rows - 1 - b;
      if (q.rows < 1 || k0 < 0 || k1 >= hdr(q.source, e)) return at + "part outside its rows";
      if (k0 / 128 != k1 / 128) return at + "part spans two of its source's tiles";
      if (q.seg_tile != tile0[static_cast<std::size_t>(q.source * el + e)] + k0 / 128) {
        return at + "part waits on the wrong arrival flag";
      }
      if (t.parts > 1 && k0 / 128 != hdr(q.source, e) / 128) {
        return at + "a source's full tile was packed";
      }
      for (int k = k0; k <= k1; ++k) {
        if (!seen.insert({q.source * el + e, k}).second) return at + "a row listed twice";
      }
      sum += q.rows;
    }
    if (sum != t.rows) return at + "parts do not add up to the tile";
  }
  // Packed only where that saves tiles: an expert with a tile of several sources needs fewer
  // tiles for its remainders than it has remainders.
  for (int i = 0; i < r.tiles; ++i) {
    const RecvTile& t = tiles[static_cast<std::size_t>(i)];
    if (t.parts < 2) continue;
    int rem = 0, rem_rows = 0;
    for (int s = 0; s < w; ++s) {
      rem += hdr(s, t.expert_local) % 128 ? 1 : 0;
      rem_rows += hdr(s, t.expert_local) % 128;
    }
    if ((rem_rows + 127) / 128 >= rem) return "packed where it saves no tile";
  }
  if (next_part != r.parts) return "parts listed but not used";
  if (packed != r.packed) return "packed count";
  long long rows = 0;
  for (int v : c.header) rows += v;
  if (static_cast<long long>(seen.size()) != rows) return "rows missing";
  for (int e = 0; e < el; ++e) {
    if (got_tiles[static_cast<std::size_t>(e)] != want_tiles[static_cast<std::size_t>(e)]) {
      return "expert " + std::to_string(e) + ": " +
             std::to_string(got_tiles[static_cast<std::size_t>(e)]) + " tiles, the rule makes " +
             std::to_string(want_tiles[static_cast<std::size_t>(e)]);
    }
  }
  return "";
}

// The kernel's listing (ep.cuh, list_recv_tiles: a thread per local expert), done here expert by
// expert in reverse order: every source's segment offsets from segment_offsets, each expert's
// tiles and parts counted, their places summed, then each expert written at its place. It must
// make pack_recv_tiles' list exactly. Returns "" or the first difference.
std::string check_parallel_listing(const PackCase& c) {
  using namespace monomoe::device;
  const int w = c.world, el = c.experts_local;
  const auto at = [](int i) { return static_cast<std::size_t>(i); };
  std::vector<int> rows_before(at(w * el), -1), tiles_before(at(w * el), -1);
  for (int s = 0; s < w; ++s) {
    segment_offsets(s, el, c.header.data(), rows_before.data(), tiles_before.data());
  }
  const auto unused = [](int) { return SegmentBefore{-1000, -1000}; };
  std::vector<int> tile0(at(el) + 1, 0), part0(at(el) + 1, 0);
  int packed = 0;
  for (int e = 0; e < el; ++e) {
    const PackCount n = pack_expert(w, el, c.rank, e, c.header.data(), c.local_first[at(e)],
                                    unused, nullptr, nullptr, 0);
    tile0[at(e) + 1] = tile0[at(e)] + n.tiles;
    part0[at(e) + 1] = part0[at(e)] + n.parts;
    packed += n.packed;
  }
  const int n_tiles = tile0[at(el)], n_parts = part0[at(el)];
  std::vector<RecvTile> tiles(at(n_tiles), RecvTile{-7, -7, -7, -7});
  std::vector<RecvPart> parts(at(n_parts), RecvPart{-7, -7, -7, -7});
  for (int e = el - 1; e >= 0; --e) {
    const auto before = [&](int s) {
      return SegmentBefore{rows_before[at(s * el + e)], tiles_before[at(s * el + e)]};
    };
    pack_expert(w, el, c.rank, e, c.header.data(), c.local_first[at(e)], before,
                tiles.data() + tile0[at(e)], parts.data() + part0[at(e)], part0[at(e)]);
  }
  std::vector<RecvTile> want_tiles(at(n_tiles) + 1);
  std::vector<RecvPart> want_parts(at(n_parts) + 1);
  std::vector<int> seg_rows(at(w)), seg_tiles(at(w));
  const PackResult r = pack_recv_tiles(w, el, c.rank, c.header.data(), c.local_first.data(),
                                       seg_rows.data(), seg_tiles.data(), want_tiles.data(),
                                       n_tiles + 1, want_parts.data(), n_parts + 1);
  if (!r.ok || r.tiles != n_tiles || r.parts != n_parts || r.packed != packed) {
    return "counts differ: " + std::to_string(n_tiles) + " tiles, " + std::to_string(n_parts) +
           " parts, " + std::to_string(packed) + " packed vs " + std::to_string(r.tiles) + ", " +
           std::to_string(r.parts) + ", " + std::to_string(r.packed);
  }
  for (int i = 0; i < n_tiles; ++i) {
    const RecvTile a = tiles[at(i)], b = want_tiles[at(i)];
    if (a.expert_local != b.expert_local || a.rows != b.rows || a.part_first != b.part_first ||
        a.parts != b.parts) {
      return "tile " + std::to_string(i) + " differs";
    }
  }
  for (int i = 0; i < n_parts; ++i) {
    const RecvPart a = parts[at(i)], b = want_parts[at(i)];
    if (a.source != b.source || a.first != b.first || a.rows != b.rows ||
        a.seg_tile != b.seg_tile) {
      return "part " + std::to_string(i) + " differs";
    }
  }
  return "";
}

// A case whose headers come from `tokens[s]` tokens per source, each choosing `k` distinct experts
// of world * el at random (so each source's rows respect the plan's rows_per_source).
PackCase random_case(std::mt19937& rng, int world, int el, int k, int rank,
                     const std::vector<int>& tokens, int max_tokens) {
  PackCase c{world, el, rank, std::vector<int>(static_cast<std::size_t>(world * el), 0), {}, 0};
  const int experts = world * el;
  for (int s = 0; s < world; ++s) {
    for (int t = 0; t < tokens[static_cast<std::size_t>(s)]; ++t) {
      std::vector<int> all(static_cast<std::size_t>(experts));
      for (int e = 0; e < experts; ++e) all[static_cast<std::size_t>(e)] = e;
      std::shuffle(all.begin(), all.end(), rng);
      for (int j = 0; j < std::min(k, experts); ++j) {
        const int e = all[static_cast<std::size_t>(j)];
        if (e / el == rank) ++c.header[static_cast<std::size_t>(s * el + e % el)];
      }
    }
  }
  int first = 0;  // this rank's own rows of each expert: any increasing offsets
  for (int e = 0; e < el; ++e) {
    c.local_first.push_back(first + 3);
    first += c.header[static_cast<std::size_t>(rank * el + e)] + 5;
  }
  // The plan's row tiles (workspace.cpp) for max_tokens.
  const long long rows_per_source = static_cast<long long>(max_tokens) * std::min(k, el);
  c.max_tiles = world * ((rows_per_source + 127) / 128 + el);
  return c;
}

}  // namespace

TEST(Workspace, PackedRowTilesFollowTheRuleWithinTheirBounds) {
  std::mt19937 rng(99);
  int packed_cases = 0;
  for (int world : {1, 2, 3, 4, 8, 16}) {
    for (int el : {1, 2, 4, 16}) {
      for (int k : {1, 2, 8}) {
        for (int max_tokens : {1, 40, 300}) {
          for (int trial = 0; trial < 3; ++trial) {
            std::vector<int> tokens;
            for (int s = 0; s < world; ++s) {
              const int pick = static_cast<int>(rng() % 4);
              tokens.push_back(pick == 0   ? 0
                               : pick == 1 ? max_tokens
                                           : static_cast<int>(rng() % (max_tokens + 1)));
            }
            const PackCase c =
                random_case(rng, world, el, k, static_cast<int>(rng() % world), tokens, max_tokens);
            monomoe::device::PackResult r{};
            ASSERT_EQ(check_pack(c, &r), "")
                << "world " << world << " el " << el << " k " << k << " max_tokens " << max_tokens;
            ASSERT_EQ(check_parallel_listing(c), "")
                << "world " << world << " el " << el << " k " << k << " max_tokens " << max_tokens;
            packed_cases += r.packed > 0 ? 1 : 0;
          }
        }
      }
    }
  }
  EXPECT_GT(packed_cases, 50);
}

TEST(Workspace, PackedRowTilesEdgeCases) {
  using monomoe::device::PackResult;
  PackResult r{};
  // The shape: 2 ranks, 64 local experts, ~4 rows per expert from each source: one tile per
  // expert instead of two.
  {
    PackCase c{2, 64, 1, std::vector<int>(128, 4), {}, 2 * (64 * 8 / 128 + 64)};
    for (int e = 0; e < 64; ++e) c.local_first.push_back(4 * e);
    ASSERT_EQ(check_pack(c, &r), "");
    EXPECT_EQ(r.tiles, 64);
    EXPECT_EQ(r.packed, 64);
    EXPECT_EQ(r.parts, 128);
  }
  // Two sources, two experts: expert 0 gets 200 + 100 rows (remainders 72 + 100 need two tiles
  // anyway: left alone, each starts when its source lands); expert 1 gets 60 + 10 (one packed
  // tile).
  {
    PackCase c{2, 2, 0, {200, 60, 100, 10}, {0, 200}, 100};
    ASSERT_EQ(check_pack(c, &r), "");
    EXPECT_EQ(r.tiles, 4);  // e0: full(s0), rem(s0), rem(s1); e1: packed
    EXPECT_EQ(r.packed, 1);
  }
  // Exactly 128 rows from each of three sources: full tiles only. Zero rows everywhere: no tiles.
  {
    PackCase c{3, 1, 2, {128, 128, 128}, {0}, 3 * 2};
    ASSERT_EQ(check_pack(c, &r), "");
    EXPECT_EQ(r.tiles, 3);
    EXPECT_EQ(r.packed, 0);
    PackCase z{3, 2, 0, {0, 0, 0, 0, 0, 0}, {0, 0}, 3 * 3};
    ASSERT_EQ(check_pack(z, &r), "");
    EXPECT_EQ(r.tiles, 0);
    EXPECT_EQ(r.parts, 0);
  }
  // Rows of one expert from one source only: nothing to pack.
  {
    PackCase c{4, 1, 0, {0, 0, 5, 0}, {0}, 4 * 2};
    ASSERT_EQ(check_pack(c, &r), "");
    EXPECT_EQ(r.tiles, 1);
    EXPECT_EQ(r.packed, 0);
  }
  // 8 sources of 100 rows (800: 7 tiles instead of 8): remainders cut across tile boundaries, 8
  // parts + 6 cuts; the last tile (rows 768..799) holds the rest of source 7 alone.
  {
    PackCase c{8, 1, 3, std::vector<int>(8, 100), {0}, 8 * 2};
    ASSERT_EQ(check_pack(c, &r), "");
    EXPECT_EQ(r.tiles, 7);
    EXPECT_EQ(r.parts, 14);
    EXPECT_EQ(r.packed, 6);
  }
  // Too little room: refused, nothing written past it.
  {
    PackCase c{2, 1, 0, {200, 200}, {0}, 2};  // needs 3 tiles
    EXPECT_EQ(check_pack(c, &r), "the plan's bounds were too small");
    EXPECT_FALSE(r.ok);
  }
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
  // tokens: 32; a 128-token tile: 8; 256 tokens: 4 per tile; 8192 tokens: halves; on fewer than
  // 128 blocks: whole.
  EXPECT_EQ(gate_split_for(1, 2048, 128, 132), 32);
  EXPECT_EQ(gate_split_for(16, 2048, 128, 132), 32);
  EXPECT_EQ(gate_split_for(128, 2048, 128, 132), 8);
  EXPECT_EQ(gate_split_for(256, 2048, 128, 132), 4);
  EXPECT_EQ(gate_split_for(8192, 2048, 128, 132), 2);
  EXPECT_EQ(gate_split_for(8192, 2048, 128, 127), 1);
  // The default layer's room: the two halves of 8192 x 128 logits, as before.
  EXPECT_EQ(gate_partial_floats(8192, 128), 2 * 8192 * 128);
}

// Combine tasks (device/split.hpp, combine_cols_for): widths from 512 down to 32 columns, whole
// 8-column groups, a call of many token tiles keeps 512, a call of few gets at least
// kCombineTaskTarget tasks where 32-column tiles allow it; every call's count within the bound the
// task queue is sized with (combine_tasks_bound, for any max_tokens at least the call's).
TEST(Workspace, CombineTasksStayWithinThePlannedQueue) {
  using monomoe::device::combine_cols_for;
  using monomoe::device::combine_tasks_bound;
  using monomoe::device::kCombineColsMax;
  using monomoe::device::kCombineColsMin;
  using monomoe::device::kCombineTaskTarget;
  for (int depth = 1; depth <= 128; ++depth) {
    const int hidden = 128 * depth;
    for (long long tiles = 1; tiles <= 4096; tiles += tiles < 64 ? 1 : tiles / 4) {
      const int cols = combine_cols_for(tiles, hidden);
      ASSERT_GE(cols, kCombineColsMin);
      ASSERT_LE(cols, kCombineColsMax);
      ASSERT_EQ(cols % 8, 0);
      ASSERT_EQ(kCombineColsMax % cols, 0) << "a power-of-two fraction of the widest";
      const long long tasks = tiles * ((hidden + cols - 1) / cols);
      if (cols < kCombineColsMax) {
        if (cols <= 128) {
          ASSERT_EQ(hidden % cols, 0) << "tiles of 128 or fewer columns divide hidden";
        }
        // Narrowed only while the wider tiles were too few, and no further than needed.
        ASSERT_LT(tiles * ((hidden + 2 * cols - 1) / (2 * cols)), kCombineTaskTarget);
        if (cols > kCombineColsMin) {
          ASSERT_GE(tasks, kCombineTaskTarget);
        }
      }
      for (long long max_tiles : {tiles, tiles + 1, 2 * tiles, tiles + 4096}) {
        ASSERT_LE(tasks, combine_tasks_bound(max_tiles, hidden))
            << "hidden " << hidden << ", " << tiles << " of at most " << max_tiles << " tiles";
      }
    }
  }
  // The default config (8192 tokens, hidden 2048): 512-column tiles as before; one token tile at
  // hidden 4096: 32 columns, 128 tasks instead of 8.
  EXPECT_EQ(combine_cols_for(64, 2048), 512);
  EXPECT_EQ(combine_cols_for(1, 4096), 32);
  EXPECT_EQ(combine_cols_for(2, 6144), 64);
}
