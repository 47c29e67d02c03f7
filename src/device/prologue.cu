// What every forward() enqueues before the persistent kernel, as ONE launch (call_prologue): clear
// the call's control words, refresh the padded copy of the gate, and advance the call counter. Each
// of these had been its own stream operation (two memsets, a 2D copy and a 2D memset, a one-thread
// kernel): up to five enqueues per call, a cost that shows at a few tokens per call, where the
// persistent kernel itself takes tens of microseconds.
//
// The epoch (the call counter) lives on the device, one for all the layers of a Communicator (they
// share it with their workspace, host/workspace.hpp): every forward() advances it by one on its
// stream just before the persistent kernel, which reads it as the call's epoch (device/params.cuh).
// Keeping the count on the device, not in a kernel argument, is what lets a CUDA graph captured
// from one forward() replay as a new call each time.
//
// Why a kernel before the launch and not the persistent kernel's first block: every block of the
// persistent kernel reads the epoch and the control words (task heads, flags, the grid barrier's
// counter), some of them at their start; values written before the launch are visible to all of
// them through stream (or graph edge) order, with no ordering inside the launch to get right.
//
// Why the epoch never wraps: it is 64-bit, and heads carry it shifted by 2 (2^62 calls: 146,000
// years at one per microsecond). Earlier calls' task heads and window flags hold smaller epochs, so
// nothing has to be cleared when the count would overflow, and ranks need not agree on when to
// clear: peers stay in lockstep because each rank makes the same calls, one advance each.
#include <algorithm>
#include <cstdint>

#include "device/launch.hpp"

namespace monomoe::device {

namespace {

// dst[i] = 0 for i < n units of T; grid-strided.
template <class T>
__device__ __forceinline__ void zero_units(T* dst, std::size_t n, std::size_t tid,
                                           std::size_t threads) {
  for (std::size_t i = tid; i < n; i += threads) dst[i] = T{};
}

// rows x dst_pitch bytes of dst: the first row_bytes of each row from src (pitch src_pitch), the
// rest zeros; in units of T (every size and both pointers are multiples of sizeof(T)).
template <class T>
__device__ __forceinline__ void copy_padded(const CallPrologue::GateCopy& g, std::size_t tid,
                                            std::size_t threads) {
  const std::size_t u = sizeof(T);
  const std::size_t row_units = g.dst_pitch / u;
  const std::size_t copy_units = g.row_bytes / u;
  const std::size_t n = g.rows * row_units;
  const auto* src = static_cast<const unsigned char*>(g.src);
  auto* dst = static_cast<T*>(g.dst);
  for (std::size_t i = tid; i < n; i += threads) {
    const std::size_t r = i / row_units;
    const std::size_t c = i - r * row_units;
    dst[i] = c < copy_units ? *reinterpret_cast<const T*>(src + r * g.src_pitch + c * u) : T{};
  }
}

__global__ void call_prologue_kernel(const __grid_constant__ CallPrologue a) {
  const std::size_t tid = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  const std::size_t threads = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  if (a.epoch && tid == 0) *a.epoch += 1;
  for (const auto& z : a.zero) {
    if (z.bytes == 0) continue;
    if (z.bytes % 16 == 0 && reinterpret_cast<std::uintptr_t>(z.ptr) % 16 == 0) {
      zero_units(static_cast<uint4*>(z.ptr), z.bytes / 16, tid, threads);
    } else {  // control words are 4-byte multiples (host: CallPrologue::add_zero checks)
      zero_units(static_cast<unsigned int*>(z.ptr), z.bytes / 4, tid, threads);
    }
  }
  const CallPrologue::GateCopy& g = a.gate;
  if (g.rows == 0) return;
  const std::uintptr_t all = reinterpret_cast<std::uintptr_t>(g.src) |
                             reinterpret_cast<std::uintptr_t>(g.dst) | g.src_pitch | g.dst_pitch |
                             g.row_bytes;
  if (all % 16 == 0) {
    copy_padded<uint4>(g, tid, threads);
  } else if (all % 4 == 0) {
    copy_padded<unsigned int>(g, tid, threads);
  } else {
    copy_padded<unsigned short>(g, tid, threads);  // bf16 rows of an odd expert count
  }
}

}  // namespace

cudaError_t call_prologue(const CallPrologue& a, cudaStream_t stream) {
  // One 16-byte unit of the gate's copy per thread, up to kMaxBlocks blocks (about one per SM of a
  // Hopper GPU: a few MB of gate copy in one short pass); at least one block for the epoch and the
  // control words.
  constexpr std::size_t kThreadsPerBlock = 256, kMaxBlocks = 132;
  const std::size_t units = a.gate.rows * a.gate.dst_pitch / 16;
  const unsigned int blocks = static_cast<unsigned int>(
      std::min(kMaxBlocks, std::max<std::size_t>(1, units / kThreadsPerBlock)));
  CallPrologue copy = a;
  void* args[] = {&copy};
  return cudaLaunchKernel(reinterpret_cast<const void*>(&call_prologue_kernel), dim3(blocks),
                          dim3(kThreadsPerBlock), args, 0, stream);
}

}  // namespace monomoe::device
