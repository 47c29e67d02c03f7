// MoELayer: lays out its regions in the workspace its communicator's layers share, turns a
// forward() into two launches (a small prologue kernel: the per-call words cleared, the gate's
// copy refreshed, the epoch advanced; then the cooperative launch of the persistent kernel), both
// stream-ordered and capturable into a CUDA graph, and turns the kernel's error record into
// exceptions.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "device/launch.hpp"
#include "host/check.hpp"
#include "host/communicator_impl.hpp"
#include "host/shared_workspace.hpp"
#include "host/tensor_maps.hpp"
#include "host/text.hpp"
#include "host/window.hpp"
#include "host/workspace.hpp"
#include "monomoe/error.hpp"
#include "monomoe/layer.hpp"

namespace monomoe {

static_assert(sizeof(device::Control) == 72, "workspace.cpp reserves 72 bytes for Control");
static_assert(detail::TileShape::kRows == device::kTileRows &&
              detail::TileShape::kCols == device::kTileCols);
static_assert(Limits::kMaxSharedSlices == device::kMaxSharedSlices &&
              Limits::kMaxTopK == device::kMaxTopK && Limits::kMaxExperts == device::kMaxExperts);

namespace {

std::string describe_kernel_error(const device::ErrorRecord& e, const LayerConfig& cfg) {
  using text::cat;
  const double timeout_s = cfg.timeout_seconds;
  std::string s = cat("monomoe kernel error (block ", e.block, "): ");
  switch (static_cast<device::ErrorCode>(e.code)) {
    case device::ErrorCode::timeout_barrier:
      s += cat("grid barrier ", e.detail0, " did not complete within ", timeout_s,
               " s: some block never arrived");
      break;
    case device::ErrorCode::timeout_queue:
      s += cat("task slot ", e.detail0, " stayed empty for ", timeout_s,
               " s: the task that should fill it was never published");
      break;
    case device::ErrorCode::timeout_tma:
      if (e.detail0 >= device::kThreads) {  // the producer warpgroup (producer.cuh), at 4x
        s += cat("the producer warpgroup waited ", 4 * timeout_s,
                 " s for the workers to release a GEMM1 stage (thread ", e.detail0, ")");
      } else {
        s += cat("a GEMM1 stage (rows of the activation buffer and weights, loaded by TMA) did "
                 "not land within ", timeout_s, " s (thread ", e.detail0, ")");
      }
      break;
    case device::ErrorCode::timeout_route:
      s += cat("the block routing this call (of few token tiles) did not finish within ", timeout_s,
               " s");
      break;
    case device::ErrorCode::bad_task:
      s += cat("impossible task or queue overflow (", e.detail0, ", ", e.detail1, ")");
      break;
    case device::ErrorCode::timeout_peer:
      s += cat("rank ", e.detail0, " did not ",
               e.detail1 == 0   ? "start this forward"
               : e.detail1 == 1 ? "send its routing header"
               : e.detail1 == 2 ? "send a row tile"
                                : "return expert results",
               " within ", timeout_s,
               " s: is every rank calling forward() the same number of times, and alive?");
      break;
    case device::ErrorCode::bad_route:
      s += cat("token ", e.detail0, " routed to expert ", e.detail1,
               " (out of range; NaN/inf logits route to the lowest experts, so this is a kernel bug)");
      break;
    case device::ErrorCode::given_id_out_of_range:
    case device::ErrorCode::given_id_repeated: {
      const int token = e.detail0 / static_cast<int>(cfg.topk);
      const int choice = e.detail0 % static_cast<int>(cfg.topk);
      s += cat("topk_ids[", token, ", ", choice, "] = ", e.detail1);
      if (static_cast<device::ErrorCode>(e.code) == device::ErrorCode::given_id_out_of_range) {
        s += cat(" is not an expert id in [0, ", cfg.experts, ")");
      } else {
        s += cat(" repeats an expert that token ", token,
                 " already chose (a token's choices must be distinct)");
      }
      s += "; that choice was skipped (when several are bad, one is named)";
      break;
    }
    default: s += cat("code ", e.code, " (", e.detail0, ", ", e.detail1, ")"); break;
  }
  return s;
}

// Throws ConfigError unless `p` is non-null, `align`-byte aligned and memory that GPU `device`
// reads at full speed: device memory of that GPU, or managed memory. `what` names the argument.
void check_device_pointer(const void* p, const std::string& what, int device,
                          std::uintptr_t align = 16) {
  if (!p) throw ConfigError(what + " is null");
  if ((reinterpret_cast<std::uintptr_t>(p) & (align - 1)) != 0) {
    throw ConfigError(what + " is not " + std::to_string(align) + "-byte aligned");
  }
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error of an unknown pointer
    a.type = cudaMemoryTypeUnregistered;
  }
  switch (a.type) {
    case cudaMemoryTypeManaged: return;
    case cudaMemoryTypeDevice:
      if (a.device == device) return;
      throw ConfigError(what + " is memory of GPU " + std::to_string(a.device) +
                        "; this layer runs on GPU " + std::to_string(device));
    case cudaMemoryTypeHost:
      throw ConfigError(what + " is pinned host memory; it must be device memory of GPU " +
                        std::to_string(device));
    default:
      throw ConfigError(what + " is not CUDA memory (a host pointer?); it must be device memory of "
                        "GPU " + std::to_string(device));
  }
}

}  // namespace

