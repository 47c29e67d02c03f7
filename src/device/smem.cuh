// The kernel's shared memory: one struct per role, one union-free struct for the whole block.
#pragma once

#include "device/gemm/tile_gemm.cuh"
#include "device/params.cuh"

namespace monomoe::device {

// Routing summary, computed by every block once the expert counts are known (route.cuh).
struct RouteSmem {
  int count[kMaxExperts];          // gate: this tile's rows per expert
  int kept[kMaxExperts];           // rows each expert keeps after capacity
  int row_base[kMaxExperts + 1];   // first row of each expert in expert_rows / hidden_act
  int tile_base[kMaxExperts + 1];  // first row tile of each expert
  int tile_prefix[kMaxExperts];    // scatter: the tile's first position in each expert's rows
  int choice[kTileRows * kMaxTopK];  // scatter: the tile's expert choices
  unsigned int row_mask[kMaxExperts][kTileRows / 32];  // scatter: rows of the tile per expert
  int row_tiles;                   // row tiles over all experts
  int total_tasks;
  int k_split;                     // K slices per expert GEMM task this call (1: no split)
  int implicit_tasks;              // alone: GEMM0 tasks the queue holds without slots (queue.cuh)
};

// world > 1, the subscriber (block 0, ep.cuh): every source's header and the sums its parallel
// listing of row tiles needs (pack.hpp). [source][local expert] arrays hold world * experts_local
// (the layer's expert count) entries.
struct SubscriberSmem {
  int header[kMaxExperts];        // [source][local expert]: rows the source sends the expert
  int rows_before[kMaxExperts];   // [source][local expert]: its rows for the experts before
  int tiles_before[kMaxExperts];  // [source][local expert]: their row tiles in its segment
  int tiles[kMaxExperts];         // [local expert]: row tiles it lists
  int parts[kMaxExperts];         // [local expert]: parts of those
  int packed;                     // tiles with rows of several sources
};

// What a block takes from the task queue (queue.cuh, pop_task), thread 0's.
struct QueueView {
  int total;            // tasks of the launch (< 0: world > 1, the subscriber's count)
  int implicit;         // alone: the first GEMM0 tasks, known without slots
  int per_tile;         // GEMM0 tasks per row tile
  bool first_by_block;  // alone: the block's first claim is index blockIdx.x
  long long claims;     // claims so far
};

// Per-task scratch of the processor and combine roles.
struct TaskSmem {
  Task task;
  QueueView queue;
  // GEMM1, per row of the tile: where its result goes (row token * k + choice of its source's stage
  // buffer, a peer's with peers; nullptr past the end), its token tile there (-1 past the end) and
  // its source (0 alone): a packed tile (pack.hpp) returns rows to several ranks.
  void* row_out[kTileRows];
  int token_tile[kTileRows];
  unsigned char row_source[kTileRows];
  int queue_base;
  // world > 1: the call's K split and listed row tiles, once known (ep.cuh, ep_plan); -1 before.
  int ep_k_split;
  int ep_listed;
  // With the trace (Params::trace), thread 0's: when the current task's tile GEMM began and ended
  // (processor.cuh, traced_math; 0 when it ran none).
  long long math_start;
  long long math_end;
};
static_assert(kMaxWorld <= 256, "TaskSmem::row_source holds a rank in a byte");

template <class P>
struct KernelSmem {
  GemmSmem<P> gemm;
  RouteSmem route;
  SubscriberSmem sub;
  TaskSmem task;
};

}  // namespace monomoe::device
