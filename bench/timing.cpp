#include "bench/timing.hpp"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "host/check.hpp"

namespace monomoe::bench {

Timing time_calls(const std::function<void()>& call, int warmup, int iterations,
                  cudaStream_t stream) {
  for (int i = 0; i < warmup; ++i) call();
  MONOMOE_CUDA(cudaStreamSynchronize(stream));
  std::vector<cudaEvent_t> ev(2 * static_cast<std::size_t>(iterations));
  for (auto& e : ev) MONOMOE_CUDA(cudaEventCreate(&e));
  for (int i = 0; i < iterations; ++i) {
    MONOMOE_CUDA(cudaEventRecord(ev[2 * i], stream));
    call();
    MONOMOE_CUDA(cudaEventRecord(ev[2 * i + 1], stream));
  }
  MONOMOE_CUDA(cudaStreamSynchronize(stream));
  std::vector<double> ms;
  for (int i = 0; i < iterations; ++i) {
    float t = 0.f;
    MONOMOE_CUDA(cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]));
    ms.push_back(t);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

}  // namespace monomoe::bench