struct MoELayer::Impl {
  LayerConfig cfg;
  ExpertWeights weights;
  int device = 0;
  int grid = 0;
  detail::WorkspacePlan plan;  // this layer's regions in the shared areas
  // The workspace and window of every layer on the communicator. Its addresses are read at each
  // call: a larger layer built later moves them.
  std::shared_ptr<detail::SharedWorkspace> shared;
  std::uint64_t last_call = 0;  // this layer's last forward() among the communicator's calls
  bool captured = false;        // a forward() was captured into a CUDA graph: the memory is pinned
  cudaStream_t last_stream = nullptr;
  std::int64_t last_tokens = 0;
  int last_gate_splits = 1;         // the last call's gate K split (stats())
  const void* checked_x = nullptr;  // the last x and y found to be this GPU's memory
  const void* checked_y = nullptr;
  long long* trace = nullptr;          // [grid, kTraceStride] while tracing is on
  Communicator::Impl* comm = nullptr;  // the communicator the layer was built on (outlives it)
  // GEMM1 by TMA (bf16; tf32 with [out, in] weights): the map of w2 (the weights do not move),
  // which GEMM1 reads B through.
  bool tma() const { return device::gemm1_by_tma(cfg.dtype, cfg.weight_layout); }
  CUtensorMap tma_w2{};
  CUtensorMap tma_w2_shared{};  // the shared expert's W2 (LayerConfig.shared_ffn > 0)
  // hidden_act's map (GEMM1's A rows), encoded again when the shared workspace has moved.
  const void* tma_h_base = nullptr;
  CUtensorMap tma_h{};
  // GEMM0 by TMA from x_rows (WorkspacePlan::x_rows_bytes > 0): the map of w1, and x_rows' map,
  // encoded again when the shared workspace has moved.
  CUtensorMap tma_w1{};
  const void* tma_x_rows_base = nullptr;
  CUtensorMap tma_x_rows{};

  device::CallPrologue::GateCopy gate_copy() const;
  // stats() and routing() read what the last call left in the shared area.
  void check_last_call(const char* what) const;
  // forward(), with the caller's routing or (nullptr) the gate's.
  void forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream,
               const Routing* routing);

  // This layer's region at `offset` (WorkspacePlan), at the shared workspace's current address.
  template <class T = unsigned char>
  T* at(std::size_t offset) const {
    return reinterpret_cast<T*>(shared->body() + offset);
  }
  device::ErrorRecord* error() const {
    return reinterpret_cast<device::ErrorRecord*>(shared->base() + shared->layout().error);
  }

  ~Impl() {
    if (trace) cudaFree(trace);
    if (captured) shared->release_capture();
  }
};

