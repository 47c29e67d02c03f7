// The conventional, unfused expert-parallel MoE pipeline, for side-by-side timing against the fused
// kernel: cuBLAS gate GEMM -> softmax/top-k kernel -> permute -> grouped GEMMs -> activation ->
// grouped GEMMs -> un-permute and weighted combine. Same math and weight layouts as MoELayer.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "monomoe/config.hpp"
#include "monomoe/layer.hpp"

namespace monomoe::baseline {

class Pipeline {
 public:
  // world_size must be 1 for now (the multi-GPU all-to-all version comes with expert parallelism).
  // Allocates its buffers once for config.max_tokens.
  Pipeline(const LayerConfig& config, const ExpertWeights& weights);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // y[tokens, hidden] = MoE(x). Synchronizes the stream once (to read the per-expert row counts
  // that the grouped GEMM takes on the host), as conventional pipelines do.
  void forward(const void* x, std::int64_t tokens, void* y, cudaStream_t stream);

  // Routing of the last forward(): [tokens, topk] expert ids and gate weights.
  void routing(std::vector<std::int32_t>& experts, std::vector<float>& weights);
  std::int64_t dropped() const;  // capacity drops of the last forward()

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace monomoe::baseline
