// The conventional, unfused MoE pipeline, for side-by-side timing with the fused kernel. One
// forward() is a chain of library calls and small kernels:
//   1. gate logits [tokens, experts] in fp32: cublasGemmEx, strict fp32 math for every dtype (a
//      TF32 gate could flip near-tied top-k choices that the reference resolves);
//   2. gate_topk: softmax + top-k (ties to the lower expert) + renormalization;
//   3. routing: stable radix sort of the (token, choice) slots by expert, which keeps each expert's
//      tokens in ascending order; plan: counts, capacity, row offsets, GEMM pointer arrays;
//   4. permute: x rows into an expert-contiguous buffer;
//   5. per-expert row counts to the host (the one synchronization), then grouped GEMM0,
//      bias + activation, grouped GEMM1 (cublasGemmGroupedBatchedEx, one group per expert with
//      rows);
//   6. combine: y_t = sum over j of kept_j * w_j * (out + b2), in ascending j.
// With a shared expert (shared_ffn > 0), before 1: its dense GEMM0 over all tokens (cublasGemmEx),
// bias + activation, GEMM1, into a buffer of its own; the combine of 6 starts each token's sum
// from that row plus the shared b2.
// Expert parallel (world_size W > 1), between 4 and 6 as a bulk-synchronous pipeline does it:
//   a. NCCL all-to-all of the kept row counts per (source, expert): rank r receives the counts of
//      its experts from every source; they and the local counts go to the host (the one sync);
//   b. NCCL all-to-all of the rows: the permuted rows are expert-sorted, hence grouped by owning
//      rank, so each destination gets one contiguous slice; received rows are source-major;
//   c. grouped GEMMs with one group per (source, local expert) with rows; the owner adds b2;
//   d. the all-to-all back into the permuted layout, then the combine of step 6 (without b2).
// rerun_expert_ffn() repeats only the grouped GEMMs and activation of 5 (or c) for timing them
// apart; its GEMM1 writes a scratch buffer, since 5 and c write GEMM1 over their own input rows.
// cuBLAS is column-major: a row-major [m, n] matrix is its column-major transpose, so
// C = A . B (row-major) is computed as C^T = B^T . A^T with the operands swapped and no transposes.
//
// Precision of the expert GEMMs: the cuBLAS docs' type table for cublasGemmGroupedBatchedEx pairs
// bf16 inputs (compute type 32F) only with a bf16 output, so for DType::bf16 the GEMM outputs are
// rounded to bf16 before the bias/activation (GEMM0) and before the combine (GEMM1), as in a
// conventional bf16 pipeline. The fp32 paths keep fp32 outputs: tf32 uses
// CUBLAS_COMPUTE_32F_FAST_TF32, fp32 CUBLAS_COMPUTE_32F_PEDANTIC (no TF32, no emulation).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <nccl.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <memory>
#include <cub/device/device_radix_sort.cuh>
#include <string>
#include <vector>

#include "baseline/baseline.hpp"
#include "baseline/check.hpp"
#include "baseline/grouped_gemm.hpp"
#include "baseline/kernels.cuh"
#include "baseline/resources.hpp"
#include "host/checked.hpp"
#include "monomoe/error.hpp"

namespace monomoe::baseline {

namespace {

std::size_t sz(std::int64_t v) {
  return static_cast<std::size_t>(v);
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

void require_pointer(const char* what, const void* p, bool needed) {
  if (needed && p == nullptr) {
    throw ConfigError(std::string("baseline::Pipeline: ") + what + " is nullptr");
  }
  if (p != nullptr && !aligned16(p)) {
    throw ConfigError(std::string("baseline::Pipeline: ") + what +
                      " must be 16-byte aligned (vector loads)");
  }
}

cudaDataType_t cuda_type(DType t) {
  return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
}

ncclDataType_t nccl_type(DType t) {
  return t == DType::bf16 ? ncclBfloat16 : ncclFloat32;
}

// Precision of the expert GEMMs (see the top of this file).
cublasComputeType_t expert_compute_type(DType t) {
  if (t == DType::tf32) return CUBLAS_COMPUTE_32F_FAST_TF32;
  if (t == DType::fp32) return CUBLAS_COMPUTE_32F_PEDANTIC;
  return CUBLAS_COMPUTE_32F;
}

// Grid of an elementwise kernel over `groups` 4-element groups (grid-stride beyond 65536 blocks).
int elementwise_blocks(long long groups) {
  const long long want =
      (groups + kernels::kElementwiseThreads - 1) / kernels::kElementwiseThreads;
  return static_cast<int>(std::max(1LL, std::min(want, 65536LL)));
}

}  // namespace

struct Pipeline::Impl {
  LayerConfig cfg;
  ExpertWeights w;
  std::size_t elem = 0;  // bytes of one input/weight element
  Handles handles;
  std::int64_t last_tokens = 0;
  std::int64_t last_dropped = 0;
  std::int64_t last_bytes = 0;
  int sort_end_bit = 1;
  // Expert parallelism (world > 1).
  ncclComm_t comm = nullptr;
  int world = 1, rank = 0, local_experts = 0;
  DeviceBuffer recv;             // [world * slots, hidden]: rows received; then GEMM1's output
  DeviceBuffer recv_counts;      // [world, local_experts]: kept rows of each source for my experts
  DeviceBuffer recv_row_expert;  // [world * slots]: local expert of each received row
  PinnedBuffer host_counts;      // [experts + 1] local kept counts and drops, then recv_counts
  PinnedBuffer host_ptrs;        // [6, experts] GEMM pointer arrays, uploaded per call
  PinnedBuffer host_row_expert;  // [world * slots]
  std::size_t sort_bytes = 0;