MoELayer::MoELayer(const LayerConfig& config, Communicator& comm, const ExpertWeights& weights)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.cfg = config;
  m.weights = weights;
  m.device = comm.device();
  m.comm = &comm.impl();
  MONOMOE_CUDA(cudaSetDevice(m.device));
  cudaDeviceProp prop{};
  MONOMOE_CUDA(cudaGetDeviceProperties(&prop, m.device));
  config.validate(prop.totalGlobalMem);
  if (config.world_size != comm.world() || config.rank != comm.rank()) {
    throw ConfigError("LayerConfig.world_size/rank = " + std::to_string(config.world_size) + "/" +
                      std::to_string(config.rank) + " do not match the Communicator's " +
                      std::to_string(comm.world()) + "/" + std::to_string(comm.rank()));
  }
  if (prop.major != 9) {
    throw ConfigError("GPU '" + std::string(prop.name) + "' has compute capability " +
                      std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                      "; this build targets sm_90a (Hopper)");
  }
  const auto need = [&](const void* p, const char* name) {
    check_device_pointer(p, std::string("ExpertWeights.") + name, m.device);
  };
  need(weights.gate, "gate");
  need(weights.w1, "w1");
  need(weights.w2, "w2");
  if (config.bias) {
    need(weights.b1, "b1");
    need(weights.b2, "b2");
  }
  if (config.shared_ffn > 0) {
    need(weights.shared_w1, "shared_w1");
    need(weights.shared_w2, "shared_w2");
    if (config.bias) {
      need(weights.shared_b1, "shared_b1");
      need(weights.shared_b2, "shared_b2");
    }
  } else if (weights.shared_w1 || weights.shared_b1 || weights.shared_w2 || weights.shared_b2 ||
             weights.shared_w1_scale || weights.shared_w2_scale) {
    // Weights the layer would not read: most likely LayerConfig.shared_ffn was forgotten.
    throw ConfigError("ExpertWeights.shared_*: set, but LayerConfig.shared_ffn = 0 (no shared "
                      "expert); set shared_ffn to the shared expert's width, or pass null");
  }
  // fp8's block scales (docs/fp8.md): required with fp8, refused otherwise (they would be ignored).
  // They are read one float at a time: 4-byte alignment (a rank's slice of a checkpoint's scales).
  if (config.dtype == DType::fp8) {
    const auto need_scale = [&](const void* p, const char* name) {
      check_device_pointer(p, std::string("ExpertWeights.") + name, m.device, 4);
    };
    need_scale(weights.w1_scale, "w1_scale");
    need_scale(weights.w2_scale, "w2_scale");
    if (config.shared_ffn > 0) {
      need_scale(weights.shared_w1_scale, "shared_w1_scale");
      need_scale(weights.shared_w2_scale, "shared_w2_scale");
    }
  } else if (weights.w1_scale || weights.w2_scale || weights.shared_w1_scale ||
             weights.shared_w2_scale) {
    throw ConfigError("ExpertWeights.*_scale: set, but LayerConfig.dtype = " +
                      std::string(to_string(config.dtype)) +
                      " (block scales belong to dtype fp8's E4M3 weights); pass null");
  }

  const int per_sm = device::forward_blocks_per_sm(config.dtype, config.weight_layout);
  if (per_sm < 1) {
    throw CudaError("the kernel does not fit on one SM (" +
                    std::to_string(device::forward_smem_bytes(config.dtype, config.weight_layout)) +
                    " bytes of shared memory per block)");
  }
  // Virtual ranks share one GPU: each rank's kernel gets its share of the SMs, so that all W run
  // at the same time (their blocks wait for each other).
  const int share = comm.is_virtual() ? comm.world() : 1;
  m.grid = prop.multiProcessorCount * per_sm / share;
  if (config.world_size > 1 && m.grid < 2) {
    throw ConfigError("LayerConfig.world_size = " + std::to_string(config.world_size) +
                      ": each virtual rank needs at least 2 blocks of the GPU's " +
                      std::to_string(prop.multiProcessorCount * per_sm) +
                      " (a subscriber and a processor)");
  }
  if (device::expert_tile_cols(config.dtype, config.weight_layout) !=
      static_cast<int>(detail::TileShape::expert_cols(config.dtype, config.weight_layout))) {
    throw std::logic_error("monomoe: the workspace plan's expert tile width differs from the kernel's");
  }
  if (detail::TileShape::gemm0_rows_by_tma(config.dtype, config.weight_layout, 1) &&
      !device::gemm0_rows_by_tma(config.dtype, config.weight_layout)) {
    throw std::logic_error("monomoe: the workspace plan has x_rows for a kernel that gathers");
  }
  if (m.tma()) {
    // GEMM1 reads W2 by TMA. [in, out]: W2 [el][ffn][hidden], boxes of a k-tile's K rows;
    // [out, in]: W2 [el][hidden][ffn], boxes of half a tile's columns (device/gemm/stage_loads.cuh,
    // tma_stage). Each box row is 128 bytes, so a k-tile is 128 bytes of K.
    const std::int64_t el = config.experts_per_rank();
    const std::int64_t half = device::expert_tile_cols(config.dtype, config.weight_layout) / 2;
    const auto k_tile = static_cast<std::int64_t>(128 / weight_element_bytes(config.dtype));
    // `count` experts' matrices of K = `depth` rows of `width` outputs, by the layout's rule:
    // [count][depth][width], or [count][width][depth] for [out, in] weights.
    const auto weight_map = [&](const void* w, std::int64_t count, std::int64_t depth,
                                std::int64_t width, const char* what) {
      return config.weight_layout == WeightLayout::in_out
                 ? detail::tile_tensor_map(w, count, depth, width, k_tile, config.dtype, what)
                 : detail::tile_tensor_map(w, count, width, depth, half, config.dtype, what);
    };
    m.tma_w2 = weight_map(weights.w2, el, config.ffn, config.hidden, "ExpertWeights.w2");
    // GEMM0 from x_rows reads W1 the same way (K = hidden, the w1 columns' outputs).
    if (detail::TileShape::gemm0_rows_by_tma(config.dtype, config.weight_layout,
                                             config.world_size)) {
      m.tma_w1 = weight_map(weights.w1, el, config.hidden, config.w1_columns(), "ExpertWeights.w1");
    }
    // The shared expert's W2 as one expert of depth shared_ffn (a slice offsets K, operands.cuh).
    if (config.shared_ffn > 0) {
      m.tma_w2_shared = weight_map(weights.shared_w2, 1, config.shared_ffn, config.hidden,
                                   "ExpertWeights.shared_w2");
    }
  }
  m.plan = detail::plan_workspace(config);
  m.shared = detail::SharedWorkspace::of(comm);
  if (config.world_size > 1) {
    // Every rank must build the same layer (its window and its peers' have one layout): compared
    // once, before anything is registered with the peers (or the shared window grows).
    const auto bits = [](double v) {
      std::int64_t b = 0;
      std::memcpy(&b, &v, sizeof(b));
      return b;
    };
    detail::agree_across_ranks(
        comm, {{"max_tokens", config.max_tokens},
               {"hidden", config.hidden},
               {"ffn", config.ffn},
               {"experts", config.experts},
               {"topk", config.topk},
               {"activation", static_cast<std::int64_t>(config.activation)},
               {"dtype", static_cast<std::int64_t>(config.dtype)},
               {"weight_layout", static_cast<std::int64_t>(config.weight_layout)},
               {"renormalize", config.renormalize ? 1 : 0},
               {"capacity_factor (bits)", bits(config.capacity_factor)},
               {"bias", config.bias ? 1 : 0},
               {"shared_ffn", config.shared_ffn},
               {"world_size", config.world_size},
               // The shared window's layout also depends on the layers built before this one.
               {"shared window's arrival flags per source (of the layers built before)",
                m.shared->layout().arrived_per_source, false},
               {"shared window's bytes (of the layers built before)",
                static_cast<std::int64_t>(m.shared->window_bytes()), false}});
  }
  // The workspace, and the window every rank's kernel writes into (same size and layout on every
  // rank), shared with the communicator's other layers; growing the window is collective: every
  // rank constructs its layers in the same order.
  m.shared->reserve(m.plan);
}

