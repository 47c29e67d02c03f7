// The MoE layer: one persistent kernel launch per forward().
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "monomoe/communicator.hpp"
#include "monomoe/config.hpp"

namespace monomoe {

// Device pointers to this rank's weights, owned by the caller and kept alive while the layer is used.
// Element type: __nv_bfloat16 for DType::bf16, float for tf32 and fp32. Row-major layouts, by
// LayerConfig.weight_layout:
//                 in_out                                  out_in (PyTorch nn.Linear's weight)
//   gate          [hidden, experts]                       [experts, hidden]      (every rank)
//   w1            [experts_per_rank, hidden, w1_columns]  [experts_per_rank, w1_columns, hidden]
//   b1            [experts_per_rank, w1_columns]          (the same; nullptr when config.bias is false)
//   w2            [experts_per_rank, ffn, hidden]         [experts_per_rank, hidden, ffn]
//   b2            [experts_per_rank, hidden]              (the same; nullptr when config.bias is false)
// SwiGLU's W1 outputs: [0, ffn) gate, [ffn, 2 ffn) up.
// The shared expert (LayerConfig.shared_ffn > 0; must be null otherwise), the same on every rank,
// in the same layout (S = shared_ffn, S1 = shared_w1_columns(): S, or 2 S for swiglu with [0, S)
// gate and [S, 2 S) up):
//                 in_out                 out_in
//   shared_w1     [hidden, S1]           [S1, hidden]
//   shared_b1     [S1]                   (the same; nullptr when config.bias is false)
//   shared_w2     [S, hidden]            [hidden, S]
//   shared_b2     [hidden]               (the same; nullptr when config.bias is false)
struct ExpertWeights {
  const void* gate = nullptr;
  const void* w1 = nullptr;
  const void* b1 = nullptr;
  const void* w2 = nullptr;
  const void* b2 = nullptr;
  const void* shared_w1 = nullptr;
  const void* shared_b1 = nullptr;
  const void* shared_w2 = nullptr;
  const void* shared_b2 = nullptr;
  // DType::fp8 only (null otherwise): the fp32 scale of every 128 x 128 block of each [out, in]
  // matrix, [out / 128, in / 128] row-major per matrix, the value meant being e4m3 * scale (the
  // `weight_scale_inv` tensors of Hugging Face FP8 checkpoints, passed as they are):
  //   w1_scale [experts_per_rank, w1_columns / 128, hidden / 128], w2_scale [experts_per_rank,
  //   hidden / 128, ffn / 128], shared_w1_scale [S1 / 128, hidden / 128], shared_w2_scale
  //   [hidden / 128, S / 128].
  const void* w1_scale = nullptr;
  const void* w2_scale = nullptr;
  const void* shared_w1_scale = nullptr;
  const void* shared_w2_scale = nullptr;
};

// Routing decided outside the layer (a sigmoid-with-bias router, group-limited top-k, ...), for one
// forward(): device pointers owned by the caller, row-major [tokens, topk], read during that call.
//   topk_ids      int32 expert ids in [0, experts), distinct within each token's k choices
//   topk_weights  fp32 weights, used as they are: not renormalized (LayerConfig.renormalize applies
//                 to the gate's own routing only); the caller's router decides what they sum to
// The kernel then skips the gate (no gate GEMM, softmax or top-k; the gate weight is not read).
// Capacity (capacity_factor > 0) drops by the gate's rule: per (source rank, expert), the first
// capacity(tokens) choices in ascending token order are kept, the rest dropped and counted; kept
// weights are not rescaled. An id out of range or repeated within its token is not used: that
// choice is skipped (as a dropped one; routing() shows it as expert -1 with weight 0), the rest of
// the call runs as usual (peers too), and the next synchronizing call raises KernelError naming
// topk_ids, the token, the choice and the value (one of them when several are bad).
struct Routing {
  const std::int32_t* topk_ids = nullptr;
  const float* topk_weights = nullptr;
};

// What one forward() did, read back on request (reading synchronizes the stream).
struct ForwardStats {
  std::int64_t tokens = 0;
  std::int64_t dropped = 0;                    // (token, expert) pairs over capacity, all experts
  std::vector<std::int64_t> dropped_per_expert;  // [experts], counted at this rank as the source
  // [experts / world]: rows this rank's experts ran (from every rank's tokens, after capacity).
  // The experts with rows are those whose weights the forward read.
  std::vector<std::int64_t> rows_per_local_expert;
  // K slices each expert GEMM task was cut into (1: whole tasks). More than 1 when the call gave
  // this rank's experts fewer GEMM tasks than the GPU has blocks for (a few tokens): the few-rows
  // path.
  std::int64_t k_split = 1;
  // Expert GEMM row tiles (of up to 128 rows of one local expert) this rank computed. With peers,
  // packed_tiles of them held rows of several ranks: an expert's partial tiles from different
  // sources share one tile, so its weights are read once for them (docs/ep-pack.md).
  std::int64_t row_tiles = 0;
  std::int64_t packed_tiles = 0;
  // K slices of the gate GEMM per token tile (1: whole; 2: halves, for calls with two blocks per
  // token tile; more for calls of a few tokens).
  std::int64_t gate_splits = 1;
};

// Where the time of one forward() went, per persistent block (profiling; see MoELayer::set_trace).
// Times are nanoseconds from the earliest block start of that forward.
struct BlockTrace {
  std::int64_t gate_done = 0;      // its gate tiles computed
  // row positions known: past the routing barriers, or, for a call of a few token tiles, when the
  // block that routes it has placed every choice
  std::int64_t routed = 0;
  std::int64_t end = 0;            // left the task loop
  std::int64_t queue_wait_ns = 0;  // spent waiting for task slots to be published
  std::int64_t gemm_ns = 0;        // spent in GEMM tasks (operands, MMAs, epilogue)
  std::int64_t tasks = 0;          // tasks it ran
  std::int64_t first_task = 0;     // took its first task (its end when it ran none)
  std::int64_t last_gemm_end = 0;  // finished its last GEMM task (the task loop's start if none)
  std::int64_t combine_ns = 0;     // spent in combine tasks
  // world > 1, the expert-parallel roles' events (-1 where the block has no such role):
  std::int64_t dispatch_start = -1;  // a dispatch block began copying rows to peers
  std::int64_t dispatch_end = -1;    //   ... had no row tile left to send
  std::int64_t headers_seen = -1;    // the subscriber (block 0): every source's header arrived
  std::int64_t tiles_listed = -1;    //   ... the row tiles of its experts listed
  std::int64_t own_published = -1;   //   ... GEMM0 tasks of the tiles of its own rows published
  std::int64_t peer_published = -1;  //   ... the last GEMM0 task of a tile with peers' rows published
  std::int64_t combine_published = -1;  // ... the last combine task published
  // A call routed by the whole grid (more than 4 token tiles, the gate computed here), the routing
  // phases (-1 where the block has no such stamp):
  std::int64_t logits_done = -1;   // a block with gate GEMM items: their partial logits written
  std::int64_t gate_barrier = -1;  // gate split in K slices: left the barrier before the routing
  std::int64_t scanned = -1;       // left the barrier after the scan of the expert counts
  std::int64_t placed = -1;        // its share of the placement (and of x_rows' copy) done
};

// One task of a traced forward (MoELayer::task_trace): which block ran it, what it was, when
// (nanoseconds from the earliest block start, as BlockTrace).
struct TaskTrace {
  enum class Type : std::int32_t { gemm0 = 1, gemm1 = 2, combine = 3 };
  std::int32_t block = 0;
  Type type = Type::gemm0;
  std::int32_t a = 0;      // GEMM0 / GEMM1: row tile; combine: token tile
  std::int32_t b = 0;      // GEMM: column tile (x K slices when split); combine: column tile
  std::int64_t start = 0;  // taken from the queue
  // GEMM tasks: when its tile GEMM(s) began (operands' first loads) and ended (the fp32 result in
  // shared memory), before the K-split sums, the epilogue and the publication; -1 for a combine
  // task (or a launch that gave up)
  std::int64_t math_start = -1;
  std::int64_t math_end = -1;
  std::int64_t end = 0;    // done
};

// Many layers: the layers built on one Communicator share one device workspace and, with
// world > 1, one symmetric window, sized for the largest of them, so a model of 30-60 MoE layers
// pays for the scratch memory of one layer plus every layer's weights. The memory is made by the
// first layer, grows when a larger layer is built (at its construction: the device is
// synchronized, the memory reallocated, and the window reopened, collectively with world > 1),
// and is freed with the last layer. Hence:
//   - layers of one communicator must not run at the same time: call them on one stream (a model
//     runs them one after another anyway) or order their streams;
//   - stats() and routing() read what the last call left in the shared memory: read them before
//     another layer of the communicator runs or is built (they throw ConfigError otherwise; a
//     graph replay of another layer in between goes unnoticed);
//   - a kernel error of any layer is reported by the next synchronize() of any of them;
//   - CUDA graphs: a captured forward() holds the memory's addresses. Building a layer that needs
//     more memory than the shared workspace holds would move it and break the graphs of the other
//     layers, so while a layer whose forward() was captured lives, such a construction throws
//     ConfigError: build every layer (or the largest first) before capturing. Layers that fit
//     may still be built (their construction refills the shared scratch area with all ones,
//     which the graphs do not mind).
// With world > 1, every rank builds and destroys its layers in the same order with the same
// configs, so that every rank grows its window at the same layer (the configs are compared).
class MoELayer {
 public:
  // Validates `config` against this GPU (ConfigError names the field) and makes room for it in the
  // workspace the communicator's layers share (see "Many layers" above). Every weight, the gate
  // included, is read from the caller's memory at every forward(): changes between calls (an
  // optimizer step, a new checkpoint copied in place) take effect.
  MoELayer(const LayerConfig& config, Communicator& comm, const ExpertWeights& weights);
  ~MoELayer();
  MoELayer(const MoELayer&) = delete;
  MoELayer& operator=(const MoELayer&) = delete;