  // Routing, sized for max_tokens * topk slots.
  DeviceBuffer logits, topk_expert, topk_weight, slot_id, sorted_expert, sorted_slot, sort_temp;
  DeviceBuffer counts;  // [experts] counts, [experts] begin, [experts] offset, [experts + 1] kept
  DeviceBuffer slot_row, row_expert, gemm_ptrs;
  // Expert rows: permuted x (reused for the GEMM1 output: GEMM0 has read it by then, in stream
  // order), GEMM0 output, activation.
  DeviceBuffer xp, pre, h;

  // Host-side arguments of the grouped GEMMs, [experts] each. Only the row counts change from
  // call to call; every group holds one problem, and since nothing is transposed the leading
  // dimensions are m (of A and C) and k (of B).
  std::vector<int> rows_of, m0, k0, m1, k1, group_size;
  std::unique_ptr<CutlassGroupedGemm> cutlass;  // set: the expert GEMMs run on CUTLASS (bf16)
  std::vector<float> alpha, beta;
  std::vector<cublasOperation_t> no_trans;

  // The last forward()'s expert FFN, for rerun_expert_ffn(): its row count, the rows' experts
  // (for the bias), and the buffer its GEMM1 wrote over its input rows (xp, or recv across ranks).
  long long ffn_rows = 0;
  const std::int32_t* ffn_row_expert = nullptr;
  const char* ffn_out = nullptr;
  // The rerun's copy of gemm_ptrs with GEMM1's outputs moved to rerun_out; built on the first
  // rerun after each forward().
  bool rerun_ready = false;
  DeviceBuffer rerun_ptrs, rerun_out;
  std::size_t rerun_out_bytes = 0;

  // The shared expert's rows, [max_tokens] each (empty without one): GEMM0 output, activation,
  // GEMM1 output (which the combine adds).
  DeviceBuffer shared_pre, shared_h, shared_out;