// The gate is small: the kernel reads a copy padded to whole column tiles (its 16-byte loads then
// never straddle a row), stored like the caller's: [hidden, experts_padded], or [experts_padded,
// hidden] for [out, in] weights. The call's prologue kernel refreshes it before every launch (a few
// hundred KB), so that the gate, like every other weight, is read from the caller's memory at each
// forward and changes between calls take effect. The padding is zeroed with it: other layers' data
// lands there between calls (routing reads no padded logit, but the gate GEMM computes them).
device::CallPrologue::GateCopy MoELayer::Impl::gate_copy() const {
  const std::size_t elem = element_bytes(cfg.dtype);
  const std::size_t e = static_cast<std::size_t>(cfg.experts);
  const std::size_t ep = static_cast<std::size_t>(plan.experts_padded);
  const std::size_t h = static_cast<std::size_t>(cfg.hidden);
  device::CallPrologue::GateCopy g;
  g.src = weights.gate;
  g.dst = at(plan.gate);
  if (cfg.weight_layout == WeightLayout::out_in) {
    g.rows = 1;  // [experts, hidden] rows, then (ep - e) rows of zeros
    g.row_bytes = g.src_pitch = e * h * elem;
    g.dst_pitch = ep * h * elem;
  } else {
    g.rows = h;  // each row: e gate columns, then ep - e zeros
    g.row_bytes = g.src_pitch = e * elem;
    g.dst_pitch = ep * elem;
  }
  return g;
}

void MoELayer::Impl::check_last_call(const char* what) const {
  if (last_call != 0 && last_call != shared->calls()) {
    throw ConfigError(std::string(what) +
                      ": another layer on this communicator ran forward() (or was built) after "
                      "this layer's last forward(); the layers share one workspace, so read a "
                      "layer's results before the next layer runs");
  }
}

MoELayer::~MoELayer() = default;

const LayerConfig& MoELayer::config() const { return impl_->cfg; }

void MoELayer::forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream) {
  impl_->forward(x, tokens, y, stream, nullptr);
}

void MoELayer::forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream,
                       const Routing& routing) {
  impl_->forward(x, tokens, y, stream, &routing);
}

