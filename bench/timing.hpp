// Device-side timing shared by everything `bench` measures (the layer, the baseline, the baseline's
// expert FFN alone, the dense GEMM ceiling): one method, so that the numbers compare.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>

namespace monomoe::bench {

struct Timing {
  double median_ms = 0.0, min_ms = 0.0, max_ms = 0.0;
};

// Times `call` with CUDA events recorded on `stream` around each of `iterations` calls, after
// `warmup` untimed calls; every call must enqueue its work on `stream`.
Timing time_calls(const std::function<void()>& call, int warmup, int iterations,
                  cudaStream_t stream);

}  // namespace monomoe::bench
