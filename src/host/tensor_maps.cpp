#include "host/tensor_maps.hpp"

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <cuda_runtime_api.h>

#include <string>

#include "host/check.hpp"
#include "monomoe/error.hpp"

namespace monomoe::detail {

namespace {

// cuTensorMapEncodeTiled is a driver function: fetched through the runtime, so that the library
// does not link libcuda itself.
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    MONOMOE_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                  cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || f == nullptr) {
      throw CudaError("the CUDA driver has no cuTensorMapEncodeTiled (needs a CUDA 12 driver)");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

}  // namespace

CUtensorMap tile_tensor_map(const void* base, std::int64_t count, std::int64_t rows,
                            std::int64_t cols, std::int64_t box_rows, DType dtype, const char* what,
                            std::int64_t pitch) {
  const auto elem = static_cast<cuuint64_t>(weight_element_bytes(dtype));
  const CUtensorMapDataType type = dtype == DType::bf16  ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                   : dtype == DType::fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                                         : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                              static_cast<cuuint64_t>(count)};
  const cuuint64_t row = static_cast<cuuint64_t>(pitch > 0 ? pitch : cols) * elem;
  const cuuint64_t strides[2] = {row, row * dims[1]};  // bytes, dims 1 and 2
  const cuuint32_t box[3] = {static_cast<cuuint32_t>(128 / elem), static_cast<cuuint32_t>(box_rows),
                             1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  CUtensorMap map{};
  const CUresult r =
      encode_tiled()(&map, type, 3, const_cast<void*>(base), dims, strides, box, elem_strides,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    throw ConfigError(std::string(what) + ": cuTensorMapEncodeTiled refused the tensor [" +
                      std::to_string(count) + ", " + std::to_string(rows) + ", " +
                      std::to_string(cols) + "] (CUresult " + std::to_string(static_cast<int>(r)) +
                      "); the pointer must be 16-byte aligned");
  }
  return map;
}

}  // namespace monomoe::detail