void MoELayer::Impl::forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream,
                             const Routing* routing) {
  Impl& m = *this;
  const LayerConfig& c = m.cfg;
  if (tokens < 0 || tokens > c.max_tokens) {
    throw ConfigError("forward: tokens = " + std::to_string(tokens) + " must be in [0, " +
                      std::to_string(c.max_tokens) + "] (LayerConfig.max_tokens)");
  }
  const bool ep = c.world_size > 1;
  if (tokens > 0 && (x != m.checked_x || y != m.checked_y)) {
    // Where a pointer lives is asked once per new pointer (a driver call): callers reuse buffers.
    check_device_pointer(x, "forward: x", m.device);
    check_device_pointer(y, "forward: y", m.device);
    m.checked_x = x;
    m.checked_y = y;
  }
  if (routing && tokens > 0) {
    const auto need = [&](const void* p, const char* name) {
      if (!p) {
        throw ConfigError(std::string("forward: Routing.") + name + " is null (tokens = " +
                          std::to_string(tokens) + " > 0)");
      }
      if ((reinterpret_cast<std::uintptr_t>(p) & 3u) != 0) {
        throw ConfigError(std::string("forward: Routing.") + name + " is not 4-byte aligned");
      }
    };
    need(routing->topk_ids, "topk_ids");
    need(routing->topk_weights, "topk_weights");
  }
  // Only a call that passed its checks becomes the one stats() and routing() read back.
  m.last_stream = stream;
  m.last_tokens = tokens;
  // Before anything is queued: a virtual peer without its layer is refused here.
  device::Params p{};
  if (ep) m.shared->window().peer_table(p.peer_window);
  m.last_call = m.shared->begin_call(stream, m.captured);
  // Everything before the launch is one small kernel (device/prologue.cu): control words cleared,
  // the gate's copy refreshed, the epoch advanced.
  device::CallPrologue pro;
  pro.zero[0] = {m.at(m.plan.control), m.plan.control_bytes};
  // With peers, a rank without tokens still runs: it owns experts and receives rows. Without, the
  // cleared counters are all there is to a call (stats() reads them).
  if (tokens == 0 && !ep) {
    MONOMOE_CUDA(device::call_prologue(pro, stream));
    return;
  }
  if (ep) pro.zero[1] = {m.shared->window_body() + m.plan.window.reset, m.plan.window.reset_bytes};
  const bool given = routing && tokens > 0;
  if (!given) pro.gate = m.gate_copy();  // a given routing leaves the gate unread

  p.tokens = static_cast<int>(tokens);
  p.hidden = static_cast<int>(c.hidden);
  p.ffn = static_cast<int>(c.ffn);
  p.experts = static_cast<int>(c.experts);
  p.topk = static_cast<int>(c.topk);
  p.experts_padded = static_cast<int>(m.plan.experts_padded);
  p.capacity = static_cast<int>(c.capacity(tokens));
  p.act = static_cast<device::Act>(static_cast<int>(c.activation));
  p.renormalize = c.renormalize ? 1 : 0;
  p.has_bias = c.bias ? 1 : 0;
  p.timeout_ns = static_cast<long long>(c.timeout_seconds * 1e9);
  p.token_tiles = static_cast<int>((tokens + device::kTileRows - 1) / device::kTileRows);
  // Expert GEMM tasks are 128 x bn; SwiGLU tasks read bn/2 gate and bn/2 up columns.
  // fp8's SwiGLU tasks make bn outputs (one quantization group), from bn gate and bn up columns.
  const std::int64_t bn = device::expert_tile_cols(c.dtype, c.weight_layout);
  const bool fp8 = c.dtype == DType::fp8;
  p.gemm0_col_tiles = static_cast<int>(
      c.activation == Activation::swiglu && !fp8 ? c.ffn / (bn / 2) : (c.ffn + bn - 1) / bn);
  p.gemm1_col_tiles = static_cast<int>((c.hidden + bn - 1) / bn);
  p.combine_cols = device::combine_cols_for(p.token_tiles, static_cast<int>(c.hidden));
  p.combine_col_tiles = static_cast<int>((c.hidden + p.combine_cols - 1) / p.combine_cols);
  p.x = x;
  p.y = y;
  p.gate = m.at(m.plan.gate);
  p.w1 = m.weights.w1;
  p.b1 = m.weights.b1;
  p.w2 = m.weights.w2;
  p.b2 = m.weights.b2;
  if (m.tma()) p.tma_w2 = m.tma_w2;
  p.shared_slices = static_cast<int>(c.shared_slices());
  p.shared_w1 = m.weights.shared_w1;
  p.shared_b1 = m.weights.shared_b1;
  p.shared_w2 = m.weights.shared_w2;
  p.shared_b2 = m.weights.shared_b2;
  if (m.tma()) p.tma_w2_shared = m.tma_w2_shared;
  p.w1_scale = static_cast<const float*>(m.weights.w1_scale);
  p.w2_scale = static_cast<const float*>(m.weights.w2_scale);
  p.shared_w1_scale = static_cast<const float*>(m.weights.shared_w1_scale);
  p.shared_w2_scale = static_cast<const float*>(m.weights.shared_w2_scale);
  p.x_quant = fp8 ? m.at(m.plan.x_quant) : nullptr;
  p.x_pitch = static_cast<int>(device::operand_pitch(c.hidden, fp8));
  p.h_pitch = static_cast<int>(device::operand_pitch(c.ffn, fp8));

  p.control = m.at<device::Control>(m.plan.control);
  int* words = m.at<int>(m.plan.control + sizeof(device::Control));
  p.expert_count = words;
  p.expert_dropped = p.expert_count + c.experts;
  p.rowtile_done = p.expert_dropped + c.experts;
  p.tokentile_done = p.rowtile_done + m.plan.gemm_tiles;
  p.tokentile_target = p.tokentile_done + m.plan.token_tiles;
  p.split_done = p.tokentile_target + m.plan.token_tiles;
  p.split_partial = m.at<float>(m.plan.split_partial);
  p.split_room = static_cast<int>(m.plan.split_room);
  // Every precision and activation splits K by one rule (device/split.hpp, k_split_for); fp8's
  // SwiGLU tasks store and sum two tiles a slice, in slots the plan sized for that (gemm0_results).
  p.split_target = std::min(m.grid, device::kSplitTargetMax);
  p.error = m.error();
  p.logits = m.at<float>(m.plan.logits);
  // The gate GEMM's K split over blocks to spare: halves for a large call, more slices for a few
  // tokens (device/split.hpp), within the partial sums the plan has room for.
  p.gate_splits = device::gate_split_for(tokens, p.hidden, p.experts_padded, m.grid);
  if (static_cast<std::int64_t>(p.gate_splits) * tokens * p.experts_padded > m.plan.logit_floats) {
    throw std::logic_error("monomoe: the gate's K split exceeds the workspace plan's partial sums");
  }
  m.last_gate_splits = given ? 1 : p.gate_splits;  // a given routing runs no gate
  // A call of few token tiles (decode) is routed by one block, with no grid barrier.
  p.route_alone = p.token_tiles <= device::kRouteAloneTiles ? 1 : 0;
  p.topk_expert = m.at<int>(m.plan.topk_expert);
  p.topk_weight = m.at<float>(m.plan.topk_weight);
  p.topk_kept = m.at<std::uint8_t>(m.plan.topk_kept);
  p.tile_counts = m.at<int>(m.plan.tile_counts);
  p.expert_rows = m.at<int>(m.plan.expert_rows);
  p.hidden_act = m.at(m.plan.hidden_act);
  if (m.tma()) {
    if (m.tma_h_base != p.hidden_act) {
      m.tma_h = detail::tile_tensor_map(p.hidden_act, 1, m.plan.hidden_rows, c.ffn,
                                        device::kTileRows, c.dtype, "hidden_act", p.h_pitch);
      m.tma_h_base = p.hidden_act;
    }
    p.tma_h = m.tma_h;
  }
  // One rank, routed by the grid: GEMM0's routed tiles read x_rows by TMA (kernel.cuh copies x
  // there while it places the rows). A call routed alone gathers (no grid barrier to order a copy).
  p.x_rows = m.plan.x_rows_bytes > 0 && !p.route_alone ? m.at(m.plan.x_rows) : nullptr;
  if (p.x_rows) {
    if (m.tma_x_rows_base != p.x_rows) {
      m.tma_x_rows = detail::tile_tensor_map(p.x_rows, 1, m.plan.hidden_rows, c.hidden,
                                             device::kTileRows, c.dtype, "x_rows", p.x_pitch);
      m.tma_x_rows_base = p.x_rows;
    }
    p.tma_x_rows = m.tma_x_rows;
    p.tma_w1 = m.tma_w1;
  }
  p.stage = m.at(m.plan.stage);
  p.shared_stage = m.at(m.plan.shared_stage);
  const detail::SharedLayout& fixed = m.shared->layout();
  p.tasks = reinterpret_cast<device::Task*>(m.shared->base() + fixed.tasks);
  p.max_tasks = static_cast<int>(m.plan.max_tasks);
  // The call's number stays on the device, advanced on the stream below: a graph replay is a new
  // call, where an argument would repeat the captured one (device/prologue.cu). One for all the
  // communicator's layers (workspace.hpp, SharedLayout).
  auto* epoch = reinterpret_cast<unsigned long long*>(m.shared->base() + fixed.epoch);
  p.epoch = epoch;
  p.trace = m.trace;
  p.given_ids = given ? routing->topk_ids : nullptr;
  p.given_weights = given ? routing->topk_weights : nullptr;

  p.world = static_cast<int>(c.world_size);
  p.rank = static_cast<int>(c.rank);
  p.experts_local = static_cast<int>(c.experts_per_rank());
  p.recv_tiles = m.at<device::RecvTile>(m.plan.recv_tiles);
  p.max_recv_tiles = static_cast<int>(m.plan.row_tiles);
  p.recv_parts = m.at<device::RecvPart>(m.plan.recv_part);
  p.max_recv_parts = static_cast<int>(m.plan.recv_parts);
  if (ep) {
    const auto& w = m.plan.window;
    const std::size_t body = fixed.window_body;
    p.window = m.shared->window().local();
    p.wl.start = fixed.start;  // the epoch flags: the window's shared prefix
    p.wl.header_flag = fixed.header_flag;
    p.wl.arrived = fixed.arrived;
    p.wl.header = body + w.header;  // the rest: this layer's area
    p.wl.done = body + w.done;
    p.wl.inbox = body + w.inbox;
    p.wl.ids = body + w.ids;
    p.wl.stage = body + w.stage;
    p.wl.rows_per_source = static_cast<int>(w.rows_per_source);
    p.wl.tiles_per_source = static_cast<int>(w.tiles_per_source);
    // Returned expert rows land in the window; their counters are the window's done words.
    p.stage = p.window + p.wl.stage;
    p.tokentile_done = reinterpret_cast<int*>(p.window + p.wl.done);
    // ~16 SMs reach 90% of the NVLink store bandwidth (DEVICE-NOTES.md); the rest compute.
    p.dispatch_blocks = std::min(16, m.grid - 1);
  }

  pro.epoch = epoch;
  MONOMOE_CUDA(device::call_prologue(pro, stream));
  MONOMOE_CUDA(device::launch_forward(c.dtype, c.weight_layout, p, m.grid, stream));
}

