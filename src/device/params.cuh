// Everything the persistent kernel needs, computed once on the host (host decides, device executes).
#pragma once

#include <cuda.h>  // CUtensorMap (a type only)

#include <cstdint>

#include "device/pack.hpp"   // RecvTile, RecvPart
#include "device/split.hpp"  // kMaxKSplit, kSplitTargetMax

namespace monomoe::device {

inline constexpr int kThreads = 256;   // 8 warps per block
inline constexpr int kTileRows = 128;  // rows (token copies) per GEMM task and tokens per gate tile
static_assert(kTileRows == kPackTileRows);
inline constexpr int kTileCols = 128;  // output columns per GEMM task
inline constexpr int kMaxExperts = 256;
// DType::fp8: channels per activation scale, and the edge of a weight scale's block.
inline constexpr int kScaleBlock = 128;
inline constexpr int kMaxTopK = 8;
inline constexpr int kMaxWorld = 64;
// The shared expert runs as at most this many slices of a routed expert's width (Limits).
inline constexpr int kMaxSharedSlices = 8;
// Calls of at most this many token tiles (decode) are routed by one block, with no grid barrier
// (route_alone.cuh, Params::route_alone).
inline constexpr int kRouteAloneTiles = 4;
// Most blocks that share one token tile's copy of x into Params::x_rows (kernel.cuh).
inline constexpr int kCopyParts = 4;
// Trace slots per block: start, gate done, routed, end, queue wait, gemm time, tasks, first task
// taken, last GEMM task finished (the task loop's start when it ran none), combine time; then the
// expert-parallel roles' and the routing phases' events (0 where the block has none), kTraceEp +
// ...
inline constexpr int kTraceEp = 10;
enum TraceEvent : int {
  ev_dispatch_start = 0,   // a dispatch block: began copying rows to peers
  ev_dispatch_end = 1,     //   ... had no row tile left to send
  ev_headers_seen = 2,     // the subscriber (block 0): every source's header had arrived
  ev_tiles_listed = 3,     //   ... the row tiles of its experts listed (pack.hpp)
  ev_own_published = 4,    //   ... GEMM0 tasks of the tiles of this rank's own rows published
  ev_peer_published = 5,   //   ... the last GEMM0 task of a tile with peers' rows published
  ev_combine_published = 6,  // ... the last combine task published
  // The routing phases of a call routed by the grid (0 where the block has no such stamp):
  ev_logits_done = 7,      // a block with gate GEMM items: its items' partial logits written
  ev_gate_barrier = 8,     // split gate (gate_splits > 1): left the barrier before route_spread
  ev_scanned = 9,          // left the barrier after the scan of the tiles' expert counts
  ev_placed = 10,          // its placement items (scatter_tile, x_rows' copy) done
  kTraceEvents = 11
};
inline constexpr int kTraceSlots = kTraceEp + kTraceEvents;
// Then, per block, its first kTaskRecords tasks, kTaskWords each: taken (ns), its tile GEMM's start
// and end (ns; 0 when it ran none: combine, or a launch giving up), done (ns), and the task packed
// as type << 56 | a << 28 | b (a, b < 2^28). A block's record is kTraceStride words.
inline constexpr int kTaskRecords = 256;
inline constexpr int kTaskWords = 5;
inline constexpr int kTraceStride = kTraceSlots + kTaskWords * kTaskRecords;

enum class Act : int { relu = 0, gelu = 1, silu = 2, swiglu = 3 };

// Kernel-side errors; the host decodes them into KernelError messages (layer.cu).
enum class ErrorCode : int {
  none = 0,
  timeout_barrier = 1,  // a grid barrier did not complete in time
  timeout_queue = 2,    // a task slot stayed empty past the timeout
  bad_task = 3,         // a task descriptor held an impossible value
  bad_route = 4,        // routing produced an out-of-range expert or row
  aborted = 5,          // another block reported an error first
  timeout_peer = 6,     // world > 1: a peer rank did not start, send or return rows in time
  // A routing given by the caller (Params::given_ids): a choice the kernel skips and reports,
  // details (token * k + choice, id). Recorded without aborting the launch (record_error).
  given_id_out_of_range = 7,  // not in [0, experts)
  given_id_repeated = 8,      // the same expert as an earlier choice of the token
  timeout_route = 9,  // few token tiles: the block that routes the call did not finish in time
  timeout_tma = 10,   // a GEMM1 stage loaded by TMA did not land in time (details: thread, parity)
};

// First error wins; sticky across forwards until the host reads and clears it.
struct ErrorRecord {
  int code;
  int block;
  int detail0;
  int detail1;
};
static_assert(sizeof(ErrorRecord) == 16);

enum class TaskType : std::uint32_t { gemm0 = 1, gemm1 = 2, combine = 3 };

// Epochs number the forward calls of all the layers built on one Communicator, which share one
// epoch word, task slots and window flags (host/workspace.hpp, SharedLayout): 1, 2, ... They are
// 64-bit and never wrap (2^62 calls at one per microsecond take 146,000 years), so a slot or a flag
// from an earlier call, of this layer or another, can never read as this call's: nothing is ever
// cleared for an epoch, and no rank needs to agree with its peers on when to clear. The count
// lives on the device (call_prologue, launch.hpp), so a CUDA graph replays with a new epoch each
// time.
__host__ __device__ constexpr unsigned long long task_head(unsigned long long epoch,
                                                           TaskType type) {
  return (epoch << 2) | static_cast<unsigned long long>(type);
}

// One queue slot. `head` is written last with release semantics: (epoch << 2) | TaskType. Slots
// are never cleared: a head from an earlier call holds a smaller epoch and reads as empty.
struct alignas(16) Task {
  unsigned long long head;  // (epoch << 2) | TaskType
  std::int32_t a;           // gemm0/gemm1: row tile; combine: token tile
  std::int32_t b;           // output column tile
};
static_assert(sizeof(Task) == 16 && alignof(Task) == 16);

// Control words, zeroed by the call's prologue kernel (call_prologue) before every launch.
struct Control {
  unsigned int barrier;       // grid barrier arrivals (monotonic within a launch)
  unsigned int queue_tail;    // slots reserved by producers
  unsigned int queue_head;    // slots taken by consumers
  int abort;                  // set by the first block that fails: every wait gives up
  unsigned int total_tasks;   // world > 1: tasks of this launch, valid once total_ready is set
  unsigned int total_ready;   // world > 1: 1 once every source's header has arrived
  unsigned int dispatch_next; // world > 1: next dispatch item to claim
  int k_split;                // K slices per expert GEMM task this call (block 0 writes it; with
                              // peers before its first task, which is how the others learn it)
  int row_tiles;              // row tiles this rank computes this call (read back by stats())
  int packed_tiles;           // world > 1: of them, tiles with rows of several sources (pack.hpp)
  // Params::route_alone (route_alone.cuh):
  unsigned int gate_done[kRouteAloneTiles];  // gate K slices finished per token tile
  unsigned int tiles_routed;                 // token tiles whose choices and counts are written
  unsigned int routed;                       // 1 once the routing block placed every choice
  unsigned int tiles_gated;                  // spread: token tiles whose gate is complete
  unsigned int rows_routed;                  // spread: routing blocks done with their rows
  // Followed in memory by (offsets in Params):
  //   int expert_count[experts]      rows routed to each expert (before capacity)
  //   int expert_dropped[experts]    rows dropped by capacity
  //   int rowtile_done[row_tiles]    GEMM0 tasks finished per row tile
  //   int tokentile_done[token_tiles] expert rows x GEMM1 column tiles finished per token tile
  //   int tokentile_target[token_tiles] the value tokentile_done reaches when the tile is complete
};

// world > 1: byte offsets into the symmetric window (the same on every rank; ncclMemAlloc +
// ncclCommWindowRegister). Peers write into it; the owner reads. The u64 flags (start, header_flag,
// arrived) lie in the window's prefix that only ever holds epochs, shared by every layer of the
// communicator; the rest is this layer's. See workspace.hpp (SharedLayout).
struct WindowLayout {
  unsigned long long start;        // u64 [W]: epoch of the call each rank has started
  unsigned long long header;       // int [W][El]: rows each source sends to each local expert
  unsigned long long header_flag;  // u64 [W]: epoch once that source's header is written
  unsigned long long arrived;      // u64 [W][tiles_per_source]: epoch once a row tile landed
  unsigned long long done;         // int [token_tiles]: expert rows x col tiles returned (reset per call)
  unsigned long long inbox;        // elem [W][rows_per_source][H]: rows from each source
  unsigned long long ids;          // int [W][rows_per_source]: the source's token * k + choice of a row
  unsigned long long stage;        // elem [S * k][H]: expert outputs returned for this rank's tokens
  int rows_per_source;
  int tiles_per_source;            // row tiles of one source's segment, (expert, tile) order
};

struct Params {
  // Shapes of this call.
  int tokens;      // S, > 0
  int hidden;      // H
  int ffn;         // I
  int experts;     // E
  int topk;        // k
  int experts_padded;   // gate columns after padding to a multiple of kTileCols
  int capacity;    // rows kept per expert (tokens when dropless)
  Act act;
  int renormalize;
  int has_bias;
  long long timeout_ns;

