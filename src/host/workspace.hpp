// Where everything the kernel needs lives in device memory, computed once on the host. The layers
// built on one Communicator share that memory (host/shared_workspace.hpp): a prefix at fixed
// positions (SharedLayout) and one area that each layer lays out for itself (WorkspacePlan).
#pragma once

#include <cstddef>
#include <cstdint>

#include "device/pack.hpp"
#include "device/split.hpp"
#include "monomoe/config.hpp"

namespace monomoe::detail {

// Tile shapes shared by the host planner and the kernel (tiles.cuh static_asserts against these).
struct TileShape {
  static constexpr std::int64_t kRows = 128;        // rows (token copies) per GEMM task
  static constexpr std::int64_t kCols = 128;        // output columns per GEMM task
  // Output columns of one expert GEMM task per precision (device::expert_tile_cols; layer.cu checks
  // that the two agree).
  static constexpr std::int64_t expert_cols(DType d, WeightLayout w) {
    return d == DType::bf16 || (d == DType::tf32 && w == WeightLayout::out_in) ? 256 : 128;
  }
  // GEMM0 reads its A rows by TMA from an expert-ordered copy of x (device::Params::x_rows): on one
  // rank, for fp8 and for tf32 with [out, in] weights (whose gathered GEMM0 tasks took ~120 us
  // against GEMM1's ~80, perf log 2026-11-30 10:40; the copy rounds its tokens to tf32). The bf16
  // kernels can too (device::gemm0_rows_by_tma; layer.cu checks that the kernel can where this says
  // so) but were slower: copying bf16's rows cost ~43 us before the first task, more than GEMM0's
  // tasks gained (~3 us each; perf log 2026-11-30 23:59).
  static constexpr bool gemm0_rows_by_tma(DType d, WeightLayout w, std::int64_t world) {
    return world == 1 && (d == DType::fp8 || (d == DType::tf32 && w == WeightLayout::out_in));
  }
  // Split K (device/split.hpp): per phase (GEMM0, GEMM1) counters for kSplitGroups task groups
  // (the partial tiles are sized per layer: split_room below).
  static constexpr std::int64_t kSplitGroups = device::kSplitTargetMax;
};

// One layer's own regions, as byte offsets into the layers' area of the shared workspace
// (SharedLayout::body) and of the shared window (SharedLayout::window_body). Every region starts
// 256-byte aligned. The kernel's Params (src/device/params.cuh) point into these regions.
struct WorkspacePlan {
  // Sizes the plan was made for.
  std::int64_t world = 1;           // world_size
  std::int64_t token_tiles = 0;     // ceil(max_tokens / kRows)
  std::int64_t experts_padded = 0;  // gate columns, padded to a multiple of kCols
  std::int64_t rows_in = 0;         // most rows (token copies) this rank's experts can receive
  std::int64_t row_tiles = 0;       // most GEMM row tiles over all (source, expert) segments
  // The shared expert's row tiles (shared_slices x token_tiles, after the routed ones), and most
  // GEMM row tiles in all (row_tiles + shared_tiles): the row tile counters, hidden_act's rows,
  // the GEMM tasks and the split-K room cover them.
  std::int64_t shared_tiles = 0;
  std::int64_t gemm_tiles = 0;
  std::int64_t recv_parts = 0;      // world > 1: most parts of those tiles (device/pack.hpp)
  std::int64_t max_tasks = 0;       // queue capacity: the first max_tasks of the shared task slots

  // Control words, zeroed before every forward by the call's prologue kernel: the Control header,
  // then int expert_count[E], expert_dropped[E], rowtile_done[gemm_tiles],
  // tokentile_done[token_tiles], tokentile_target[token_tiles], split_done[2][kSplitGroups].
  std::size_t control = 0, control_bytes = 0;
  std::size_t gate = 0;         // elem [hidden, experts_padded]: zero-padded copy of the gate
  // float [logit_floats]: the gate's K-slice partial sums, [gate_splits, tokens, experts_padded]
  std::size_t logits = 0;
  std::int64_t logit_floats = 0;  // device::gate_partial_floats(max_tokens, experts_padded)
  std::size_t topk_expert = 0;  // int32 [max_tokens, k]
  std::size_t topk_weight = 0;  // float [max_tokens, k]
  std::size_t topk_kept = 0;    // uint8 [max_tokens, k]
  std::size_t tile_counts = 0;  // int32 [token_tiles, experts]
  std::size_t expert_rows = 0;  // int32 [rows_in]: token*k + choice, grouped by expert
  // fp8: x quantized for the expert GEMMs, [max_tokens, x_pitch] bytes (E4M3 values, then the
  // scales: device::operand_pitch); empty otherwise.
  std::size_t x_quant = 0;
  // elem [hidden_rows, ffn] (fp8: [hidden_rows, h_pitch] bytes): activation output of GEMM0
  std::size_t hidden_act = 0;
  std::int64_t hidden_rows = 0;  // rows of hidden_act
  // TileShape::gemm0_rows_by_tma: x's rows in the experts' order, [hidden_rows, x row] bytes (fp8:
  // a row as x_quant's; tf32: hidden floats); empty otherwise
  std::size_t x_rows = 0, x_rows_bytes = 0;
  std::size_t stage = 0;        // elem [max_tokens * k, hidden]: expert outputs before combine
  // elem [max_tokens * shared_slices, hidden]: the shared expert's slices' outputs (none: empty)
  std::size_t shared_stage = 0;
  std::size_t recv_tiles = 0;   // RecvTile (16 bytes) [row_tiles] (world > 1)
  std::size_t recv_part = 0;    // RecvPart (16 bytes) [recv_parts] (world > 1)
  // float [split_partial_tiles(split_room, gemm0_results), 128, expert_cols]: split-K partial
  // tiles, split_room slots per phase (device::k_split_room), and for fp8 SwiGLU split_room more
  // for GEMM0's gate tiles
  std::int64_t split_room = 0;
  std::size_t split_partial = 0, split_partial_bytes = 0;
  std::size_t body_bytes = 0;   // the extent of these regions
  // What this layer alone needs: its shared prefix (epoch, error, task slots) and its regions.
  // LayerConfig::workspace_bytes() reports it.
  std::size_t total = 0;

