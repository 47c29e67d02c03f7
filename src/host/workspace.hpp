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
  static constexpr std::int64_t kCombineCols = 512;  // output columns per combine task
};

// Byte offsets into one device allocation. Every region starts 256-byte aligned. The kernel's
// Params (src/device/params.cuh) points into these regions.
struct WorkspacePlan {
  // Sizes the plan was made for.
  std::int64_t token_tiles = 0;     // ceil(max_tokens / kRows)
  std::int64_t experts_padded = 0;  // gate columns, padded to a multiple of kCols
  std::int64_t rows_in = 0;         // most rows (token copies) this rank's experts can receive
  std::int64_t row_tiles = 0;       // most GEMM row tiles over all (source, expert) segments
  std::int64_t max_tasks = 0;       // queue capacity

  // Control words, zeroed before every forward by one cudaMemsetAsync (no kernel): the Control
  // header, then int expert_count[E], expert_dropped[E], rowtile_done[row_tiles],
  // tokentile_done[token_tiles], tokentile_target[token_tiles].
  std::size_t control = 0, control_bytes = 0;
  std::size_t error = 0;        // ErrorRecord, sticky until the host reads it
  std::size_t epoch = 0;        // u64: the last call's epoch, advanced on the device (never reset)
  std::size_t gate = 0;         // elem [hidden, experts_padded]: zero-padded copy of the gate
  std::size_t logits = 0;       // float [2, max_tokens, experts_padded]: K-half partial sums
  std::size_t topk_expert = 0;  // int32 [max_tokens, k]
  std::size_t topk_weight = 0;  // float [max_tokens, k]
  std::size_t topk_kept = 0;    // uint8 [max_tokens, k]
  std::size_t tile_counts = 0;  // int32 [token_tiles, experts]
  std::size_t expert_rows = 0;  // int32 [rows_in]: token*k + choice, grouped by expert
  std::size_t hidden_act = 0;   // elem [rows_in, ffn]: activation output of GEMM0
  std::size_t stage = 0;        // elem [max_tokens * k, hidden]: expert outputs before combine
  std::size_t tasks = 0;        // Task (16 bytes) [max_tasks]
  std::size_t recv_tiles = 0;   // RecvTile (16 bytes) [row_tiles] (world > 1)
  std::size_t total = 0;

  // world > 1: the symmetric window (ncclMemAlloc, registered with NCCL), the same layout on every
  // rank; byte offsets. Peers write into it. See device::WindowLayout.
  struct Window {
    std::int64_t rows_per_source = 0;   // max_tokens * min(k, local experts)
    std::int64_t tiles_per_source = 0;  // ceil(rows_per_source / 128) + local experts
    std::size_t start = 0, header = 0, header_flag = 0, arrived = 0, done = 0;
    std::size_t inbox = 0, ids = 0, stage = 0;
    std::size_t reset = 0, reset_bytes = 0;  // zeroed before every forward (the done counters)
    std::size_t total = 0;
  } window;
};

// Throws ConfigError (naming the field) if a size overflows.
WorkspacePlan plan_workspace(const LayerConfig& cfg);

}  // namespace monomoe::detail