  Impl(const LayerConfig& c, const ExpertWeights& weights, Communicator* communicator);
  std::int32_t* plan(int which) const {  // 0 count, 1 begin, 2 offset, 3 kept
    return counts.as<std::int32_t>() + which * cfg.experts;
  }
  template <class T>
  void forward(const void* x, int tokens, void* y, cudaStream_t stream);
  // Steps 5 and 6 on one GPU; a-d and 6 across ranks.
  template <class T>
  void experts_local(int tokens, void* y, cudaStream_t stream);
  template <class T>
  void experts_parallel(int tokens, void* y, cudaStream_t stream);
  template <class T>
  void combine(int tokens, const void* out, const void* b2, void* y, cudaStream_t stream);
  // GEMM0 (grouped), bias + activation, GEMM1 (grouped) over the groups in rows_of, operands from
  // ptr_arrays (gemm_ptrs, or rerun_ptrs; arrays 0-2: W1, rows, pre; 3-5: W2, h, out);
  // row_expert names each row's expert for its bias.
  template <class T>
  void expert_ffn(long long rows, const std::int32_t* row_expert, void** ptr_arrays,
                  cudaStream_t stream);
  // The shared expert of every token of x, into shared_out.
  template <class T>
  void shared_expert(const void* x, int tokens, cudaStream_t stream);
  // h[r] = act(pre[r] + b1 of row_expert[r]) for `rows` rows of w1_cols pre-activations (b1 one
  // vector when row_expert is null): the step between the two GEMMs of the experts and of the
  // shared expert.
  template <class T>
  void activate(const T* pre, const T* b1, T* h, const std::int32_t* row_expert, long long rows,
                int ffn, int w1_cols, cudaStream_t stream);
  void prepare_rerun(cudaStream_t stream);
};

template <class T>
void Pipeline::Impl::activate(const T* pre, const T* b1, T* h, const std::int32_t* row_expert,
                              long long rows, int ffn, int w1_cols, cudaStream_t stream) {
  namespace k = kernels;
  const k::ActivationParams<T> ap{.pre = pre,
                                  .b1 = b1,
                                  .h = h,
                                  .row_expert = row_expert,
                                  .rows = rows,
                                  .ffn = ffn,
                                  .w1_cols = w1_cols,
                                  .act = cfg.activation};
  k::activation_kernel<T>
      <<<elementwise_blocks(rows * (ffn / 4)), k::kElementwiseThreads, 0, stream>>>(ap);
  MONOMOE_CHECK_LAUNCH(activation_kernel);
}

template <class T>
void Pipeline::Impl::shared_expert(const void* x, int tokens, cudaStream_t stream) {
  const cudaDataType_t type = cuda_type(cfg.dtype);
  const cublasComputeType_t compute = expert_compute_type(cfg.dtype);
  const int hidden = static_cast<int>(cfg.hidden);
  const int width = static_cast<int>(cfg.shared_ffn);
  const int w1c = static_cast<int>(cfg.shared_w1_columns());
  const float one = 1.f, zero = 0.f;
  // pre^T [w1c, T] = shared_w1^T [w1c, H] . x^T [H, T]
  MONOMOE_CUBLAS(cublasGemmEx(handles.blas, CUBLAS_OP_N, CUBLAS_OP_N, w1c, tokens, hidden, &one,
                              w.shared_w1, type, w1c, x, type, hidden, &zero, shared_pre.as(), type,
                              w1c, compute, CUBLAS_GEMM_DEFAULT));
  activate<T>(shared_pre.as<const T>(), static_cast<const T*>(w.shared_b1), shared_h.as<T>(),
              nullptr, tokens, width, w1c, stream);
  // out^T [H, T] = shared_w2^T [H, S] . h^T [S, T]
  MONOMOE_CUBLAS(cublasGemmEx(handles.blas, CUBLAS_OP_N, CUBLAS_OP_N, hidden, tokens, width, &one,
                              w.shared_w2, type, hidden, shared_h.as(), type, width, &zero,
                              shared_out.as(), type, hidden, compute, CUBLAS_GEMM_DEFAULT));
}

template <class T>
void Pipeline::Impl::expert_ffn(long long rows, const std::int32_t* row_expert, void** ptr_arrays,
                                cudaStream_t stream) {
  const int groups = static_cast<int>(rows_of.size());
  const cudaDataType_t type = cuda_type(cfg.dtype);
  const cublasComputeType_t compute = expert_compute_type(cfg.dtype);
  const auto ptrs = [&](std::size_t i) {
    return ptr_arrays + i * static_cast<std::size_t>(cfg.experts);
  };
  // Row-major operands of both GEMMs: pre[rows, w1_cols] = rows[rows, H] . W1[H, w1_cols] and
  // out[rows, H] = h[rows, I] . W2[I, H], one group per expert (array 0/3: W, 1/4: A, 2/5: D).
  const auto gemm0 = [&] {
    if (cutlass) {
      cutlass->run(rows_of, static_cast<int>(cfg.w1_columns()), static_cast<int>(cfg.hidden),
                   ptrs(1), ptrs(0), ptrs(2), stream);
      return;
    }
    MONOMOE_CUBLAS(cublasGemmGroupedBatchedEx(
      handles.blas, no_trans.data(), no_trans.data(), m0.data(), rows_of.data(), k0.data(),
      alpha.data(), const_cast<const void* const*>(ptrs(0)), type, m0.data(),
      const_cast<const void* const*>(ptrs(1)), type, k0.data(), beta.data(), ptrs(2), type,
      m0.data(), groups, group_size.data(), compute));
  };
  gemm0();
  const int ffn = static_cast<int>(cfg.ffn);
  activate<T>(pre.as<const T>(), static_cast<const T*>(w.b1), h.as<T>(), row_expert, rows, ffn,
              static_cast<int>(cfg.w1_columns()), stream);
  if (cutlass) {
    cutlass->run(rows_of, static_cast<int>(cfg.hidden), ffn, ptrs(4), ptrs(3), ptrs(5), stream);
    return;
  }
  MONOMOE_CUBLAS(cublasGemmGroupedBatchedEx(
      handles.blas, no_trans.data(), no_trans.data(), m1.data(), rows_of.data(), k1.data(),
      alpha.data(), const_cast<const void* const*>(ptrs(3)), type, m1.data(),
      const_cast<const void* const*>(ptrs(4)), type, k1.data(), beta.data(), ptrs(5), type,
      m1.data(), groups, group_size.data(), compute));
}

Pipeline::Impl::Impl(const LayerConfig& c, const ExpertWeights& weights, Communicator* communicator)
    : cfg(c), w(weights) {
  cfg.validate();
  if (cfg.weight_layout != WeightLayout::in_out) {
    throw ConfigError("baseline::Pipeline: LayerConfig.weight_layout = " +
                      std::string(to_string(cfg.weight_layout)) +
                      ": the baseline takes in-out weights only (pass a copy in that layout)");
  }
  if (communicator == nullptr && cfg.world_size != 1) {
    throw ConfigError("baseline::Pipeline: world_size = " + std::to_string(cfg.world_size) +
                      " needs a Communicator (use Pipeline(config, weights, comm)); without one "
                      "world_size must be 1");
  }
  if (communicator != nullptr) {
    if (communicator->world() != cfg.world_size || communicator->rank() != cfg.rank) {
      throw ConfigError("baseline::Pipeline: config world_size = " +
                        std::to_string(cfg.world_size) + ", rank = " + std::to_string(cfg.rank) +
                        " differ from the communicator's world " +
                        std::to_string(communicator->world()) + ", rank " +
                        std::to_string(communicator->rank()));
    }
    if (communicator->is_virtual()) {
      throw ConfigError("baseline::Pipeline: the communicator holds virtual ranks (one GPU, no "
                        "NCCL); the bulk-synchronous baseline needs one NCCL rank per GPU");
    }
    comm = static_cast<ncclComm_t>(communicator->nccl_comm());
    world = communicator->world();
    rank = communicator->rank();
  }
  local_experts = static_cast<int>(cfg.experts_per_rank());
  require_pointer("weights.gate", w.gate, true);
  require_pointer("weights.w1", w.w1, true);
  require_pointer("weights.w2", w.w2, true);
  require_pointer("weights.b1", w.b1, cfg.bias);
  require_pointer("weights.b2", w.b2, cfg.bias);
  const bool shared = cfg.shared_ffn > 0;
  require_pointer("weights.shared_w1", w.shared_w1, shared);
  require_pointer("weights.shared_w2", w.shared_w2, shared);
  require_pointer("weights.shared_b1", w.shared_b1, shared && cfg.bias);
  require_pointer("weights.shared_b2", w.shared_b2, shared && cfg.bias);
  // Biases are ignored, not half-used; so is a shared expert the config does not have.
  if (!cfg.bias) w.b1 = w.b2 = w.shared_b1 = w.shared_b2 = nullptr;
  if (!shared) w.shared_w1 = w.shared_b1 = w.shared_w2 = w.shared_b2 = nullptr;
  elem = element_bytes(cfg.dtype);

  const std::size_t e = sz(cfg.experts);
  const std::size_t slots = detail::checked_mul(sz(cfg.max_tokens), sz(cfg.topk), "max_tokens");
  const auto bytes = [&](std::size_t n, std::size_t width, std::size_t el) {
    return detail::checked_mul(detail::checked_mul(n, width, "max_tokens"), el, "max_tokens");
  };
  logits = DeviceBuffer(bytes(sz(cfg.max_tokens), e, sizeof(float)));
  topk_expert = DeviceBuffer(bytes(slots, 1, 4));
  topk_weight = DeviceBuffer(bytes(slots, 1, 4));
  slot_id = DeviceBuffer(bytes(slots, 1, 4));
  sorted_expert = DeviceBuffer(bytes(slots, 1, 4));
  sorted_slot = DeviceBuffer(bytes(slots, 1, 4));
  slot_row = DeviceBuffer(bytes(slots, 1, 4));
  row_expert = DeviceBuffer(bytes(slots, 1, 4));
  counts = DeviceBuffer((4 * e + 1) * sizeof(std::int32_t));
  gemm_ptrs = DeviceBuffer(6 * e * sizeof(void*));
  // Rows an expert-owning rank may hold: every source's slots (each token's choices are distinct
  // experts, so all of them can land on one rank).
  const std::size_t rows_cap = detail::checked_mul(slots, sz(world), "max_tokens");
  xp = DeviceBuffer(bytes(slots, sz(cfg.hidden), elem));
  pre = DeviceBuffer(bytes(rows_cap, sz(cfg.w1_columns()), elem));
  h = DeviceBuffer(bytes(rows_cap, sz(cfg.ffn), elem));
  if (shared) {
    shared_pre = DeviceBuffer(bytes(sz(cfg.max_tokens), sz(cfg.shared_w1_columns()), elem));
    shared_h = DeviceBuffer(bytes(sz(cfg.max_tokens), sz(cfg.shared_ffn), elem));
    shared_out = DeviceBuffer(bytes(sz(cfg.max_tokens), sz(cfg.hidden), elem));
  }
  if (world > 1) {
    recv = DeviceBuffer(bytes(rows_cap, sz(cfg.hidden), elem));
    recv_counts = DeviceBuffer(e * sizeof(std::int32_t));
    recv_row_expert = DeviceBuffer(rows_cap * sizeof(std::int32_t));
    host_counts = PinnedBuffer((2 * e + 1) * sizeof(std::int32_t));
    host_ptrs = PinnedBuffer(6 * e * sizeof(void*));
    host_row_expert = PinnedBuffer(rows_cap * sizeof(std::int32_t));
  }

  // The sort orders by expert id only: (expert, token) order comes from its stability, since the
  // slots enter in token order. Temporary storage grows with the item count, so size it for the
  // most slots; forward() checks its own call's need against it.
  sort_end_bit =
      std::max(1, static_cast<int>(std::bit_width(static_cast<unsigned>(cfg.experts - 1))));
  MONOMOE_CUDA(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const std::uint32_t*>(nullptr),
      static_cast<std::uint32_t*>(nullptr), static_cast<const std::int32_t*>(nullptr),
      static_cast<std::int32_t*>(nullptr), static_cast<int>(slots), 0, sort_end_bit));
  sort_temp = DeviceBuffer(sort_bytes);