void MoELayer::set_trace(bool on) {
  Impl& m = *impl_;
  if (on && !m.trace) {
    MONOMOE_CUDA(cudaMalloc(&m.trace, sizeof(long long) * device::kTraceStride * m.grid));
    MONOMOE_CUDA(cudaMemset(m.trace, 0, sizeof(long long) * device::kTraceStride * m.grid));
  } else if (!on && m.trace) {
    synchronize();
    MONOMOE_CUDA(cudaFree(m.trace));
    m.trace = nullptr;
  }
}

namespace {

// The trace buffer of the last forward ([blocks, kTraceStride] words) and its time origin, the
// earliest block start; no blocks while tracing is off (trace == nullptr).
struct RawTrace {
  std::vector<long long> words;
  long long t0 = 0;
  int blocks = 0;
  const long long* block(int b) const { return words.data() + b * device::kTraceStride; }
};

RawTrace read_trace(const long long* trace, int grid) {
  RawTrace r;
  if (!trace) return r;
  r.blocks = grid;
  r.words.resize(static_cast<std::size_t>(device::kTraceStride) * grid);
  MONOMOE_CUDA(cudaMemcpy(r.words.data(), trace, r.words.size() * sizeof(long long),
                          cudaMemcpyDeviceToHost));
  r.t0 = r.words[0];
  for (int b = 0; b < grid; ++b) r.t0 = std::min(r.t0, r.block(b)[0]);
  return r;
}

}  // namespace

