// The transport interface of src/device/transport.cuh, exercised the same way for every transport:
// every rank put()s a distinct pattern into each peer's window and signal_add()s it, waits (with a
// bound) for all its peers' signals, then checks every received byte; two rounds, so signals keep
// counting and the windows are reused. The load/store path (LsaTransport) runs on 2 and 4 GPUs of
// one host through NCCL's peer pointers, and on one GPU between 2, 4 and 8 virtual ranks whose
// windows share its memory (loopback); the GIN path (GinTransport) is compiled here and runs where
// the communicator has GIN, else it skips with the reason (one host without a GIN-capable NIC).
// Label gpu.
#include <gtest/gtest.h>
#include <nccl.h>
#include <nccl_device.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "device/transport.cuh"
#include "device/transport_gin.cuh"
#include "monomoe/communicator.hpp"
#include "gpu_problem.hpp"
#include "gpu_test.hpp"
#include "multi_gpu.hpp"

namespace monomoe {
namespace {

constexpr unsigned long long kChunk = 8192;  // bytes each rank sends each peer
constexpr int kSkip = 77;                     // a worker's "skipped" exit status

struct Layout {
  unsigned long long src, dst, signals, bytes;
};
Layout layout(int world) {
  const unsigned long long w = static_cast<unsigned long long>(world);
  return {0, w * kChunk, 2 * w * kChunk, 2 * w * kChunk + 64 * 8};
}

__host__ __device__ unsigned int pattern(int from, int to, int round, unsigned long long word) {
  return 0x9e3779b9u * static_cast<unsigned int>(from + 1) ^
         0x85ebca6bu * static_cast<unsigned int>(to + 7) ^ static_cast<unsigned int>(word) ^
         (static_cast<unsigned int>(round) << 24);
}

__device__ long long now_ns() {
  long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// result[0]: wrong words; result[1]: 1 when the wait for the peers' signals timed out.
template <class Transport>
__device__ void exchange(const Transport& t, unsigned char* local, int rank, int world, int round,
                         Layout l, int* result, long long timeout_ns) {
  const unsigned long long words = kChunk / 4;
  for (int p = 0; p < world; ++p) {
    unsigned int* src = reinterpret_cast<unsigned int*>(local + l.src + p * kChunk);
    for (unsigned long long i = threadIdx.x; i < words; i += blockDim.x) {
      src[i] = pattern(rank, p, round, i);
    }
  }
  __threadfence_system();
  __syncthreads();
  const int warp = static_cast<int>(threadIdx.x) / 32;
  if (warp < world && warp != rank) {
    t.put(ncclCoopWarp{}, l.dst + static_cast<unsigned long long>(rank) * kChunk,
          l.src + static_cast<unsigned long long>(warp) * kChunk, kChunk, warp);
    __syncwarp();
    if (threadIdx.x % 32 == 0) t.signal_add(0, warp, 1);
  }
  __shared__ int timed_out;
  if (threadIdx.x == 0) {
    timed_out = 0;
    const unsigned long long want = static_cast<unsigned long long>(round) * (world - 1);
    const long long start = now_ns();
    while (t.read_signal(0) < want) {
      if (now_ns() - start > timeout_ns) {
        timed_out = 1;
        break;
      }
    }
    result[1] = timed_out;
  }
  __syncthreads();
  if (timed_out) return;
  int wrong = 0;
  for (int from = 0; from < world; ++from) {
    if (from == rank) continue;
    const unsigned int* dst = reinterpret_cast<const unsigned int*>(local + l.dst + from * kChunk);
    for (unsigned long long i = threadIdx.x; i < words; i += blockDim.x) {
      wrong += dst[i] != pattern(from, rank, round, i) ? 1 : 0;
    }
  }
  atomicAdd(result, wrong);
}

// table: every rank's window base, as LsaTransport reads it (NCCL's peer pointers, or W windows
// of one GPU for virtual ranks).
__global__ void lsa_kernel(unsigned char* const* table, int rank, int world, int round, Layout l,
                           int* result, long long timeout_ns) {
  const device::LsaTransport t(table, rank, l.signals);
  exchange(t, t.local, rank, world, round, l, result, timeout_ns);
}

__global__ void read_lsa_table(ncclWindow_t win, int world, unsigned char** table) {
  for (int r = static_cast<int>(threadIdx.x); r < world; r += static_cast<int>(blockDim.x)) {
    table[r] = device::lsa_window_base(win, r);
  }
}

__global__ void gin_kernel(ncclDevComm comm, ncclWindow_t win, int rank, int world, int round,
                           Layout l, int* result, long long timeout_ns) {
  const device::GinTransport t(comm, win);
  auto* local = static_cast<unsigned char*>(ncclGetLocalPointer(win, 0));
  exchange(t, local, rank, world, round, l, result, timeout_ns);
  t.gin.flush(ncclCoopCta{});
}

#define CHECK_CUDA(call)                                                             \
  do {                                                                               \
    const cudaError_t e_ = (call);                                                   \
    if (e_ != cudaSuccess) {                                                         \
      std::printf("[rank %d] %s: %s\n", rank, #call, cudaGetErrorString(e_));        \
      return 10;                                                                     \
    }                                                                                \
  } while (0)
#define CHECK_NCCL(call)                                                             \
  do {                                                                               \
    const ncclResult_t r_ = (call);                                                  \
    if (r_ != ncclSuccess) {                                                         \
      std::printf("[rank %d] %s: %s\n", rank, #call, ncclGetErrorString(r_));        \
      return 11;                                                                     \
    }                                                                                \
  } while (0)

enum class Kind { lsa, gin };

int run_rank(Kind kind, int rank, int world, const UniqueId& id) {
  Communicator communicator(id, rank, world, rank);
  auto nc = static_cast<ncclComm_t>(communicator.nccl_comm());
  const Layout l = layout(world);
  void* buf = nullptr;
  CHECK_NCCL(ncclMemAlloc(&buf, l.bytes));
  CHECK_CUDA(cudaMemset(buf, 0, l.bytes));
  ncclWindow_t win{};
  CHECK_NCCL(ncclCommWindowRegister(nc, buf, l.bytes, &win, NCCL_WIN_COLL_SYMMETRIC));
  ncclDevComm dev{};
  if (kind == Kind::gin) {
    ncclDevCommRequirements req;
    std::memset(&req, 0, sizeof(req));
    req.ginContextCount = 1;
    req.ginSignalCount = 1;
    const ncclResult_t r = ncclDevCommCreate(nc, &req, &dev);
    if (r != ncclSuccess || dev.ginContextCount == 0) {
      std::printf("[rank %d] GIN unavailable: %s\n", rank,
                  r != ncclSuccess ? ncclGetErrorString(r) : "the device communicator has no GIN "
                                                             "context (no GIN-capable network)");
      return kSkip;
    }
  }
  unsigned char** table = nullptr;
  CHECK_CUDA(cudaMalloc(&table, sizeof(unsigned char*) * world));
  read_lsa_table<<<1, 32>>>(win, world, table);
  CHECK_CUDA(cudaGetLastError());
  int* result = nullptr;
  CHECK_CUDA(cudaMalloc(&result, 2 * sizeof(int)));
  int failed = 0;
  for (int round = 1; round <= 2; ++round) {
    CHECK_CUDA(cudaMemset(result, 0, 2 * sizeof(int)));
    const long long timeout_ns = 5'000'000'000LL;
    if (kind == Kind::lsa) {
      lsa_kernel<<<1, 32 * world, 0>>>(table, rank, world, round, l, result, timeout_ns);
    } else {
      gin_kernel<<<1, 32 * world, 0>>>(dev, win, rank, world, round, l, result, timeout_ns);
    }
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaDeviceSynchronize());
    int host[2] = {0, 0};
    CHECK_CUDA(cudaMemcpy(host, result, sizeof(host), cudaMemcpyDeviceToHost));
    const bool ok = host[0] == 0 && host[1] == 0;
    std::printf("[rank %d/%d] %s round %d: %s (wrong words %d%s)\n", rank, world,
                kind == Kind::lsa ? "lsa" : "gin", round, ok ? "PASS" : "FAIL", host[0],
                host[1] ? ", signal wait timed out" : "");
    failed += ok ? 0 : 1;
  }
  cudaFree(result);
  cudaFree(table);
  if (kind == Kind::gin) ncclDevCommDestroy(nc, &dev);
  ncclCommWindowDeregister(nc, win);
  ncclMemFree(buf);
  return failed;
}

void run(Kind kind, int world) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < world) GTEST_SKIP() << "needs " << world << " GPUs, " << gpus << " visible";
  const std::vector<int> status = test::run_forked(
      world, 120.0, [&](int rank, const UniqueId& id) { return run_rank(kind, rank, world, id); });
  bool skipped = true;
  for (int s : status) skipped = skipped && s == kSkip;
  if (skipped) GTEST_SKIP() << "GIN is not available on this host (see the ranks' lines above)";
  for (int r = 0; r < world; ++r) EXPECT_EQ(status[r], 0) << "rank " << r;
}

// W virtual ranks on one GPU: W windows in its memory, one single-block kernel per rank on its own
// stream (they wait for each other's signals, with the bound).
void run_loopback(int world) {
  MONOMOE_REQUIRE_GPU();
  const Layout l = layout(world);
  std::vector<test::DeviceArray> windows;
  std::vector<unsigned char*> bases;
  for (int r = 0; r < world; ++r) {
    windows.emplace_back(l.bytes);
    MONOMOE_ASSERT_CUDA(cudaMemset(windows.back().get(), 0, l.bytes));
    bases.push_back(static_cast<unsigned char*>(windows.back().get()));
  }
  test::DeviceArray table(sizeof(unsigned char*) * world);
  MONOMOE_ASSERT_CUDA(cudaMemcpy(table.get(), bases.data(), table.bytes(), cudaMemcpyHostToDevice));
  test::DeviceArray results(2 * sizeof(int) * world);
  std::vector<cudaStream_t> streams(static_cast<std::size_t>(world));
  for (cudaStream_t& s : streams) {
    MONOMOE_ASSERT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  }
  for (int round = 1; round <= 2; ++round) {
    MONOMOE_ASSERT_CUDA(cudaMemset(results.get(), 0, results.bytes()));
    for (int r = 0; r < world; ++r) {
      lsa_kernel<<<1, 32 * world, 0, streams[r]>>>(
          static_cast<unsigned char* const*>(table.get()), r, world, round, l,
          static_cast<int*>(results.get()) + 2 * r, 5'000'000'000LL);
      MONOMOE_ASSERT_CUDA(cudaGetLastError());
    }
    MONOMOE_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<int> host(2 * static_cast<std::size_t>(world));
    MONOMOE_ASSERT_CUDA(
        cudaMemcpy(host.data(), results.get(), results.bytes(), cudaMemcpyDeviceToHost));
    for (int r = 0; r < world; ++r) {
      EXPECT_EQ(host[2 * r], 0) << "virtual rank " << r << " round " << round << ": wrong words";
      EXPECT_EQ(host[2 * r + 1], 0) << "virtual rank " << r << " round " << round
                                    << ": signal wait timed out";
    }
  }
  for (cudaStream_t s : streams) cudaStreamDestroy(s);
}

TEST(TransportGpu, LsaPutSignalTwoRanks) { run(Kind::lsa, 2); }
TEST(TransportGpu, LsaPutSignalFourRanks) { run(Kind::lsa, 4); }
TEST(TransportGpu, GinPutSignalTwoRanks) { run(Kind::gin, 2); }
TEST(TransportGpu, LoopbackPutSignalTwoVirtualRanks) { run_loopback(2); }
TEST(TransportGpu, LoopbackPutSignalFourVirtualRanks) { run_loopback(4); }
TEST(TransportGpu, LoopbackPutSignalEightVirtualRanks) { run_loopback(8); }

}  // namespace
}  // namespace monomoe