  MONOMOE_CUDA(cudaMallocHost(&handles.host_kept, (e + 1) * sizeof(int)));
  MONOMOE_CUDA(cudaEventCreateWithFlags(&handles.done, cudaEventDisableTiming));
  MONOMOE_CUBLAS(cublasCreate(&handles.blas));
  // Each call's compute type sets its precision; the handle adds only that split-K reductions
  // stay in fp32 even when the output is bf16.
  MONOMOE_CUBLAS(cublasSetMathMode(
      handles.blas, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                              CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));

  rows_of.reserve(e);
  m0.assign(e, static_cast<int>(cfg.w1_columns()));  // pre^T [w1c, n] = W1_e^T [w1c, H] . xp^T
  k0.assign(e, static_cast<int>(cfg.hidden));
  m1.assign(e, static_cast<int>(cfg.hidden));  // out^T [H, n] = W2_e^T [H, ffn] . h^T [ffn, n]
  k1.assign(e, static_cast<int>(cfg.ffn));
  group_size.assign(e, 1);
  alpha.assign(e, 1.f);
  beta.assign(e, 0.f);
  no_trans.assign(e, CUBLAS_OP_N);
}

template <class T>
void Pipeline::Impl::forward(const void* x, int tokens, void* y, cudaStream_t stream) {
  namespace k = kernels;
  cublasHandle_t blas = handles.blas;
  const int experts = static_cast<int>(cfg.experts);
  const int topk = static_cast<int>(cfg.topk);
  const int hidden = static_cast<int>(cfg.hidden);
  const int w1c = static_cast<int>(cfg.w1_columns());
  const int ffn = static_cast<int>(cfg.ffn);
  const int slots = tokens * topk;
  const cudaDataType_t type = cuda_type(cfg.dtype);

  // The buffers are shared by all calls: a call on another stream must wait for the last one.
  MONOMOE_CUDA(cudaStreamWaitEvent(stream, handles.done, 0));
  MONOMOE_CUBLAS(cublasSetStream(blas, stream));
  if (slots == 0) {  // a rank without tokens still takes part in the exchanges (world > 1)
    MONOMOE_CUDA(cudaMemsetAsync(plan(3), 0, (sz(experts) + 1) * sizeof(std::int32_t), stream));
    experts_parallel<T>(tokens, y, stream);
    MONOMOE_CUDA(cudaEventRecord(handles.done, stream));
    return;
  }

  if (w.shared_w1) shared_expert<T>(x, tokens, stream);

  // 1. logits^T [E, T] = gate^T [E, H] . x^T [H, T]: fp32 output, strict fp32 math for every
  // dtype (cublasGemmEx takes bf16 or fp32 inputs with an fp32 output under COMPUTE_32F_PEDANTIC).
  const float one = 1.f, zero = 0.f;
  MONOMOE_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, experts, tokens, hidden, &one, w.gate,
                              type, experts, x, type, hidden, &zero, logits.as(), CUDA_R_32F,
                              experts, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT));

  // 2. softmax + top-k, and the per-expert counts.
  MONOMOE_CUDA(cudaMemsetAsync(plan(0), 0, sz(experts) * sizeof(std::int32_t), stream));
  const k::GateParams gp{.logits = logits.as<float>(),
                         .tokens = tokens,
                         .experts = experts,
                         .topk = topk,
                         .renormalize = cfg.renormalize,
                         .topk_expert = topk_expert.as<std::int32_t>(),
                         .topk_weight = topk_weight.as<float>(),
                         .slot_id = slot_id.as<std::int32_t>(),
                         .expert_count = plan(0)};
  const int gate_blocks = (tokens + k::kGateThreads / k::kWarp - 1) / (k::kGateThreads / k::kWarp);
  k::gate_topk_kernel<<<gate_blocks, k::kGateThreads, 0, stream>>>(gp);
  MONOMOE_CHECK_LAUNCH(gate_topk_kernel);

  // 3. stable sort of the slots by expert, then the plan.
  std::size_t need = 0;
  MONOMOE_CUDA(cub::DeviceRadixSort::SortPairs(
      nullptr, need, topk_expert.as<const std::uint32_t>(), sorted_expert.as<std::uint32_t>(),
      slot_id.as<const std::int32_t>(), sorted_slot.as<std::int32_t>(), slots, 0, sort_end_bit,
      stream));
  if (need > sort_bytes) {
    throw CudaError("baseline::Pipeline: cub::DeviceRadixSort needs " + std::to_string(need) +
                    " bytes of temporary storage for " + std::to_string(slots) +
                    " items, more than the " + std::to_string(sort_bytes) +
                    " sized for max_tokens");
  }
  MONOMOE_CUDA(cub::DeviceRadixSort::SortPairs(
      sort_temp.as(), need, topk_expert.as<const std::uint32_t>(),
      sorted_expert.as<std::uint32_t>(), slot_id.as<const std::int32_t>(),
      sorted_slot.as<std::int32_t>(), slots, 0, sort_end_bit, stream));

  const std::size_t e = sz(experts);
  const auto ptr_array = [&](std::size_t i) { return gemm_ptrs.as<void*>() + i * e; };
  // On one GPU the plan kernel fills the GEMM pointer arrays; across ranks experts_parallel()
  // replaces them with those of the received rows.
  k::PlanParams pp{};
  pp.experts = experts;
  pp.slots = slots;
  pp.capacity = static_cast<int>(cfg.capacity(tokens));
  pp.expert_count = plan(0);
  pp.expert_begin = plan(1);
  pp.row_offset = plan(2);
  pp.kept = plan(3);
  pp.ptrs = {
      const_cast<const void**>(ptr_array(0)), const_cast<const void**>(ptr_array(1)), ptr_array(2),
      const_cast<const void**>(ptr_array(3)), const_cast<const void**>(ptr_array(4)), ptr_array(5)};
  pp.w1 = static_cast<const char*>(w.w1);
  pp.w2 = static_cast<const char*>(w.w2);
  pp.xp = xp.as<const char>();
  pp.pre = pre.as<char>();
  pp.h = h.as<const char>();
  pp.out = xp.as<char>();
  pp.w1_stride = sz(hidden) * sz(w1c) * elem;
  pp.w2_stride = sz(ffn) * sz(hidden) * elem;
  pp.xp_row = sz(hidden) * elem;
  pp.pre_row = sz(w1c) * elem;
  pp.h_row = sz(ffn) * elem;
  pp.out_row = sz(hidden) * elem;
  k::plan_kernel<<<1, k::kPlanThreads, 0, stream>>>(pp);
  MONOMOE_CHECK_LAUNCH(plan_kernel);

  // 4. permute x into expert-contiguous rows.
  const k::PermuteParams mp{.slots = slots,
                            .topk = topk,
                            .sorted_expert = sorted_expert.as<const std::uint32_t>(),
                            .sorted_slot = sorted_slot.as<const std::int32_t>(),
                            .expert_begin = plan(1),
                            .row_offset = plan(2),
                            .kept = plan(3),
                            .x = static_cast<const char*>(x),
                            .xp = xp.as<char>(),
                            .row_bytes = sz(hidden) * elem,
                            .slot_row = slot_row.as<std::int32_t>(),
                            .row_expert = row_expert.as<std::int32_t>()};
  const int permute_warps = k::kPermuteThreads / k::kWarp;
  k::permute_kernel<<<(slots + permute_warps - 1) / permute_warps, k::kPermuteThreads, 0, stream>>>(
      mp);
  MONOMOE_CHECK_LAUNCH(permute_kernel);

  if (world == 1) {
    experts_local<T>(tokens, y, stream);
  } else {
    experts_parallel<T>(tokens, y, stream);
  }
  MONOMOE_CUDA(cudaEventRecord(handles.done, stream));
}