std::vector<BlockTrace> MoELayer::trace() {
  synchronize();
  const RawTrace raw = read_trace(impl_->trace, impl_->grid);
  const long long t0 = raw.t0;
  std::vector<BlockTrace> out;
  for (int b = 0; b < raw.blocks; ++b) {
    const long long* r = raw.block(b);
    BlockTrace t{r[1] - t0, r[2] - t0, r[3] - t0, r[4], r[5], r[6], r[7] - t0, r[8] - t0, r[9]};
    const auto event = [&](int e) {
      const long long v = r[device::kTraceEp + e];
      return v == 0 ? std::int64_t{-1} : std::int64_t{v - t0};
    };
    t.dispatch_start = event(device::ev_dispatch_start);
    t.dispatch_end = event(device::ev_dispatch_end);
    t.headers_seen = event(device::ev_headers_seen);
    t.tiles_listed = event(device::ev_tiles_listed);
    t.own_published = event(device::ev_own_published);
    t.peer_published = event(device::ev_peer_published);
    t.combine_published = event(device::ev_combine_published);
    t.logits_done = event(device::ev_logits_done);
    t.gate_barrier = event(device::ev_gate_barrier);
    t.scanned = event(device::ev_scanned);
    t.placed = event(device::ev_placed);
    out.push_back(t);
  }
  return out;
}

static_assert(MoELayer::kTaskTraceRecords == device::kTaskRecords);

