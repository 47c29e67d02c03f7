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
  int source_tiles[kMaxWorld + 1]; // world > 1: first recv tile of each source (subscriber)
  int total_tasks;
  int k_split;                     // K slices per expert GEMM task this call (1: no split)
};

// Per-task scratch of the processor and combine roles.
struct TaskSmem {
  Task task;
  int row_id[kTileRows];     // GEMM1: token * k + choice of each row of the tile
  int token_tile[kTileRows]; // GEMM1: token tile of each row (-1 past the end)
  int queue_base;
};

template <class P>
struct KernelSmem {
  GemmSmem<P> gemm;
  RouteSmem route;
  TaskSmem task;
};

}  // namespace monomoe::device
