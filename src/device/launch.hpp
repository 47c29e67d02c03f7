// Host-side entry points of the persistent kernel. Its instantiations, all of them: one per
// (precision, weight layout) = 3 x 2, compiled in two translation units, one per layout
// (instances_in_out.cu, instances_out_in.cu, from instances.cuh), so that a build compiles them
// in parallel. Activation, shapes, expert count and top-k are runtime values.
#pragma once

#include <cuda_runtime_api.h>

#include "device/params.cuh"
#include "monomoe/config.hpp"

namespace monomoe::device {

// Dynamic shared memory the kernel of `dtype` needs per block.
int forward_smem_bytes(DType dtype, WeightLayout layout);
// Sets the kernel's shared-memory limit and returns how many blocks fit on one SM (0 if none).
int forward_blocks_per_sm(DType dtype, WeightLayout layout);
// Output columns of one expert GEMM task (the kernel's BN for that precision).
int expert_tile_cols(DType dtype);
// Cooperative launch of `grid` blocks: the runtime refuses a grid that cannot be co-resident.
// Launched with cudaLaunchKernelEx and the cooperative attribute, which stream capture records as a
// cooperative kernel node: forward() can be captured into a CUDA graph.
cudaError_t launch_forward(DType dtype, WeightLayout layout, const Params& params, int grid,
                           cudaStream_t stream);
// Adds one to the epoch word (Params::epoch, one per Communicator) on `stream`: a one-thread
// kernel, enqueued just before every launch_forward (epoch.cu says why it is a kernel and why it never wraps).
cudaError_t advance_epoch(unsigned long long* epoch, cudaStream_t stream);

// The kernels of one weight layout (KMajorB: [out, in]), defined in instances.cuh.
template <bool KMajorB>
struct Instances {
  static int smem_bytes(DType dtype);
  static int blocks_per_sm(DType dtype);
  static cudaError_t launch(DType dtype, const Params& params, int grid, cudaStream_t stream);
};

}  // namespace monomoe::device