template <class T>
void Pipeline::Impl::combine(int tokens, const void* out, const void* b2, void* y,
                             cudaStream_t stream) {
  if (tokens == 0) return;
  const kernels::CombineParams<T> cp{.out = static_cast<const T*>(out),
                                     .b2 = static_cast<const T*>(b2),
                                     .shared = w.shared_w1 ? shared_out.as<const T>() : nullptr,
                                     .shared_b2 = static_cast<const T*>(w.shared_b2),
                                     .slot_row = slot_row.as<const std::int32_t>(),
                                     .topk_expert = topk_expert.as<const std::int32_t>(),
                                     .topk_weight = topk_weight.as<const float>(),
                                     .y = static_cast<T*>(y),
                                     .topk = static_cast<int>(cfg.topk),
                                     .hidden = static_cast<int>(cfg.hidden)};
  kernels::combine_kernel<T><<<tokens, kernels::kCombineThreads, 0, stream>>>(cp);
  MONOMOE_CHECK_LAUNCH(combine_kernel);
}

template <class T>
void Pipeline::Impl::experts_local(int tokens, void* y, cudaStream_t stream) {
  int* host_kept = handles.host_kept;
  const int experts = static_cast<int>(cfg.experts);
  const std::size_t e = sz(experts);
  // 5. the grouped GEMMs take their shapes on the host: read the kept rows per expert.
  MONOMOE_CUDA(
      cudaMemcpyAsync(host_kept, plan(3), (e + 1) * sizeof(int), cudaMemcpyDeviceToHost, stream));
  MONOMOE_CUDA(cudaStreamSynchronize(stream));
  last_dropped = host_kept[experts];
  rows_of.clear();
  long long rows = 0;
  for (int ex = 0; ex < experts; ++ex) {  // ascending experts with rows: plan_kernel's order
    if (host_kept[ex] > 0) rows_of.push_back(host_kept[ex]);
    rows += host_kept[ex];
  }
  ffn_rows = rows;
  ffn_row_expert = row_expert.as<const std::int32_t>();
  ffn_out = xp.as<const char>();
  if (!rows_of.empty()) {
    expert_ffn<T>(rows, row_expert.as<const std::int32_t>(), gemm_ptrs.as<void*>(), stream);
  }

  // 6. weighted combine; writes every token.
  combine<T>(tokens, xp.as(), w.b2, y, stream);
}