  // y[tokens, hidden] = MoE(x[tokens, hidden]) for 0 <= tokens <= config.max_tokens, same element
  // type as the weights. Asynchronous on `stream`; a kernel-side failure (timeout, bad index) is
  // raised as KernelError by the next call that synchronizes (stats(), or synchronize()). Calls of
  // one layer, and of all the layers of one communicator, must not overlap (they share one
  // workspace): issue them on one stream, or order the streams.
  //
  // CUDA graphs: forward() only enqueues stream-ordered work (two kernel launches: a small
  // prologue and the persistent kernel; no host synchronization, no read of device memory), so it can
  // be captured (cudaStreamBeginCapture on `stream`, any capture mode) and the graph replayed any
  // number of times. The call's number (epoch) is kept and advanced on the device, so each replay
  // is a new call, as a forward() would be.
  //   May change between replays: the contents of x (same buffer), the contents of every weight,
  //   the gate included (read at every replay); eager forward() calls may come in between.
  //   May not: the x and y pointers, `tokens`, the weights' pointers (fixed at construction), and
  //   set_trace() (the trace buffer is captured). With world > 1 every rank replays its own graph,
  //   and all ranks make the same sequence of calls (replays and forward() calls alike), as for
  //   forward(). The layer must outlive the graph. Other layers of the communicator may run
  //   between replays (in order on the stream), and further layers may be built as long as they
  //   fit in the shared workspace ("Many layers" above).
  // synchronize(), stats() and routing() wait for the stream of the last forward() call (the
  // capturing stream for a captured one): after replaying on another stream, synchronize that
  // stream first. They then report the last call that ran, replay or not.
  void forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream);
  // The same with the caller's routing instead of the gate's (see Routing). With world > 1 each
  // rank passes its own tokens' routing, and ranks may use either form in any call. ConfigError
  // names topk_ids or topk_weights when tokens > 0 and it is null or not 4-byte aligned.
  void forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream,
               const Routing& routing);

  // Waits for the last forward() and raises KernelError if the kernel reported one.
  void synchronize();
  ForwardStats stats();  // synchronizes

  // Routing of the last forward() (synchronizes): expert id and gate weight of each token's choices,
  // [tokens, topk] row-major; after a forward() with a Routing, the given ones (a skipped invalid
  // choice reads expert -1, weight 0). For tests and debugging. Like stats(), only until another
  // layer of the communicator runs.
  void routing(std::vector<std::int32_t>& experts, std::vector<float>& weights);

  // Profiling: while on, every forward() records per-block phase times and the first
  // kTaskTraceRecords tasks of each block (a few global stores per task); trace() and task_trace()
  // (both synchronize) return those of the last forward. Off by default.
  static constexpr int kTaskTraceRecords = 256;
  void set_trace(bool on);
  std::vector<BlockTrace> trace();
  std::vector<TaskTrace> task_trace();  // by block, then in the order the block ran them

  const LayerConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace monomoe