  // world > 1: the symmetric window (ncclMemAlloc, registered with NCCL), the same layout on every
  // rank; byte offsets into the window's layers' area, except for the epoch flags (start,
  // header_flag, arrived), which live in the window's shared prefix. See device::WindowLayout.
  struct Window {
    std::int64_t rows_per_source = 0;   // max_tokens * min(k, local experts)
    std::int64_t tiles_per_source = 0;  // ceil(rows_per_source / 128) + local experts
    std::size_t header = 0, done = 0, inbox = 0, ids = 0, stage = 0;
    std::size_t reset = 0, reset_bytes = 0;  // zeroed before every forward (the done counters)
    std::size_t body_bytes = 0;
  } window;
};

// Throws ConfigError (naming the field) if a size overflows.
WorkspacePlan plan_workspace(const LayerConfig& cfg);

// The prefixes of the shared workspace and of the shared window: the words the kernel compares
// with a call's epoch, at positions that do not depend on any layer's config, and nothing else.
//
// Why layers of different configs may share one workspace and one window. The kernel keeps state
// across calls only in words it compares with the call's epoch (64-bit, params.cuh): task slot
// heads, (epoch << 2) | type, a slot being filled once head >= epoch << 2; and the window's flags
// start[W], header_flag[W] and arrived[W][tiles], set when == epoch. Everything else a call reads
// it wrote itself earlier in the call, or was zeroed for it before the launch (the control words,
// the window's done counters), or a peer wrote it after seeing this call's start flag (headers,
// inbox rows, ids, returned rows, each read only after its flag). Each layer puts its own regions
// at offsets of its own, so one layer's data (an id such as 6, activation bits) can land where
// another layer reads a head or a flag; were a head or a flag among them, such a word could pass
// for the current epoch. So they are not:
//   - one epoch word for all the layers: each call of any layer advances it, so an epoch names
//     exactly one call of one layer, and the ranks, which make the same calls, number them alike;
//   - the task slots at the start of the workspace, on one 16-byte grid for every layer (slot i
//     of any layer is the same memory; a layer uses the first max_tasks), next to the error record;
//   - the start, header_flag and arrived flags at the start of the window; a layer indexes arrived
//     [source * tiles_per_source + tile] with its own tiles_per_source, within a prefix sized for
//     the largest.
// These words are written only as heads or flags, never by a layer's data, and zeroed when the
// memory is allocated. So a word read as a head or a flag in call e holds 0 or an epoch e' < e of
// an earlier call (the epoch only grows, the prefixes are zeroed when they move, and the epoch
// word carries over, SharedWorkspace::reserve): a head (e' << 2) | type < e << 2 reads as empty,
// and a flag e' != e as not set, whichever layer wrote it. The error record (first error wins,
// zero when none) is shared too: any layer's synchronize() reports an error of any of them.
struct SharedLayout {
  std::int64_t task_slots = 0;          // Task slots: the largest max_tasks of the layers
  std::int64_t world = 1;               // ranks (the communicator's)
  std::int64_t arrived_per_source = 0;  // arrival flags per source: the largest tiles_per_source
  // Workspace, fixed positions: u64 epoch, ErrorRecord (16 bytes), Task (16 bytes) [task_slots].
  std::size_t epoch = 0, error = 0, tasks = 0;
  std::size_t body = 0;  // the layers' area starts here
  // Window (world > 1), fixed positions: u64 start[world], header_flag[world],
  // arrived[world * arrived_per_source].
  std::size_t start = 0, header_flag = 0, arrived = 0;
  std::size_t window_body = 0;  // the layers' area of the window starts here (0 when world == 1)
};

// The prefixes for task_slots slots and world * arrived_per_source arrival flags.
SharedLayout plan_shared(std::int64_t task_slots, std::int64_t world,
                         std::int64_t arrived_per_source);

}  // namespace monomoe::detail
