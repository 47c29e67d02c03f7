// The call counter on the device, one for all the layers of a Communicator (they share it with
// their workspace, host/workspace.hpp): every forward() advances it by one on its stream just
// before the persistent kernel, which reads it as the call's epoch (device/params.cuh). Keeping the
// count on the device, not in a kernel argument, is what lets a CUDA graph captured from one
// forward() replay as a new call each time.
//
// Why a separate one-thread kernel and not the persistent kernel's first block: every block of the
// persistent kernel reads the epoch (task heads, flags), some of them at their start; a value
// written before the launch is visible to all of them through stream (or graph edge) order, with no
// ordering inside the launch to get right. It costs one tiny launch per call.
//
// Why it never wraps: it is 64-bit, and heads carry it shifted by 2 (2^62 calls: 146,000 years at
// one per microsecond). Earlier calls' task heads and window flags hold smaller epochs, so nothing
// has to be cleared when the count would overflow, and ranks need not agree on when to clear:
// peers stay in lockstep because each rank makes the same calls, one advance each.
#include "device/launch.hpp"

namespace monomoe::device {

namespace {

__global__ void advance_epoch_kernel(unsigned long long* epoch) { *epoch += 1; }

}  // namespace

cudaError_t advance_epoch(unsigned long long* epoch, cudaStream_t stream) {
  void* args[] = {&epoch};
  return cudaLaunchKernel(reinterpret_cast<const void*>(&advance_epoch_kernel), dim3(1), dim3(1),
                          args, 0, stream);
}

}  // namespace monomoe::device
