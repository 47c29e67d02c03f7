// cluster_coop.cu: a probe, not part of the library. Can the persistent kernel run as pairs of
// blocks (2-CTA thread block clusters) and stay a cooperative launch of one block per SM?
//
// Why (docs/hopper-pipeline.md, 2026-12-01): the GEMM phase of the default config keeps L2 at ~79%
// of its peak over the whole launch, and a row tile's tasks cost what they load: an expert's
// nearly empty last row tile streams its whole weight slab (the call runs 11% faster when those
// tiles are gone, `--capacity 1.0`). Two row tiles of one expert computed by the two blocks of a
// cluster could load each weight tile once, by TMA multicast into both blocks' shared memory. That
// needs the kernel launched in clusters of 2 with all 132 blocks resident at once (its grid
// barriers and task queue assume every block runs), i.e. cooperative and clustered together.
//
// What it checks, in order (each line prints PASS or FAIL and what it saw):
//   1. cudaOccupancyMaxActiveClusters for clusters of 2 with `smem` bytes of dynamic shared memory
//      and 256 threads: at least half the SM count (so the whole grid fits at once);
//   2. cudaLaunchKernelEx with both cudaLaunchAttributeCooperative and a cluster dimension of 2,
//      grid = the SM count: the launch is accepted;
//   3. in that launch every block passes a grid-wide barrier (a counter in global memory, polled
//      with a bound: a block that never starts shows as a timeout, not a hang), and the two blocks
//      of each cluster exchange a word through distributed shared memory (mapa + st.shared::cluster,
//      then barrier.cluster): the values arrive;
//   4. which SMs the pairs ran on (%smid): printed, as a hint of how the hardware places them.
//
// Build: the CMake build makes it with the tools (target monomoe_probe_cluster_coop,
// <build>/bench/cluster_coop), or alone: nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a
// bench/probes/cluster_coop.cu -o cluster_coop
// Run:   ./cluster_coop [smem_bytes]     default: the device's opt-in maximum per block, less
//                                        the probe's static shared memory
// Status: run on an H200 on 2026-12-01: every check PASS (66 clusters of 2 with 232,432 B each;
// docs/perf-log.md, 2026-12-01 ~07:31).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

#define CHECK_CUDA(call)                                                                   \
  do {                                                                                     \
    const cudaError_t err_ = (call);                                                       \
    if (err_ != cudaSuccess) {                                                             \
      std::printf("FAIL %s: %s (%s)\n", #call, cudaGetErrorName(err_), cudaGetErrorString(err_)); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

constexpr int kThreads = 256;
constexpr long long kBoundNs = 2'000'000'000;  // a barrier wait gives up after 2 s

__device__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// out[b] = {smid, the value received from the other block of b's cluster, barrier ok}.
// Launched with a cluster dimension of 2 (a launch attribute: the occupancy query needs it there).
__global__ void pair_kernel(unsigned int* arrived, int* out) {
  extern __shared__ unsigned int dyn[];
  __shared__ unsigned int box;
  unsigned int rank;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  // Grid-wide barrier: every block must be resident for it to pass.
  __shared__ int ok;
  if (threadIdx.x == 0) {
    dyn[0] = blockIdx.x;  // touch the dynamic shared memory
    atomicAdd(arrived, 1u);
    const unsigned long long start = global_ns();
    ok = 1;
    while (atomicAdd(arrived, 0u) < gridDim.x) {
      if (global_ns() - start > kBoundNs) {
        ok = 0;
        break;
      }
      __nanosleep(256);
    }
    box = 0xffffffffu;
  }
  __syncthreads();
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;" ::: "memory");
  // Write this block's index into the other block's `box` (distributed shared memory).
  if (threadIdx.x == 0) {
    const unsigned int local = static_cast<unsigned int>(__cvta_generic_to_shared(&box));
    unsigned int remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank ^ 1u));
    asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(remote), "r"(blockIdx.x) : "memory");
  }
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;" ::: "memory");
  if (threadIdx.x == 0) {
    unsigned int smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    out[3 * blockIdx.x + 0] = static_cast<int>(smid);
    out[3 * blockIdx.x + 1] = static_cast<int>(box);
    out[3 * blockIdx.x + 2] = ok;
  }
}

}  // namespace

int main(int argc, char** argv) {
  int dev = 0, sms = 0, smem_max = 0, coop = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  cudaFuncAttributes fa = {};
  CHECK_CUDA(cudaFuncGetAttributes(&fa, pair_kernel));
  // Default: all the dynamic shared memory a block can have beside the kernel's static words.
  const int smem = argc > 1 ? std::atoi(argv[1]) : smem_max - static_cast<int>(fa.sharedSizeBytes);
  std::printf("device %d: %d SMs, opt-in shared memory %d B per block, cooperative launch %d; "
              "probe: %d B, %d threads, clusters of 2\n",
              dev, sms, smem_max, coop, smem, kThreads);
  CHECK_CUDA(cudaFuncSetAttribute(pair_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned int>(sms));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(smem);
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = 2;
  attrs[0].val.clusterDim.y = 1;
  attrs[0].val.clusterDim.z = 1;
  attrs[1].id = cudaLaunchAttributeCooperative;
  attrs[1].val.cooperative = 1;
  cfg.attrs = attrs;
  cfg.numAttrs = 1;  // the occupancy query takes the cluster dimension alone
  int clusters = 0;
  CHECK_CUDA(cudaOccupancyMaxActiveClusters(&clusters, pair_kernel, &cfg));
  const bool fits = 2 * clusters >= sms;
  std::printf("%s 1. max active clusters of 2: %d (%d blocks; the grid needs %d)\n",
              fits ? "PASS" : "FAIL", clusters, 2 * clusters, sms);

  unsigned int* arrived = nullptr;
  int* out = nullptr;
  CHECK_CUDA(cudaMalloc(&arrived, sizeof(unsigned int)));
  CHECK_CUDA(cudaMalloc(&out, 3 * sizeof(int) * sms));
  CHECK_CUDA(cudaMemset(arrived, 0, sizeof(unsigned int)));
  CHECK_CUDA(cudaMemset(out, 0xff, 3 * sizeof(int) * sms));
  cfg.numAttrs = 2;
  const cudaError_t launched = cudaLaunchKernelEx(&cfg, pair_kernel, arrived, out);
  std::printf("%s 2. cooperative launch in clusters of 2: %s\n",
              launched == cudaSuccess ? "PASS" : "FAIL", cudaGetErrorString(launched));
  if (launched != cudaSuccess) return 1;
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<int> h(3 * static_cast<size_t>(sms));
  CHECK_CUDA(cudaMemcpy(h.data(), out, h.size() * sizeof(int), cudaMemcpyDeviceToHost));
  int barrier_ok = 0, exchanged = 0;
  for (int b = 0; b < sms; ++b) {
    barrier_ok += h[3 * b + 2] == 1;
    exchanged += h[3 * b + 1] == (b ^ 1);
  }
  std::printf("%s 3. grid barrier passed by %d of %d blocks; pair exchange right in %d of %d\n",
              barrier_ok == sms && exchanged == sms ? "PASS" : "FAIL", barrier_ok, sms, exchanged,
              sms);
  std::printf("4. SMs of the pairs (block 2c, 2c+1):");
  for (int c = 0; c < sms / 2 && c < 16; ++c) std::printf(" (%d,%d)", h[6 * c], h[6 * c + 3]);
  std::printf("%s\n", sms / 2 > 16 ? " ..." : "");
  cudaFree(arrived);
  cudaFree(out);
  return fits && barrier_ok == sms && exchanged == sms ? 0 : 1;
}
