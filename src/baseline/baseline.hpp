// The conventional, unfused expert-parallel MoE pipeline, for side-by-side timing against the fused
// kernel: cuBLAS gate GEMM -> softmax/top-k kernel -> permute -> [NCCL all-to-all of counts and
// rows] -> grouped GEMMs -> activation -> grouped GEMMs -> [all-to-all back] -> un-permute and
// weighted combine, plus a shared expert when the config has one (dense cuBLAS GEMMs over all
// tokens, added in the combine). Same math and weight layouts as MoELayer; bulk-synchronous (the
// host reads the row counts once per forward, as such pipelines do).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "monomoe/communicator.hpp"
#include "monomoe/config.hpp"
#include "monomoe/layer.hpp"

namespace monomoe::baseline {

class Pipeline {
 public:
  // One GPU: config.world_size must be 1. Allocates its buffers once for config.max_tokens.
  Pipeline(const LayerConfig& config, const ExpertWeights& weights);
  // Expert parallel over comm's ranks (config.world_size and rank must match comm's): weights are
  // this rank's experts (MoELayer's layout). forward() is collective: every rank calls it, with
  // its own token count (0 allowed). Buffers hold world_size * max_tokens * topk received rows.
  Pipeline(const LayerConfig& config, const ExpertWeights& weights, Communicator& comm);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // y[tokens, hidden] = MoE(x). Synchronizes the stream once (to read the per-expert row counts
  // that the grouped GEMM takes on the host), as conventional pipelines do.
  void forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream);

  // bf16 only: run the expert FFN's two grouped GEMMs on CUTLASS's Hopper pointer-array grouped
  // GEMM (src/baseline/grouped_gemm.cu) instead of cublasGemmGroupedBatchedEx, which reaches about
  // half its rate on MoE shapes. Throws ConfigError for other precisions.
  void use_cutlass_grouped_gemm(bool on);

  // Routing of the last forward(): [tokens, topk] expert ids and gate weights.
  void routing(std::vector<std::int32_t>& experts, std::vector<float>& weights);
  std::int64_t dropped() const;  // capacity drops of the last forward()
  // Bytes of this rank's token rows that the last forward() sent to other ranks' experts, counted
  // out and back (rows * hidden * element size * 2); 0 on one GPU. Counts headers are not included.
  std::int64_t bytes_sent() const;

  // Runs the expert FFN of the last forward() again, alone: grouped GEMM0, bias + activation,
  // grouped GEMM1 over the same groups and row counts (with world > 1: the rows this rank
  // received, not its own tokens' rows). For timing the baseline's GEMM part apart from routing
  // and exchanges. It calls no NCCL, so each rank may run it any number of times, or never.
  // GEMM1 writes a scratch buffer, not the rows it reads, so every call reads the same rows: those
  // the last forward()'s GEMM1 left in place of the permuted rows (same count, grouping and scale).
  // The first call after a forward() synchronizes the stream to build its pointer arrays and
  // allocates the scratch (rows x hidden) if the one it has is smaller. The last forward()'s y
  // and routing() are left as they were; nothing runs when it kept no rows.
  void rerun_expert_ffn(cudaStream_t stream);
  // Rows that the last forward()'s expert FFN computed on this rank.
  std::int64_t expert_ffn_rows() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace monomoe::baseline