// Steps a-d and 6 (see the top of this file). Collective: every rank runs the same NCCL calls.
template <class T>
void Pipeline::Impl::experts_parallel(int tokens, void* y, cudaStream_t stream) {
  namespace k = kernels;
  const int experts = static_cast<int>(cfg.experts);
  const int le = local_experts;
  const int ffn = static_cast<int>(cfg.ffn);
  const int w1c = static_cast<int>(cfg.w1_columns());
  const std::size_t hidden = sz(cfg.hidden);
  const std::size_t row_bytes = hidden * elem;
  const ncclDataType_t ntype = nccl_type(cfg.dtype);
  const std::size_t e = sz(experts);

  // a. counts: my kept rows of rank r's experts go to r; every source's counts of mine come back.
  std::int32_t* kept = plan(3);
  MONOMOE_NCCL(ncclGroupStart());
  for (int r = 0; r < world; ++r) {
    MONOMOE_NCCL(ncclSend(kept + r * le, sz(le), ncclInt32, r, comm, stream));
    MONOMOE_NCCL(ncclRecv(recv_counts.as<std::int32_t>() + r * le, sz(le), ncclInt32, r, comm,
                          stream));
  }
  MONOMOE_NCCL(ncclGroupEnd());
  std::int32_t* hc = host_counts.as<std::int32_t>();
  MONOMOE_CUDA(
      cudaMemcpyAsync(hc, kept, (e + 1) * sizeof(std::int32_t), cudaMemcpyDeviceToHost, stream));
  MONOMOE_CUDA(cudaMemcpyAsync(hc + e + 1, recv_counts.as(), e * sizeof(std::int32_t),
                               cudaMemcpyDeviceToHost, stream));
  MONOMOE_CUDA(cudaStreamSynchronize(stream));
  last_dropped = hc[experts];
  const std::int32_t* from = hc + e + 1;  // [source, local expert]

  // Row slices: sent to r = my permuted rows of r's experts; received from s = source-major.
  std::vector<std::size_t> send_off(sz(world) + 1, 0), recv_off(sz(world) + 1, 0);
  for (int r = 0; r < world; ++r) {
    std::size_t sent = 0, got = 0;
    for (int j = 0; j < le; ++j) {
      sent += sz(hc[r * le + j]);
      got += sz(from[r * le + j]);
    }
    send_off[sz(r) + 1] = send_off[sz(r)] + sent;
    recv_off[sz(r) + 1] = recv_off[sz(r)] + got;
  }
  std::size_t remote = 0;
  for (int r = 0; r < world; ++r) {
    if (r != rank) remote += send_off[sz(r) + 1] - send_off[sz(r)];
  }
  last_bytes = static_cast<std::int64_t>(2 * remote * row_bytes);
  const auto exchange = [&](char* send_base, const std::vector<std::size_t>& send_at,
                            char* recv_base, const std::vector<std::size_t>& recv_at) {
    MONOMOE_NCCL(ncclGroupStart());
    for (int r = 0; r < world; ++r) {
      const std::size_t ns = send_at[sz(r) + 1] - send_at[sz(r)];
      const std::size_t nr = recv_at[sz(r) + 1] - recv_at[sz(r)];
      if (ns > 0) {
        MONOMOE_NCCL(ncclSend(send_base + send_at[sz(r)] * row_bytes, ns * hidden, ntype, r, comm,
                              stream));
      }
      if (nr > 0) {
        MONOMOE_NCCL(ncclRecv(recv_base + recv_at[sz(r)] * row_bytes, nr * hidden, ntype, r, comm,
                              stream));
      }
    }
    MONOMOE_NCCL(ncclGroupEnd());
  };

  // b. the rows to their experts' ranks.
  exchange(xp.as<char>(), send_off, recv.as<char>(), recv_off);

  // c. one GEMM group per (source, local expert) with rows, source-major like the received rows.
  void** hp = host_ptrs.as<void*>();
  std::int32_t* hre = host_row_expert.as<std::int32_t>();
  rows_of.clear();
  std::size_t row = 0;
  for (int s = 0; s < world; ++s) {
    for (int j = 0; j < le; ++j) {
      const int n = from[s * le + j];
      if (n == 0) continue;
      const std::size_t g = rows_of.size();
      const std::size_t uj = sz(j);
      hp[0 * e + g] = const_cast<char*>(static_cast<const char*>(w.w1)) +
                      uj * hidden * sz(w1c) * elem;
      hp[1 * e + g] = recv.as<char>() + row * row_bytes;
      hp[2 * e + g] = pre.as<char>() + row * sz(w1c) * elem;
      hp[3 * e + g] = const_cast<char*>(static_cast<const char*>(w.w2)) +
                      uj * sz(ffn) * hidden * elem;
      hp[4 * e + g] = h.as<char>() + row * sz(ffn) * elem;
      hp[5 * e + g] = recv.as<char>() + row * row_bytes;  // GEMM0 has read these rows by then
      if (cfg.bias) std::fill(hre + row, hre + row + n, j);
      rows_of.push_back(n);
      row += sz(n);
    }
  }
  const int groups = static_cast<int>(rows_of.size());
  const auto rows = static_cast<long long>(row);
  ffn_rows = rows;
  ffn_row_expert = recv_row_expert.as<const std::int32_t>();
  ffn_out = recv.as<const char>();
  if (groups > 0) {
    MONOMOE_CUDA(cudaMemcpyAsync(gemm_ptrs.as(), hp, 6 * e * sizeof(void*), cudaMemcpyHostToDevice,
                                 stream));
    if (cfg.bias) {
      MONOMOE_CUDA(cudaMemcpyAsync(recv_row_expert.as(), hre, row * sizeof(std::int32_t),
                                   cudaMemcpyHostToDevice, stream));
    }
    expert_ffn<T>(rows, recv_row_expert.as<const std::int32_t>(), gemm_ptrs.as<void*>(), stream);
    if (cfg.bias) {
      const k::AddBiasParams<T> bp{.out = recv.as<T>(),
                                   .b2 = static_cast<const T*>(w.b2),
                                   .row_expert = recv_row_expert.as<const std::int32_t>(),
                                   .rows = rows,
                                   .hidden = static_cast<int>(hidden)};
      k::add_bias_kernel<T>
          <<<elementwise_blocks(rows * static_cast<long long>(hidden / 4)),
             k::kElementwiseThreads, 0, stream>>>(bp);
      MONOMOE_CHECK_LAUNCH(add_bias_kernel);
    }
  }

  // d. results back into the permuted layout (xp: the dispatch read it before, in stream order).
  exchange(recv.as<char>(), recv_off, xp.as<char>(), send_off);
  combine<T>(tokens, xp.as(), nullptr, y, stream);
}

