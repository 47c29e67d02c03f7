// The kernel's instantiations, all of them: one per precision. Activation, shapes, expert count and
// top-k are runtime values, so this list stays at three.
#include "device/kernel.cuh"
#include "device/launch.hpp"

namespace monomoe::device {

namespace {

template <class P>
int smem_bytes() {
  return kernel_smem_bytes<P>();
}

template <class P>
int blocks_per_sm() {
  if (cudaFuncSetAttribute(moe_forward_kernel<P>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           smem_bytes<P>()) != cudaSuccess) {
    return 0;
  }
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, moe_forward_kernel<P>, kThreads,
                                                    smem_bytes<P>()) != cudaSuccess) {
    return 0;
  }
  return blocks;
}

template <class P>
cudaError_t launch(const Params& params, int grid, cudaStream_t stream) {
  Params copy = params;
  void* args[] = {&copy};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&moe_forward_kernel<P>),
                                     dim3(grid), dim3(kThreads), args,
                                     static_cast<size_t>(smem_bytes<P>()), stream);
}

}  // namespace

int forward_smem_bytes(DType dtype) {
  switch (dtype) {
    case DType::bf16: return smem_bytes<PrecBf16>();
    case DType::tf32: return smem_bytes<PrecTf32>();
    case DType::fp32: return smem_bytes<PrecFp32>();
  }
  return 0;
}

int expert_tile_cols(DType dtype) {
  switch (dtype) {
    case DType::bf16: return PrecBf16::kExpertBN;
    case DType::tf32: return PrecTf32::kExpertBN;
    case DType::fp32: return PrecFp32::kExpertBN;
  }
  return 0;
}

int forward_blocks_per_sm(DType dtype) {
  switch (dtype) {
    case DType::bf16: return blocks_per_sm<PrecBf16>();
    case DType::tf32: return blocks_per_sm<PrecTf32>();
    case DType::fp32: return blocks_per_sm<PrecFp32>();
  }
  return 0;
}

cudaError_t launch_forward(DType dtype, const Params& params, int grid, cudaStream_t stream) {
  switch (dtype) {
    case DType::bf16: return launch<PrecBf16>(params, grid, stream);
    case DType::tf32: return launch<PrecTf32>(params, grid, stream);
    case DType::fp32: return launch<PrecFp32>(params, grid, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace monomoe::device
