// Kernels of the conventional pipeline (baseline.cu), one per step, each with its Params struct:
//   gate_topk  softmax + top-k per token (one warp per token)   -> experts, weights, counts
//   plan       per-expert offsets, capacity, GEMM pointer arrays (one block)
//   permute    sorted (expert, token) list -> expert-contiguous rows of x (one warp per row)
//   activation bias + activation of the first grouped GEMM's output, or of the shared expert's
//              first GEMM (elementwise)
//   add_bias   out_row += b2 of its expert (expert parallel: the owner adds b2 before the return)
//   combine    y_t = shared_t + shared b2 + sum_j kept_j * w_j * (out_row + b2) in ascending j
//              (one block per token)
// The stable sort between gate_topk and plan is cub::DeviceRadixSort, called from the host.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "monomoe/config.hpp"

namespace monomoe::baseline::kernels {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kExpertsPerLane = static_cast<int>(Limits::kMaxExperts) / kWarp;
constexpr int kGateThreads = 256;  // 8 tokens per block
constexpr int kPlanThreads = 256;  // one thread per expert
constexpr int kPermuteThreads = 256;
constexpr int kElementwiseThreads = 256;
constexpr int kCombineThreads = 128;
static_assert(kPlanThreads >= Limits::kMaxExperts, "plan_kernel gives each expert a thread");
static_assert(Limits::kMaxExperts % kWarp == 0);
static_assert(Limits::kMaxTopK <= kWarp, "gate_topk_kernel keeps choice j in lane j");

// ---- Element access -----------------------------------------------------------------------------

__device__ inline float to_float(float v) {
  return v;
}
__device__ inline float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <class T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Four consecutive elements moved as one 8- or 16-byte access. Rows are multiples of 128 elements
// and base pointers are 16-byte aligned (checked on the host), so every group of 4 is aligned.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

template <class T>
__device__ inline void load4(const T* p, float out[4]) {
  const Vec4<T> v = *reinterpret_cast<const Vec4<T>*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = to_float(v.v[i]);
}

template <class T>
__device__ inline void store4(T* p, const float in[4]) {
  Vec4<T> v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Vec4<T>*>(p) = v;
}

// ---- gate_topk ----------------------------------------------------------------------------------

struct GateParams {
  const float* logits;  // [tokens, experts]
  int tokens, experts, topk;
  bool renormalize;
  std::int32_t* topk_expert;   // [tokens, topk], descending probability
  float* topk_weight;          // [tokens, topk]
  std::int32_t* slot_id;       // [tokens, topk]: t * topk + j, the payload of the stable sort
  std::int32_t* expert_count;  // [experts], zeroed before the launch
};

// Lane l holds experts l, l + 32, ... . Selection repeats a warp argmax k times: the highest
// probability wins and ties go to the lower expert index (as in the reference). NaN compares false
// everywhere, so it never wins against a valid candidate; lane 0's answer is broadcast so that all
// lanes agree even then, which keeps the k experts distinct and in range whatever the input.
__global__ void __launch_bounds__(kGateThreads) gate_topk_kernel(GateParams p) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int t =
      static_cast<int>(blockIdx.x) * (kGateThreads / kWarp) + static_cast<int>(threadIdx.x) / kWarp;
  if (t >= p.tokens) return;  // whole warps leave together
  const float* row = p.logits + static_cast<std::size_t>(t) * static_cast<std::size_t>(p.experts);

  float prob[kExpertsPerLane];
  float top = -INFINITY;
#pragma unroll
  for (int s = 0; s < kExpertsPerLane; ++s) {
    const int e = lane + s * kWarp;
    prob[s] = e < p.experts ? row[e] : -INFINITY;
    top = fmaxf(top, prob[s]);
  }
  for (int off = kWarp / 2; off > 0; off /= 2)
    top = fmaxf(top, __shfl_xor_sync(kFullMask, top, off));
  float sum = 0.f;
#pragma unroll
  for (int s = 0; s < kExpertsPerLane; ++s) {
    prob[s] = lane + s * kWarp < p.experts ? expf(prob[s] - top) : 0.f;
    sum += prob[s];
  }
  // Butterfly sums pair the same two values on both lanes, so every lane holds the same sum.
  for (int off = kWarp / 2; off > 0; off /= 2) sum += __shfl_xor_sync(kFullMask, sum, off);
  unsigned taken = 0;  // bit s: expert lane + 32 s is chosen already, or does not exist
#pragma unroll
  for (int s = 0; s < kExpertsPerLane; ++s) {
    prob[s] /= sum;
    if (lane + s * kWarp >= p.experts) taken |= 1u << s;
  }

