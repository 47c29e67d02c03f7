// Dispatch of the host entry points (launch.hpp) to the kernels of a weight layout. The kernels
// themselves are compiled in instances_in_out.cu and instances_out_in.cu.
#include "device/gemm/stage_loads.cuh"
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

namespace {
template <bool KMajorB>
int expert_tile_cols(DType dtype) {
  switch (dtype) {
    case DType::bf16: return PrecBf16<KMajorB>::kExpertBN;
    case DType::tf32: return PrecTf32<KMajorB>::kExpertBN;
    case DType::fp32: return PrecFp32<KMajorB>::kExpertBN;
  }
  return 0;
}
}  // namespace

int expert_tile_cols(DType dtype, WeightLayout layout) {
  return layout == WeightLayout::out_in ? expert_tile_cols<true>(dtype)
                                        : expert_tile_cols<false>(dtype);
}

namespace {
template <class P>
constexpr bool by_tma() {
  return StageLoads<P, P::kExpertBN>::kTmaCapable;
}
template <bool KMajorB>
bool gemm1_by_tma(DType dtype) {
  switch (dtype) {
    case DType::bf16: return by_tma<PrecBf16<KMajorB>>();
    case DType::tf32: return by_tma<PrecTf32<KMajorB>>();
    case DType::fp32: return by_tma<PrecFp32<KMajorB>>();
  }
  return false;
}
}  // namespace

bool gemm1_by_tma(DType dtype, WeightLayout layout) {
  return layout == WeightLayout::out_in ? gemm1_by_tma<true>(dtype) : gemm1_by_tma<false>(dtype);
}

cudaError_t launch_forward(DType dtype, WeightLayout layout, const Params& params, int grid,
                           cudaStream_t stream) {
  return layout == WeightLayout::out_in ? Instances<true>::launch(dtype, params, grid, stream)
                                        : Instances<false>::launch(dtype, params, grid, stream);
}

}  // namespace monomoe::device
