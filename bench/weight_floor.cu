#include "bench/weight_floor.hpp"

#include <cuda_runtime_api.h>

#include "baseline/check.hpp"
#include "host/check.hpp"

namespace monomoe::bench {

namespace {

constexpr int kReadThreads = 512;

// Every thread XORs the 16-byte words it reads; the sum is stored only when it equals a value the
// fill never produces, which keeps the loads without writing anything.
__global__ void __launch_bounds__(kReadThreads) read_all(const uint4* p, long long n, uint4* sink) {
  uint4 acc = make_uint4(0, 0, 0, 0);
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const uint4 v = __ldcs(p + i);  // streaming: read once, do not keep in L2
    acc.x ^= v.x;
    acc.y ^= v.y;
    acc.z ^= v.z;
    acc.w ^= v.w;
  }
  if (acc.x == 0x12345678u && acc.y == 0x9abcdef0u && acc.z == 0x0fedcba9u && acc.w == 1u) {
    *sink = acc;
  }
}

}  // namespace

HbmRead measure_hbm_read(std::size_t bytes, int warmup, int iterations, cudaStream_t stream) {
  HbmRead r;
  const long long n = static_cast<long long>(bytes / sizeof(uint4));
  uint4* buf = nullptr;
  MONOMOE_CUDA(cudaMalloc(&buf, static_cast<std::size_t>(n + 1) * sizeof(uint4)));
  try {
    MONOMOE_CUDA(cudaMemsetAsync(buf, 0x5a, static_cast<std::size_t>(n + 1) * sizeof(uint4), stream));
    int sms = 0, dev = 0;
    MONOMOE_CUDA(cudaGetDevice(&dev));
    MONOMOE_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    const int blocks = sms * 4;  // 2048 threads per SM: enough loads in flight to saturate HBM
    r.timing = time_calls(
        [&] {
          read_all<<<blocks, kReadThreads, 0, stream>>>(buf, n, buf + n);
          MONOMOE_CHECK_LAUNCH(read_all);
        },
        warmup, iterations, stream);
  } catch (...) {
    cudaFree(buf);
    throw;
  }
  MONOMOE_CUDA(cudaFree(buf));
  r.bytes = static_cast<double>(n) * sizeof(uint4);
  r.tb_per_s = r.bytes / (r.timing.median_ms * 1e-3) * 1e-12;
  return r;
}

double expert_weight_bytes(const LayerConfig& cfg) {
  const double h = static_cast<double>(cfg.hidden);
  const double w1 = static_cast<double>(cfg.w1_columns());
  const double f = static_cast<double>(cfg.ffn);
  const double matrices = h * w1 + f * h;
  double bytes = matrices * static_cast<double>(weight_element_bytes(cfg.dtype));
  // fp8: one fp32 scale per 128 x 128 block of each matrix, read with it.
  if (cfg.dtype == DType::fp8) bytes += matrices / (128.0 * 128.0) * 4.0;
  if (cfg.bias) bytes += (w1 + h) * static_cast<double>(element_bytes(cfg.dtype));
  return bytes;
}

double shared_weight_bytes(const LayerConfig& cfg) {
  if (cfg.shared_ffn == 0) return 0.0;
  LayerConfig shared = cfg;  // an expert of width shared_ffn, with the same parts
  shared.ffn = cfg.shared_ffn;
  return expert_weight_bytes(shared);
}

}  // namespace monomoe::bench
