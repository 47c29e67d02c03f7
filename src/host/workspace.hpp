// Where everything the kernel needs lives in device memory, computed once on the host.
#pragma once

#include <cstddef>
#include <cstdint>

#include "monomoe/config.hpp"

namespace monomoe::detail {

// Tile shapes shared by the host planner and the kernel (tiles.cuh static_asserts against these).
struct TileShape {
  static constexpr std::int64_t kRows = 128;        // rows (token copies) per GEMM task
  static constexpr std::int64_t kCols = 128;        // output columns per GEMM task
  static constexpr std::int64_t kCombineCols = 512; // output columns per combine task
};

// Byte offsets into one device allocation. Every region starts 256-byte aligned.
struct WorkspacePlan {
  // Sizes the plan was made for.
  std::int64_t max_tokens = 0;
  std::int64_t token_tiles = 0;  // ceil(max_tokens / kRows)
  std::int64_t rows_in = 0;      // most rows (token copies) this rank's experts can receive
  std::int64_t row_tiles = 0;    // most GEMM row tiles over all local (source, expert) segments
  std::int64_t max_tasks = 0;    // queue capacity

  // Control words: zeroed before every forward (one cudaMemsetAsync, no kernel).
  std::size_t control = 0, control_bytes = 0;
  // Routing: top-k choice per token, per-(token tile, expert) counts, per-expert row lists.
  std::size_t topk_expert = 0;   // int32 [max_tokens, k]
  std::size_t topk_weight = 0;   // float [max_tokens, k]
  std::size_t tile_counts = 0;   // int32 [token_tiles, experts]
  std::size_t expert_rows = 0;   // int32 [rows_in]: token*k + choice, grouped by expert
  std::size_t hidden_act = 0;    // elem [rows_in, ffn]: activation output of GEMM0
  std::size_t stage = 0;         // elem [max_tokens * k, hidden]: expert outputs before combine
  std::size_t tasks = 0;         // Task [max_tasks]
  std::size_t total = 0;
};

// Throws ConfigError (naming the field) if a size overflows.
WorkspacePlan plan_workspace(const LayerConfig& cfg);

}  // namespace monomoe::detail
