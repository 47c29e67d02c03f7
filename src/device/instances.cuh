// The members of Instances<KMajorB> (launch.hpp): the three precisions of one weight layout, and
// fp8 with [out, in] weights.
// Included only by instances_in_out.cu and instances_out_in.cu, which instantiate it.
#pragma once

#include "device/kernel.cuh"
#include "device/launch.hpp"

namespace monomoe::device {

namespace detail {

template <class P>
int blocks_per_sm() {
  if (cudaFuncSetAttribute(moe_forward_kernel<P>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           kernel_smem_bytes<P>()) != cudaSuccess) {
    return 0;
  }
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, moe_forward_kernel<P>,
                                                    block_threads<P>(),
                                                    kernel_smem_bytes<P>()) != cudaSuccess) {
    return 0;
  }
  return blocks;
}

// Cooperative (all blocks co-resident: the grid barriers need it) through the launch attribute,
// which is documented for launches and graph nodes alike, so a captured forward() records it.
template <class P>
cudaError_t launch(const Params& params, int grid, cudaStream_t stream) {
  cudaLaunchAttribute cooperative{};
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(block_threads<P>());
  config.dynamicSmemBytes = static_cast<size_t>(kernel_smem_bytes<P>());
  config.stream = stream;
  config.attrs = &cooperative;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, moe_forward_kernel<P>, params);
}

}  // namespace detail

// sm_90's opt-in limit of shared memory per block (227 KB): every kernel's one block per SM
// (__launch_bounds__(kThreads, 1)) must fit it; blocks_per_sm() asks the runtime the same at run
// time.
inline constexpr int kMaxSmemPerBlock = 227 * 1024;

template <bool KMajorB>
int Instances<KMajorB>::smem_bytes(DType dtype) {
  static_assert(kernel_smem_bytes<PrecBf16<KMajorB>>() <= kMaxSmemPerBlock);
  static_assert(kernel_smem_bytes<PrecTf32<KMajorB>>() <= kMaxSmemPerBlock);
  static_assert(kernel_smem_bytes<PrecFp32<KMajorB>>() <= kMaxSmemPerBlock);
  static_assert(kernel_smem_bytes<PrecFp8>() <= kMaxSmemPerBlock);
  switch (dtype) {
    case DType::bf16: return kernel_smem_bytes<PrecBf16<KMajorB>>();
    case DType::tf32: return kernel_smem_bytes<PrecTf32<KMajorB>>();
    case DType::fp32: return kernel_smem_bytes<PrecFp32<KMajorB>>();
    case DType::fp8:  // [out, in] weights only (LayerConfig::validate refuses the other layout)
      if constexpr (KMajorB) return kernel_smem_bytes<PrecFp8>();
      break;
  }
  return 0;
}

template <bool KMajorB>
int Instances<KMajorB>::blocks_per_sm(DType dtype) {
  switch (dtype) {
    case DType::bf16: return detail::blocks_per_sm<PrecBf16<KMajorB>>();
    case DType::tf32: return detail::blocks_per_sm<PrecTf32<KMajorB>>();
    case DType::fp32: return detail::blocks_per_sm<PrecFp32<KMajorB>>();
    case DType::fp8:
      if constexpr (KMajorB) return detail::blocks_per_sm<PrecFp8>();
      break;
  }
  return 0;
}

template <bool KMajorB>
cudaError_t Instances<KMajorB>::launch(DType dtype, const Params& params, int grid,
                                       cudaStream_t stream) {
  switch (dtype) {
    case DType::bf16: return detail::launch<PrecBf16<KMajorB>>(params, grid, stream);
    case DType::tf32: return detail::launch<PrecTf32<KMajorB>>(params, grid, stream);
    case DType::fp32: return detail::launch<PrecFp32<KMajorB>>(params, grid, stream);
    case DType::fp8:
      if constexpr (KMajorB) return detail::launch<PrecFp8>(params, grid, stream);
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace monomoe::device