// The rerun's pointer arrays: the last forward()'s, with each group's GEMM1 output moved from
// ffn_out to the same offset in rerun_out, so that a rerun never writes the rows it reads.
void Pipeline::Impl::prepare_rerun(cudaStream_t stream) {
  const std::size_t e = sz(cfg.experts);
  const std::size_t row_bytes = sz(cfg.hidden) * elem;
  const std::size_t out_bytes = sz(ffn_rows) * row_bytes;
  if (out_bytes > rerun_out_bytes) {
    rerun_out = DeviceBuffer(out_bytes);
    rerun_out_bytes = out_bytes;
  }
  if (rerun_ptrs.as() == nullptr) rerun_ptrs = DeviceBuffer(6 * e * sizeof(void*));
  std::vector<void*> p(6 * e);
  MONOMOE_CUDA(cudaMemcpyAsync(p.data(), gemm_ptrs.as(), p.size() * sizeof(void*),
                               cudaMemcpyDeviceToHost, stream));
  MONOMOE_CUDA(cudaStreamSynchronize(stream));
  const auto base = reinterpret_cast<std::uintptr_t>(ffn_out);
  for (std::size_t g = 0; g < rows_of.size(); ++g) {
    const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(p[5 * e + g]) - base;
    // Groups tile [0, ffn_rows) rows of ffn_out; anything else would write past rerun_out.
    if (at + sz(rows_of[g]) * row_bytes > out_bytes) {
      throw CudaError("baseline::Pipeline::rerun_expert_ffn: GEMM1 output of group " +
                      std::to_string(g) + " lies outside the last forward's " +
                      std::to_string(ffn_rows) + " rows");
    }
    p[5 * e + g] = rerun_out.as<char>() + at;
  }
  MONOMOE_CUDA(cudaMemcpyAsync(rerun_ptrs.as(), p.data(), p.size() * sizeof(void*),
                               cudaMemcpyHostToDevice, stream));
  // p is pageable and about to go: the copy must have read it.
  MONOMOE_CUDA(cudaStreamSynchronize(stream));
  rerun_ready = true;
}