  int mine_expert = 0;  // lane j keeps choice j
  float mine_prob = 0.f;
  float chosen_sum = 0.f;
  for (int j = 0; j < p.topk; ++j) {
    int best = -1;
    float best_p = 0.f;
#pragma unroll
    for (int s = 0; s < kExpertsPerLane; ++s) {
      if (!((taken >> s) & 1u) && (best < 0 || prob[s] > best_p)) {
        best = lane + s * kWarp;
        best_p = prob[s];
      }
    }
    for (int off = kWarp / 2; off > 0; off /= 2) {
      const int other = __shfl_xor_sync(kFullMask, best, off);
      const float other_p = __shfl_xor_sync(kFullMask, best_p, off);
      if (other >= 0 && (best < 0 || other_p > best_p || (other_p == best_p && other < best))) {
        best = other;
        best_p = other_p;
      }
    }
    best = __shfl_sync(kFullMask, best, 0);
    best_p = __shfl_sync(kFullMask, best_p, 0);
    if (best % kWarp == lane) taken |= 1u << (best / kWarp);
    if (lane == j) {
      mine_expert = best;
      mine_prob = best_p;
    }
    chosen_sum += best_p;  // in ascending j on every lane, as the reference sums
  }
  if (lane < p.topk) {
    const std::size_t slot = static_cast<std::size_t>(t) * static_cast<std::size_t>(p.topk) +
                             static_cast<std::size_t>(lane);
    p.topk_expert[slot] = mine_expert;
    p.topk_weight[slot] = p.renormalize ? mine_prob / chosen_sum : mine_prob;
    p.slot_id[slot] = static_cast<std::int32_t>(slot);
    atomicAdd(p.expert_count + mine_expert, 1);  // integer counts: the order of atomics is moot
  }
}

// ---- plan ---------------------------------------------------------------------------------------

// Pointer arrays of the two grouped GEMMs, entry g for the g-th expert (ascending) with kept rows.
struct GemmPointers {
  const void** a0;  // W1_e
  const void** b0;  // permuted x rows of e
  void** c0;        // GEMM0 output rows of e
  const void** a1;  // W2_e
  const void** b1;  // activation rows of e
  void** c1;        // GEMM1 output rows of e
};

struct PlanParams {
  int experts;
  int slots;                         // tokens * topk
  int capacity;                      // rows kept per expert (tokens when dropless)
  const std::int32_t* expert_count;  // [experts]
  std::int32_t* expert_begin;        // [experts]: first index of e in the sorted slot list
  std::int32_t* row_offset;          // [experts]: first permuted row of e
  std::int32_t* kept;                // [experts + 1]: rows kept per expert, then the drop total
  GemmPointers ptrs;
  const char* w1;  // expert e's W1 at w1 + e * w1_stride (bytes); likewise the others
  const char* w2;
  const char* xp;
  char* pre;
  const char* h;
  char* out;
  std::size_t w1_stride, w2_stride, xp_row, pre_row, h_row, out_row;
};

