// Dispatch of the host entry points (launch.hpp) to the kernels of a weight layout. The kernels
// themselves are compiled in instances_in_out.cu and instances_out_in.cu.
#include <type_traits>

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
// f(P{}) for the precision P of `dtype` and `layout` (the precisions are empty tag types).
// fp8 exists with [out, in] weights only (LayerConfig::validate): its tiles answer for both
// layouts.
template <class F>
auto with_precision(DType dtype, WeightLayout layout, F&& f) {
  const auto of_layout = [&](auto kmajor) {
    constexpr bool K = decltype(kmajor)::value;
    switch (dtype) {
      case DType::bf16: return f(PrecBf16<K>{});
      case DType::tf32: return f(PrecTf32<K>{});
      case DType::fp32: break;
      case DType::fp8: return f(PrecFp8{});
    }
    return f(PrecFp32<K>{});
  };
  return layout == WeightLayout::out_in ? of_layout(std::true_type{})
                                        : of_layout(std::false_type{});
}
}  // namespace

int expert_tile_cols(DType dtype, WeightLayout layout) {
  return with_precision(dtype, layout, [](auto p) { return decltype(p)::kExpertBN; });
}

bool gemm1_by_tma(DType dtype, WeightLayout layout) {
  return with_precision(dtype, layout, [](auto p) {
    using T = ExpertTiles<decltype(p)>;
    return StageLoads<T, T::kExpertBN>::kTmaCapable;
  });
}

bool gemm0_rows_by_tma(DType dtype, WeightLayout layout) {
  return with_precision(dtype, layout, [](auto p) {
    using T = ExpertTiles<decltype(p)>;
    return StageLoads<T, T::kExpertBN>::kTmaCapable;
  });
}

cudaError_t launch_forward(DType dtype, WeightLayout layout, const Params& params, int grid,
                           cudaStream_t stream) {
  return layout == WeightLayout::out_in ? Instances<true>::launch(dtype, params, grid, stream)
                                        : Instances<false>::launch(dtype, params, grid, stream);
}

}  // namespace monomoe::device
