#include "host/workspace.hpp"

#include <algorithm>

#include "host/checked.hpp"

namespace monomoe::detail {

namespace {

// Appends regions to a byte count, each 256-byte aligned, with overflow checks.
class Arena {
 public:
  std::size_t take(std::size_t bytes, const char* what) {
    const std::size_t at = round_up(end_, 256, what);
    end_ = checked_add(at, bytes, what);
    return at;
  }
  std::size_t size() const { return end_; }

 private:
  std::size_t end_ = 0;
};

}  // namespace

WorkspacePlan plan_workspace(const LayerConfig& cfg) {
  WorkspacePlan p;
  const auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  const std::size_t elem = element_bytes(cfg.dtype);
  const std::int64_t local_experts = cfg.experts_per_rank();
  p.token_tiles = (cfg.max_tokens + TileShape::kRows - 1) / TileShape::kRows;
  p.experts_padded = (cfg.experts + TileShape::kCols - 1) / TileShape::kCols * TileShape::kCols;
  // A source sends a token to one local expert per choice, so at most min(k, local experts) copies.
  const std::int64_t copies = std::min(cfg.topk, local_experts);
  p.rows_in = static_cast<std::int64_t>(
      checked_mul(checked_mul(u(cfg.world_size), u(cfg.max_tokens), "max_tokens"), u(copies),
                  "max_tokens"));
  // Each (source, expert) segment may end in a partial tile. Packing the partial tiles of several
  // sources into one (device/pack.hpp) only ever makes fewer tiles, with at most twice as many
  // parts.
  const std::int64_t rows_per_source = cfg.max_tokens * copies;
  const std::int64_t tiles_per_source =
      (rows_per_source + TileShape::kRows - 1) / TileShape::kRows + local_experts;
  p.row_tiles = static_cast<std::int64_t>(
      checked_mul(u(cfg.world_size), u(tiles_per_source), "max_tokens"));
  p.recv_parts = device::recv_parts_bound(p.row_tiles);
  p.shared_tiles = cfg.shared_slices() * p.token_tiles;  // <= 8 * 2^17
  p.gemm_tiles = p.row_tiles + p.shared_tiles;
  // SwiGLU GEMM0 tiles produce half a tile of output columns each.
  const std::int64_t gemm0_cols = cfg.w1_columns() / TileShape::kCols;
  const std::int64_t gemm1_cols = cfg.hidden / TileShape::kCols;
  // With split K a call has at most 2 * kSplitGroups GEMM tasks (device/route.cuh, plan_k_split).
  const std::size_t gemm_tasks =
      std::max(checked_mul(u(p.gemm_tiles), u(gemm0_cols + gemm1_cols), "max_tokens"),
               u(2 * TileShape::kSplitGroups));
  // Combine tasks: narrower for calls of few token tiles (device/split.hpp, combine_cols_for).
  const std::size_t tasks = checked_add(
      gemm_tasks, u(device::combine_tasks_bound(p.token_tiles, static_cast<int>(cfg.hidden))),
      "max_tokens");
  if (tasks > 0x7fffffffu) throw ConfigError("max_tokens: the task queue would exceed 2^31 slots");
  p.max_tasks = static_cast<std::int64_t>(tasks);

  p.world = cfg.world_size;
  Arena a;
  constexpr std::size_t kControlHeader = 72;  // sizeof(device::Control), checked in layer.cu
  const std::int64_t control_words =
      2 * cfg.experts + p.gemm_tiles + 2 * p.token_tiles + 2 * TileShape::kSplitGroups;
  p.control_bytes =
      checked_add(kControlHeader, checked_mul(u(control_words), 4, "max_tokens"), "max_tokens");
  p.control = a.take(p.control_bytes, "control");
  p.gate = a.take(checked_mul(checked_mul(u(cfg.hidden), u(p.experts_padded), "hidden"), elem,
                              "hidden"),
                  "hidden");
  // Partial sums of the gate GEMM's K slices (device/split.hpp, gate_split_for): two per logit
  // of a large call, more per logit of a call of few tokens, within kGateSumBytes.
  // (max_tokens <= 2^24 and experts_padded <= 256: the count fits its 64 bits.)
  p.logit_floats = device::gate_partial_floats(cfg.max_tokens, static_cast<int>(p.experts_padded));
  p.logits = a.take(checked_mul(u(p.logit_floats), 4, "max_tokens"), "max_tokens");
  const std::size_t choices = checked_mul(u(cfg.max_tokens), u(cfg.topk), "max_tokens");
  p.topk_expert = a.take(checked_mul(choices, 4, "max_tokens"), "topk");
  p.topk_weight = a.take(checked_mul(choices, 4, "max_tokens"), "topk");
  p.topk_kept = a.take(choices, "topk");
  p.tile_counts =
      a.take(checked_mul(checked_mul(u(p.token_tiles), u(cfg.experts), "experts"), 4, "experts"),
             "experts");
  p.expert_rows = a.take(checked_mul(u(p.rows_in), 4, "max_tokens"), "max_tokens");
  // Row tile i of GEMM0/GEMM1 owns rows [i * 128, i * 128 + rows) when world > 1, and so does a
  // shared tile always (its index counts the routed tiles before it).
  const std::size_t hidden_rows =
      std::max(u(p.rows_in), checked_mul(u(p.gemm_tiles), u(TileShape::kRows), "max_tokens"));
  p.hidden_rows = static_cast<std::int64_t>(hidden_rows);
  // Bytes of a row of x and of the activation as the expert GEMMs read them (fp8: E4M3 values and
  // their scales, device::operand_pitch).
  const bool fp8 = cfg.dtype == DType::fp8;
  const std::size_t x_row =
      fp8 ? u(device::operand_pitch(cfg.hidden, true)) : checked_mul(u(cfg.hidden), elem, "hidden");
  const std::size_t h_row =
      fp8 ? u(device::operand_pitch(cfg.ffn, true)) : checked_mul(u(cfg.ffn), elem, "ffn");
  p.x_quant = a.take(fp8 ? checked_mul(u(cfg.max_tokens), x_row, "max_tokens") : 0, "max_tokens");
  p.hidden_act = a.take(checked_mul(hidden_rows, h_row, "ffn"), "ffn");
  p.x_rows_bytes = TileShape::gemm0_rows_by_tma(cfg.dtype, cfg.weight_layout, cfg.world_size)
                       ? checked_mul(hidden_rows, x_row, "hidden")
                       : 0;
  p.x_rows = a.take(p.x_rows_bytes, "hidden");
  p.stage = a.take(checked_mul(checked_mul(choices, u(cfg.hidden), "hidden"), elem, "hidden"),
                   "hidden");
  const std::size_t shared_rows =
      checked_mul(u(cfg.max_tokens), u(cfg.shared_slices()), "shared_ffn");
  p.shared_stage = a.take(
      checked_mul(checked_mul(shared_rows, u(cfg.hidden), "hidden"), elem, "hidden"), "hidden");
  p.recv_tiles = a.take(checked_mul(u(p.row_tiles), 16, "max_tokens"), "max_tokens");
  p.recv_part = a.take(checked_mul(u(p.recv_parts), 16, "max_tokens"), "max_tokens");
  // The kernel's expert GEMM tasks are 128 x expert_cols (layer.cu: gemm0/gemm1_col_tiles).
  const std::int64_t ecols = TileShape::expert_cols(cfg.dtype, cfg.weight_layout);
  p.split_room = device::k_split_room(
      p.gemm_tiles, static_cast<int>((cfg.w1_columns() + ecols - 1) / ecols),
      static_cast<int>((cfg.hidden + ecols - 1) / ecols), static_cast<int>(cfg.hidden),
      static_cast<int>(cfg.ffn));
  // fp8 SwiGLU's GEMM0 slices store their gate and up results (device::gemm0_results).
  const int results0 = device::gemm0_results(fp8, cfg.activation == Activation::swiglu);
  p.split_partial_bytes =
      u(device::split_partial_tiles(p.split_room, results0) * TileShape::kRows * ecols * 4);
  p.split_partial = a.take(p.split_partial_bytes, "split");
  p.body_bytes = a.size();

  if (cfg.world_size > 1) {
    auto& w = p.window;
    w.rows_per_source = rows_per_source;
    w.tiles_per_source = tiles_per_source;
    const std::size_t world = u(cfg.world_size);
    Arena b;
    w.header = b.take(checked_mul(world * 4, u(local_experts), "experts"), "experts");
    w.done = b.take(checked_mul(u(p.token_tiles), 4, "max_tokens"), "max_tokens");
    w.reset = w.done;
    w.reset_bytes = u(p.token_tiles) * 4;
    const std::size_t rows_in = checked_mul(world, u(rows_per_source), "max_tokens");
    w.inbox = b.take(checked_mul(rows_in, x_row, "hidden"), "hidden");
    w.ids = b.take(checked_mul(rows_in, 4, "max_tokens"), "max_tokens");
    w.stage = b.take(checked_mul(checked_mul(choices, u(cfg.hidden), "hidden"), elem, "hidden"),
                     "hidden");
    w.body_bytes = b.size();
  }
  const SharedLayout alone = plan_shared(p.max_tasks, p.world, p.window.tiles_per_source);
  p.total = checked_add(alone.body, p.body_bytes, "max_tokens");
  return p;
}

SharedLayout plan_shared(std::int64_t task_slots, std::int64_t world,
                         std::int64_t arrived_per_source) {
  const auto u = [](std::int64_t v) { return static_cast<std::size_t>(v); };
  SharedLayout s;
  s.task_slots = task_slots;
  s.world = world;
  s.arrived_per_source = arrived_per_source;
  Arena a;
  s.epoch = a.take(8, "epoch");
  s.error = a.take(16, "error");
  s.tasks = a.take(checked_mul(u(task_slots), 16, "max_tokens"), "max_tokens");
  s.body = round_up(a.size(), 256, "max_tokens");
  if (world > 1) {
    Arena b;
    s.start = b.take(8 * u(world), "world_size");
    s.header_flag = b.take(8 * u(world), "world_size");
    s.arrived =
        b.take(checked_mul(u(world) * 8, u(arrived_per_source), "max_tokens"), "max_tokens");
    s.window_body = round_up(b.size(), 256, "max_tokens");
  }
  return s;
}

}  // namespace monomoe::detail
