// The weight-read floor of a forward: with few tokens per GPU the layer is bound by reading, once,
// the weights of the experts its tokens touch. bench prints that floor next to the latency: the
// bytes of the distinct experts a rank runs (and the gate and the shared expert) divided by the HBM
// read bandwidth measured in the same run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

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

// Bytes of one expert's weights (W1, W2 and the biases when the config has them; fp8: E4M3
// matrices, their fp32 block scales and bf16 biases).
double expert_weight_bytes(const LayerConfig& cfg);
// Bytes of the shared expert's weights (the same parts; 0 when the config has none). Every token
// passes through it, so a forward with any token reads all of them.
double shared_weight_bytes(const LayerConfig& cfg);

}  // namespace monomoe::bench