__global__ void __launch_bounds__(kPlanThreads) plan_kernel(PlanParams p) {
  using Scan = cub::BlockScan<int, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int e = static_cast<int>(threadIdx.x);
  const int count = e < p.experts ? p.expert_count[e] : 0;
  const int kept = min(count, p.capacity);  // the first `capacity` rows in token order stay
  const int used = kept > 0 ? 1 : 0;
  int begin = 0, offset = 0, group = 0, total_kept = 0;
  Scan(scan).ExclusiveSum(count, begin);
  __syncthreads();  // the scan's shared storage is reused
  Scan(scan).ExclusiveSum(kept, offset, total_kept);
  __syncthreads();
  Scan(scan).ExclusiveSum(used, group);
  if (e < p.experts) {
    p.expert_begin[e] = begin;
    p.row_offset[e] = offset;
    p.kept[e] = kept;
  }
  if (e == 0) p.kept[p.experts] = p.slots - total_kept;
  if (used) {
    const std::size_t ue = static_cast<std::size_t>(e);
    const std::size_t row = static_cast<std::size_t>(offset);
    p.ptrs.a0[group] = p.w1 + ue * p.w1_stride;
    p.ptrs.b0[group] = p.xp + row * p.xp_row;
    p.ptrs.c0[group] = p.pre + row * p.pre_row;
    p.ptrs.a1[group] = p.w2 + ue * p.w2_stride;
    p.ptrs.b1[group] = p.h + row * p.h_row;
    p.ptrs.c1[group] = p.out + row * p.out_row;
  }
}

// ---- permute ------------------------------------------------------------------------------------

struct PermuteParams {
  int slots, topk;
  const std::uint32_t* sorted_expert;  // [slots], ascending expert, then ascending token
  const std::int32_t* sorted_slot;     // [slots]
  const std::int32_t* expert_begin;
  const std::int32_t* row_offset;
  const std::int32_t* kept;
  const char* x;             // [tokens, row_bytes]
  char* xp;                  // [rows, row_bytes]
  std::size_t row_bytes;     // a multiple of 16
  std::int32_t* slot_row;    // [slots]: permuted row of each (token, choice), -1 when dropped
  std::int32_t* row_expert;  // [rows]
};

__global__ void __launch_bounds__(kPermuteThreads) permute_kernel(PermuteParams p) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const long long i = static_cast<long long>(blockIdx.x) * (kPermuteThreads / kWarp) +
                      static_cast<long long>(threadIdx.x) / kWarp;
  if (i >= p.slots) return;
  const int e = static_cast<int>(p.sorted_expert[i]);
  const int slot = p.sorted_slot[i];
  const int pos = static_cast<int>(i) - p.expert_begin[e];  // rank of this token within e
  const bool keep = pos < p.kept[e];
  const int row = keep ? p.row_offset[e] + pos : -1;
  if (lane == 0) {
    p.slot_row[slot] = row;
    if (keep) p.row_expert[row] = e;
  }
  if (!keep) return;
  const int4* src =
      reinterpret_cast<const int4*>(p.x + static_cast<std::size_t>(slot / p.topk) * p.row_bytes);
  int4* dst = reinterpret_cast<int4*>(p.xp + static_cast<std::size_t>(row) * p.row_bytes);
  for (std::size_t q = static_cast<std::size_t>(lane); q < p.row_bytes / 16; q += kWarp) {
    dst[q] = src[q];
  }
}

// ---- activation ---------------------------------------------------------------------------------

template <class T>
struct ActivationParams {
  const T* pre;  // [rows, w1_cols]: GEMM0 output
  const T* b1;   // [experts, w1_cols] or nullptr
  T* h;          // [rows, ffn]
  const std::int32_t* row_expert;  // nullptr: every row is the shared expert's (b1 is one row)
  long long rows;
  int ffn, w1_cols;
  Activation act;
};

__device__ inline float silu(float v) {
  return v / (1.f + expf(-v));
}