  // Derived counts.
  int token_tiles;      // ceil(S / 128)
  int gemm0_col_tiles;  // ceil(I / BN) (swiglu: I / (BN/2), each reading BN/2 gate + BN/2 up columns)
  int gemm1_col_tiles;  // ceil(H / BN); BN = the precision's kExpertBN
  int combine_cols;       // output columns per combine task: combine_cols_for(token_tiles, H)
  int combine_col_tiles;  // ceil(H / combine_cols)

  // Inputs and weights (element type of the instantiation).
  const void* x;        // [S, H]
  void* y;              // [S, H]
  const void* gate;     // [H, experts_padded], zero-padded copy
  const void* w1;       // [E, H, w1_columns]
  const void* b1;       // [E, w1_columns] or nullptr
  const void* w2;       // [E, I, H]
  const void* b2;       // [E, H] or nullptr
  // The shared expert (docs/shared-experts.md), or shared_slices == 0: slices of width I, each
  // run as row tiles of this rank's own tokens counted after the routed row tiles (shared_tile,
  // operands.cuh). Its whole weights, in the routed experts' layout: slice j is W1's columns
  // [j I, (j + 1) I) (swiglu: and the up columns S + j I ...), W2's K rows [j I, (j + 1) I).
  int shared_slices;        // shared_ffn / I
  const void* shared_w1;    // [H, S1] or [S1, H]; S = shared_slices * I, S1 = S or 2 S (swiglu)
  const void* shared_b1;    // [S1] or nullptr
  const void* shared_w2;    // [S, H] or [H, S]
  const void* shared_b2;    // [H] or nullptr: added by slice 0 only
  // DType::fp8 (docs/fp8.md; nullptr otherwise): the weights above are E4M3, [out, in], with one
  // fp32 scale per 128 x 128 block, [out / 128][in / 128] per matrix (ExpertWeights::*_scale).
  const float* w1_scale;         // [E][w1_columns / 128][H / 128]
  const float* w2_scale;         // [E][H / 128][I / 128]
  const float* shared_w1_scale;  // [S1 / 128][H / 128]
  const float* shared_w2_scale;  // [H / 128][S / 128]