Pipeline::Pipeline(const LayerConfig& config, const ExpertWeights& weights)
    : impl_(std::make_unique<Impl>(config, weights, nullptr)) {}

Pipeline::Pipeline(const LayerConfig& config, const ExpertWeights& weights, Communicator& comm)
    : impl_(std::make_unique<Impl>(config, weights, &comm)) {}

Pipeline::~Pipeline() = default;

void Pipeline::forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream) {
  Impl& m = *impl_;
  if (tokens < 0 || tokens > m.cfg.max_tokens) {
    throw ConfigError("baseline::Pipeline::forward: tokens = " + std::to_string(tokens) +
                      " must be in [0, max_tokens = " + std::to_string(m.cfg.max_tokens) + "]");
  }
  m.last_tokens = tokens;
  m.last_dropped = 0;
  m.last_bytes = 0;
  m.ffn_rows = 0;
  m.rows_of.clear();
  m.rerun_ready = false;
  if (tokens == 0 && m.world == 1) return;  // nothing to launch; routing() reads back empty
  require_pointer("forward: x", x, tokens > 0);
  require_pointer("forward: y", y, tokens > 0);
  if (m.cfg.dtype == DType::bf16) {
    m.forward<__nv_bfloat16>(x, static_cast<int>(tokens), y, stream);
  } else {
    m.forward<float>(x, static_cast<int>(tokens), y, stream);
  }
}

void Pipeline::routing(std::vector<std::int32_t>& experts, std::vector<float>& weights) {
  const Impl& m = *impl_;
  const std::size_t n = sz(m.last_tokens) * sz(m.cfg.topk);
  experts.resize(n);
  weights.resize(n);
  if (n == 0) return;
  MONOMOE_CUDA(cudaEventSynchronize(m.handles.done));
  MONOMOE_CUDA(cudaMemcpy(experts.data(), m.topk_expert.as(), n * sizeof(std::int32_t),
                          cudaMemcpyDeviceToHost));
  MONOMOE_CUDA(
      cudaMemcpy(weights.data(), m.topk_weight.as(), n * sizeof(float), cudaMemcpyDeviceToHost));
}

std::int64_t Pipeline::dropped() const {
  return impl_->last_dropped;
}

std::int64_t Pipeline::bytes_sent() const {
  return impl_->last_bytes;
}

void Pipeline::use_cutlass_grouped_gemm(bool on) {
  Impl& m = *impl_;
  if (on && m.cfg.dtype != DType::bf16) {
    throw ConfigError("baseline::Pipeline: the CUTLASS grouped GEMM runs bf16 only; LayerConfig.dtype "
                      "is " + std::string(to_string(m.cfg.dtype)));
  }
  m.cutlass = on ? std::make_unique<CutlassGroupedGemm>(static_cast<int>(m.cfg.experts)) : nullptr;
}

void Pipeline::rerun_expert_ffn(cudaStream_t stream) {
  Impl& m = *impl_;
  if (m.rows_of.empty()) return;
  // Same buffers as forward(): a call on another stream waits for the last one.
  MONOMOE_CUDA(cudaStreamWaitEvent(stream, m.handles.done, 0));
  MONOMOE_CUBLAS(cublasSetStream(m.handles.blas, stream));
  if (!m.rerun_ready) m.prepare_rerun(stream);
  void** ptrs = m.rerun_ptrs.as<void*>();
  if (m.cfg.dtype == DType::bf16) {
    m.expert_ffn<__nv_bfloat16>(m.ffn_rows, m.ffn_row_expert, ptrs, stream);
  } else {
    m.expert_ffn<float>(m.ffn_rows, m.ffn_row_expert, ptrs, stream);
  }
  MONOMOE_CUDA(cudaEventRecord(m.handles.done, stream));
}

std::int64_t Pipeline::expert_ffn_rows() const {
  return impl_->ffn_rows;
}

}  // namespace monomoe::baseline