std::vector<TaskTrace> MoELayer::task_trace() {
  synchronize();
  const RawTrace raw = read_trace(impl_->trace, impl_->grid);
  std::vector<TaskTrace> out;
  for (int b = 0; b < raw.blocks; ++b) {
    const long long* r = raw.block(b);
    const long long recorded = std::min<long long>(r[6], device::kTaskRecords);
    for (long long i = 0; i < recorded; ++i) {
      const long long* rec = r + device::kTraceSlots + device::kTaskWords * i;
      const unsigned long long packed = static_cast<unsigned long long>(rec[4]);
      TaskTrace t;
      t.block = b;
      t.type = static_cast<TaskTrace::Type>(packed >> 56);
      t.a = static_cast<std::int32_t>((packed >> 28) & 0xfffffff);
      t.b = static_cast<std::int32_t>(packed & 0xfffffff);
      t.start = rec[0] - raw.t0;
      const bool math = rec[1] != 0 && rec[2] != 0;
      t.math_start = math ? rec[1] - raw.t0 : -1;
      t.math_end = math ? rec[2] - raw.t0 : -1;
      t.end = rec[3] - raw.t0;
      out.push_back(t);
    }
  }
  return out;
}

void MoELayer::synchronize() {
  Impl& m = *impl_;
  MONOMOE_CUDA(cudaStreamSynchronize(m.last_stream));
  device::ErrorRecord rec{};
  MONOMOE_CUDA(cudaMemcpy(&rec, m.error(), sizeof(rec), cudaMemcpyDeviceToHost));
  if (rec.code != 0) {
    MONOMOE_CUDA(cudaMemset(m.error(), 0, sizeof(rec)));
    // A silent peer makes collective teardown unsafe (communicator_impl.hpp, peer_failed).
    if (static_cast<device::ErrorCode>(rec.code) == device::ErrorCode::timeout_peer) {
      m.comm->peer_failed = true;
    }
    throw KernelError(describe_kernel_error(rec, m.cfg));
  }
}

ForwardStats MoELayer::stats() {
  synchronize();
  Impl& m = *impl_;
  m.check_last_call("stats()");
  ForwardStats s;
  s.tokens = m.last_tokens;
  device::Control control{};
  MONOMOE_CUDA(cudaMemcpy(&control, m.at(m.plan.control), sizeof control, cudaMemcpyDeviceToHost));
  s.k_split = std::max(1, control.k_split);  // 0: no launch (no tokens on one GPU)
  s.row_tiles = control.row_tiles;
  s.packed_tiles = control.packed_tiles;
  s.gate_splits = m.last_tokens > 0 ? m.last_gate_splits : 1;
  std::vector<int> dropped(static_cast<std::size_t>(m.cfg.experts));
  MONOMOE_CUDA(cudaMemcpy(dropped.data(),
                          m.at(m.plan.control + sizeof(device::Control) + m.cfg.experts * 4),
                          dropped.size() * 4, cudaMemcpyDeviceToHost));
  for (int d : dropped) {
    s.dropped_per_expert.push_back(d);
    s.dropped += d;
  }
  // Rows per local expert: with peers, the routing headers every source sent (kept rows, per
  // source and local expert) in this rank's window; alone, the expert counts capped by capacity.
  const std::int64_t el = m.cfg.experts_per_rank();
  s.rows_per_local_expert.assign(static_cast<std::size_t>(el), 0);
  if (m.cfg.world_size > 1) {
    std::vector<int> header(static_cast<std::size_t>(m.cfg.world_size * el));
    MONOMOE_CUDA(cudaMemcpy(header.data(), m.shared->window_body() + m.plan.window.header,
                            header.size() * 4, cudaMemcpyDeviceToHost));
    for (std::size_t i = 0; i < header.size(); ++i) {
      s.rows_per_local_expert[i % static_cast<std::size_t>(el)] += header[i];
    }
  } else {
    std::vector<int> count(static_cast<std::size_t>(el));
    MONOMOE_CUDA(cudaMemcpy(count.data(), m.at(m.plan.control + sizeof(device::Control)),
                            count.size() * 4, cudaMemcpyDeviceToHost));
    for (std::size_t e = 0; e < count.size(); ++e) {
      s.rows_per_local_expert[e] = count[e] - dropped[e];
    }
  }
  return s;
}

void MoELayer::routing(std::vector<std::int32_t>& experts, std::vector<float>& weights) {
  synchronize();
  Impl& m = *impl_;
  m.check_last_call("routing()");
  const std::size_t n = static_cast<std::size_t>(m.last_tokens * m.cfg.topk);
  experts.resize(n);
  weights.resize(n);
  if (n == 0) return;
  MONOMOE_CUDA(cudaMemcpy(experts.data(), m.at(m.plan.topk_expert), n * 4, cudaMemcpyDeviceToHost));
  MONOMOE_CUDA(cudaMemcpy(weights.data(), m.at(m.plan.topk_weight), n * 4, cudaMemcpyDeviceToHost));
}

}  // namespace monomoe
