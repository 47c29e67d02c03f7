// Host-side entry points of the persistent kernel (defined in instances.cu).
#pragma once

#include <cuda_runtime_api.h>

#include "device/params.cuh"
#include "monomoe/config.hpp"

namespace monomoe::device {

// Dynamic shared memory the kernel of `dtype` needs per block.
int forward_smem_bytes(DType dtype);
// Sets the kernel's shared-memory limit and returns how many blocks fit on one SM (0 if none).
int forward_blocks_per_sm(DType dtype);
// Output columns of one expert GEMM task (the kernel's BN for that precision).
int expert_tile_cols(DType dtype);
// Cooperative launch of `grid` blocks: the runtime refuses a grid that cannot be co-resident.
cudaError_t launch_forward(DType dtype, const Params& params, int grid, cudaStream_t stream);

}  // namespace monomoe::device
