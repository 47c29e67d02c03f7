// The weight-read floor of a forward: with few tokens per GPU the layer is bound by reading, once,
// the weights of the experts its tokens touch. bench prints that floor next to the latency: the
// bytes of the distinct experts a rank runs (and the gate) divided by the HBM read bandwidth
// measured in the same run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "bench/timing.hpp"
#include "monomoe/config.hpp"

namespace monomoe::bench {

struct HbmRead {
  double bytes = 0.0;  // read per call
  Timing timing;
  double tb_per_s = 0.0;  // at the median time
};

// Times a kernel that reads `bytes` (far more than L2) once per call with 16-byte loads, as bench
// times the layer (`warmup` untimed calls, the median of `iterations`). Allocates and frees them.
HbmRead measure_hbm_read(std::size_t bytes, int warmup, int iterations, cudaStream_t stream);

// Bytes of one expert's weights (W1, W2 and the biases when the config has them).
double expert_weight_bytes(const LayerConfig& cfg);

// touched[e] != 0 for every expert that some token of any rank routed to (after capacity drops it
// may still be read). Returns, for each rank r, how many of its experts [r E/W, (r+1) E/W) are
// touched.
std::vector<std::int64_t> touched_experts_per_rank(const LayerConfig& cfg,
                                                   const std::vector<int>& touched);

}  // namespace monomoe::bench