  // The rows the expert GEMMs read, in their operand type (ExpertTiles<P>::Elem): x itself (x_pitch
  // = H, h_pitch = I), or for fp8 x quantized (x_quant, written by the gate phase) and hidden_act
  // as E4M3 rows whose values are followed by their scales (one fp32 per 128 channels), each row
  // x_pitch / h_pitch bytes (a multiple of 16). The inbox's rows are x_pitch elements too.
  void* x_quant;  // fp8: [S][x_pitch] bytes; nullptr otherwise
  int x_pitch;
  int h_pitch;
  // One rank, a call routed by the grid (not route_alone), GEMM0 by TMA (gemm0_rows_by_tma): the
  // expert GEMMs' copy of x (x, or x_quant for fp8) row by row in the order of expert_rows, row q
  // the token of expert_rows[q], x_pitch elements a row, written where the rows are placed
  // (route.cuh, scatter_tile), so that GEMM0's routed tiles read their A rows by TMA as GEMM1
  // does hidden_act's (tma_x_rows, W1 through tma_w1). nullptr otherwise: GEMM0 gathers its rows.
  void* x_rows;  // [rows][x_pitch]

  // Workspace.
  Control* control;
  int* expert_count;
  int* expert_dropped;
  int* rowtile_done;
  int* tokentile_done;
  int* tokentile_target;       // expert rows kept in each token tile x gemm1_col_tiles
  int* split_done;             // [2, kSplitTargetMax]: K slices finished per (phase, task group)
  // fp32 partial tiles [split_partial_tiles(split_room, gemm0_results), 128, kExpertBN]: GEMM0's
  // slots, GEMM1's, then fp8 SwiGLU GEMM0's gate tiles' (split.hpp, split_slots_first_tile)
  float* split_partial;
  int split_room;              // partial slots per phase (k_split_room: the workspace plan's)
  int split_target;            // min(grid, kSplitTargetMax): tasks the split aims for
  ErrorRecord* error;
  float* logits;               // [gate_splits, S, experts_padded]: partial sums over K slices
  int gate_splits;             // gate GEMM's K slices per token tile (split.hpp: gate_split_for)
  int route_alone;             // 1: token_tiles <= kRouteAloneTiles, one block routes the call
  int* topk_expert;            // [S, k]
  float* topk_weight;          // [S, k]
  std::uint8_t* topk_kept;     // [S, k]
  int* tile_counts;            // [token_tiles, E]: counts, then exclusive prefix over tiles
  int* expert_rows;            // [rows]: token * k + choice, grouped by expert, token order inside
  void* hidden_act;            // [rows, h_pitch]
  void* stage;                 // [S * k, H]
  void* shared_stage;          // [S * shared_slices, H]: the shared expert's slices' results
  Task* tasks;                 // [max_tasks]
  int max_tasks;
  // This call's epoch (see task_head), in the shared workspace: advanced on the stream just before
  // the launch (call_prologue), never written during it. Read it with call_epoch() (sync.cuh).
  const unsigned long long* epoch;
  long long* trace;            // [grid, kTraceStride] phase and task times, or nullptr (set_trace)

