// Host-side entry points of the persistent kernel. Its instantiations, all of them: one per
// (precision, weight layout) = 3 x 2, and fp8 (PrecFp8, [out, in] weights only): 7, compiled in two
// translation units, one per layout (instances_in_out.cu, instances_out_in.cu, from
// instances.cuh), so that a build compiles them in parallel. Activation, shapes, expert count and
// top-k are runtime values.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "device/params.cuh"
#include "monomoe/config.hpp"

namespace monomoe::device {

// Dynamic shared memory the kernel of `dtype` needs per block.
int forward_smem_bytes(DType dtype, WeightLayout layout);
// Sets the kernel's shared-memory limit and returns how many blocks fit on one SM (0 if none).
int forward_blocks_per_sm(DType dtype, WeightLayout layout);
// Output columns of one expert GEMM task (the kernel's BN for that precision and weight layout).
int expert_tile_cols(DType dtype, WeightLayout layout);
// Whether GEMM1 loads its operands by TMA (device/gemm/stage_loads.cuh, kTmaCapable): the host
// then encodes the tensor maps of w2 and hidden_act (Params::tma_w2, tma_h).
bool gemm1_by_tma(DType dtype, WeightLayout layout);
// Whether GEMM0 can read its A rows by TMA from an expert-ordered copy of x (Params::x_rows): a
// kernel whose GEMM1 reads by TMA (tf32's copy is rounded on the way: route.cuh, fill_x_rows).
bool gemm0_rows_by_tma(DType dtype, WeightLayout layout);
// Cooperative launch of `grid` blocks: the runtime refuses a grid that cannot be co-resident.
// Launched with cudaLaunchKernelEx and the cooperative attribute, which stream capture records as a
// cooperative kernel node: forward() can be captured into a CUDA graph.
cudaError_t launch_forward(DType dtype, WeightLayout layout, const Params& params, int grid,
                           cudaStream_t stream);
// What a forward() enqueues before the persistent kernel, done by one small kernel (prologue.cu):
// clear the control words, refresh the gate's padded copy, advance the epoch.
struct CallPrologue {
  struct Zero {
    void* ptr = nullptr;
    std::size_t bytes = 0;  // a multiple of 4
  };
  // rows x dst_pitch bytes at dst: the first row_bytes of each row from src (row pitch
  // src_pitch), the rest of the row zeros. rows == 0: no copy.
  struct GateCopy {
    const void* src = nullptr;
    void* dst = nullptr;
    std::size_t rows = 0, row_bytes = 0, src_pitch = 0, dst_pitch = 0;
  };
  unsigned long long* epoch = nullptr;  // += 1 (Params::epoch); nullptr: leave it
  Zero zero[2];                         // the layer's control words; the window's reset words
  GateCopy gate;
};
// One launch on `stream`, just before launch_forward (prologue.cu says why it is a kernel and why
// the epoch never wraps).
cudaError_t call_prologue(const CallPrologue& prologue, cudaStream_t stream);

// The kernels of one weight layout (KMajorB: [out, in]), defined in instances.cuh.
template <bool KMajorB>
struct Instances {
  static int smem_bytes(DType dtype);
  static int blocks_per_sm(DType dtype);
  static cudaError_t launch(DType dtype, const Params& params, int grid, cudaStream_t stream);
};

}  // namespace monomoe::device
