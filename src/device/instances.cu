// Dispatch of the host entry points (launch.hpp) to the kernels of a weight layout. The kernels
// themselves are compiled in instances_in_out.cu and instances_out_in.cu.
#include "device/gemm/precision.cuh"
#include "device/launch.hpp"

namespace monomoe::device {

int forward_smem_bytes(DType dtype, WeightLayout layout) {
  return layout == WeightLayout::out_in ? Instances<true>::smem_bytes(dtype)
                                        : Instances<false>::smem_bytes(dtype);
}

int forward_blocks_per_sm(DType dtype, WeightLayout layout) {
  return layout == WeightLayout::out_in ? Instances<true>::blocks_per_sm(dtype)
                                        : Instances<false>::blocks_per_sm(dtype);
}

int expert_tile_cols(DType dtype) {
  switch (dtype) {
    case DType::bf16: return PrecBf16<false>::kExpertBN;
    case DType::tf32: return PrecTf32<false>::kExpertBN;
    case DType::fp32: return PrecFp32<false>::kExpertBN;
  }
  return 0;
}

cudaError_t launch_forward(DType dtype, WeightLayout layout, const Params& params, int grid,
                           cudaStream_t stream) {
  return layout == WeightLayout::out_in ? Instances<true>::launch(dtype, params, grid, stream)
                                        : Instances<false>::launch(dtype, params, grid, stream);
}

}  // namespace monomoe::device