// The activation is a runtime switch: it is uniform over the launch, so the branch costs nothing
// next to the memory traffic, and it keeps one instantiation per element type.
template <class T>
__global__ void __launch_bounds__(kElementwiseThreads) activation_kernel(ActivationParams<T> p) {
  const long long groups_per_row = p.ffn / 4;
  const long long total = p.rows * groups_per_row;
  for (long long g = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; g < total;
       g += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = g / groups_per_row;
    const int q = static_cast<int>(g % groups_per_row) * 4;
    const T* pre = p.pre + r * p.w1_cols;
    const long long expert = p.row_expert ? p.row_expert[r] : 0;
    const T* bias = p.b1 ? p.b1 + expert * p.w1_cols : nullptr;
    float v[4], b[4] = {0.f, 0.f, 0.f, 0.f}, out[4];
    load4(pre + q, v);
    if (bias) load4(bias + q, b);
    if (p.act == Activation::swiglu) {
      float u[4], bu[4] = {0.f, 0.f, 0.f, 0.f};
      load4(pre + p.ffn + q, u);
      if (bias) load4(bias + p.ffn + q, bu);
#pragma unroll
      for (int i = 0; i < 4; ++i) out[i] = silu(v[i] + b[i]) * (u[i] + bu[i]);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float x = v[i] + b[i];
        switch (p.act) {
          case Activation::relu:
            out[i] = x > 0.f ? x : 0.f;
            break;
          case Activation::gelu:
            out[i] = 0.5f * x * (1.f + erff(x * 0.70710678118654752440f));
            break;
          default:
            out[i] = silu(x);
            break;
        }
      }
    }
    store4(p.h + r * p.ffn + q, out);
  }
}

// ---- bias of GEMM1 rows (expert parallel) ---------------------------------------------------------

template <class T>
struct AddBiasParams {
  T* out;                          // [rows, hidden]: GEMM1 output, in place
  const T* b2;                     // [local experts, hidden]
  const std::int32_t* row_expert;  // [rows]: local expert of each row
  long long rows;
  int hidden;
};

template <class T>
__global__ void __launch_bounds__(kElementwiseThreads) add_bias_kernel(AddBiasParams<T> p) {
  const long long groups_per_row = p.hidden / 4;
  const long long total = p.rows * groups_per_row;
  for (long long g = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; g < total;
       g += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = g / groups_per_row;
    const int q = static_cast<int>(g % groups_per_row) * 4;
    float o[4], b[4];
    load4(p.out + r * p.hidden + q, o);
    load4(p.b2 + static_cast<long long>(p.row_expert[r]) * p.hidden + q, b);
#pragma unroll
    for (int i = 0; i < 4; ++i) o[i] += b[i];
    store4(p.out + r * p.hidden + q, o);
  }
}

// ---- combine ------------------------------------------------------------------------------------

template <class T>
struct CombineParams {
  const T* out;  // [rows, hidden]: GEMM1 output
  const T* b2;   // [experts, hidden] or nullptr
  const T* shared;     // [tokens, hidden]: the shared expert's GEMM1 output, or nullptr
  const T* shared_b2;  // [hidden] or nullptr
  const std::int32_t* slot_row;
  const std::int32_t* topk_expert;
  const float* topk_weight;
  T* y;  // [tokens, hidden]
  int topk, hidden;
};

// Every token is written, dropped choices add nothing, and the sum starts from the shared expert's
// output and runs over j = 0..k-1 in order, so y does not depend on how rows were laid out or which
// GEMM produced them first.
template <class T>
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(CombineParams<T> p) {
  const long long t = blockIdx.x;
  const std::int32_t* rows = p.slot_row + t * p.topk;
  for (int q = static_cast<int>(threadIdx.x) * 4; q < p.hidden; q += kCombineThreads * 4) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (p.shared) {
      float b[4] = {0.f, 0.f, 0.f, 0.f};
      load4(p.shared + t * p.hidden + q, acc);
      if (p.shared_b2) load4(p.shared_b2 + q, b);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += b[i];
    }
    for (int j = 0; j < p.topk; ++j) {
      const int row = rows[j];
      if (row < 0) continue;
      const float w = p.topk_weight[t * p.topk + j];
      float o[4], b[4] = {0.f, 0.f, 0.f, 0.f};
      load4(p.out + static_cast<long long>(row) * p.hidden + q, o);
      if (p.b2)
        load4(p.b2 + static_cast<long long>(p.topk_expert[t * p.topk + j]) * p.hidden + q, b);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += w * (o[i] + b[i]);
    }
    store4(p.y + t * p.hidden + q, acc);
  }
}

}  // namespace monomoe::baseline::kernels