  // Routing given by the caller (MoELayer::forward with a Routing), or nullptr: the gate routes.
  // The caller's memory, read once by the gate phase (gate.cuh, take_given_routing).
  const int* given_ids;        // [S, k] expert ids
  const float* given_weights;  // [S, k] their weights, used as they are

  // Expert parallelism (world > 1). Experts [rank * El, (rank + 1) * El) are local.
  int world;
  int rank;
  int experts_local;
  int dispatch_blocks;         // blocks 1..dispatch_blocks send rows before taking tasks
  unsigned char* window;       // this rank's window (local pointer), or nullptr when world == 1
  // Every rank's window as this rank addresses it (peer_window[rank] == window): NCCL's LSA peer
  // pointers for GPUs of one node, or the windows of virtual ranks in one GPU's memory
  // (host/window.hpp). The load/store transport (transport.cuh) reaches peers through it.
  unsigned char* peer_window[kMaxWorld];
  WindowLayout wl;
  // The row tiles this rank computes (device/pack.hpp), listed by the subscriber once every
  // source's header has arrived, and their parts (runs of one source's rows).
  RecvTile* recv_tiles;        // [max_recv_tiles]
  int max_recv_tiles;
  RecvPart* recv_parts;        // [max_recv_parts]
  int max_recv_parts;

  // GEMM1 of bf16, and of tf32 with [out, in] weights (device::gemm1_by_tma), reads both operands
  // by TMA (device/gemm/tma.cuh) through these maps of w2 (host/tensor_maps.cpp;
  // [experts_local][K][N], or [experts_local][N][K] for [out, in] weights) and of hidden_act;
  // unused by the other kernels.
  CUtensorMap tma_w2;  // (64-byte aligned by its type)
  CUtensorMap tma_h;   // hidden_act [rows][ffn] (GEMM1's A rows), boxes of 128 rows x 128 bytes
  CUtensorMap tma_w2_shared;  // shared_w2 as one expert of K = S (a slice offsets K by j I)
  // With x_rows: w1 ([experts_local][K][N], or [experts_local][N][K]) and x_rows [rows][hidden]
  // (pitch x_pitch), boxes as tma_w2's and tma_h's.
  CUtensorMap tma_w1;
  CUtensorMap tma_x_rows;
};

// One rank (Params::world == 1; the expert-parallel runners are ep.cuh's), a call routed by the
// grid: GEMM0 reads its routed tiles' A rows from x_rows by TMA when the launch has them, and
// gathers them token by token otherwise (the shared expert's tiles, decode calls routed alone).
__device__ __forceinline__ bool gemm0_by_rows(const Params& p) {
  return p.x_rows != nullptr && !p.route_alone && p.world == 1;
}

// Row tiles of the shared expert in a call: every slice over every token tile of this rank's own
// tokens. They follow the routed row tiles in the task numbering (operands.cuh, shared_tile).
__device__ __forceinline__ int shared_tiles(const Params& p) {
  return p.shared_slices * p.token_tiles;
}

}  // namespace monomoe::device
