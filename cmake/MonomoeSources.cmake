# Sources of the GPU library. The persistent kernel is instantiated only in
# src/device/instances_in_out.cu and instances_out_in.cu (one per dtype and weight layout, listed in
# src/device/launch.hpp): CUDA templates compile slowly, so keep that list short.
set(MONOMOE_GPU_SOURCES
  ${PROJECT_SOURCE_DIR}/src/host/communicator.cpp
  ${PROJECT_SOURCE_DIR}/src/host/layer.cu
  ${PROJECT_SOURCE_DIR}/src/host/shared_workspace.cpp
  ${PROJECT_SOURCE_DIR}/src/host/tensor_maps.cpp
  ${PROJECT_SOURCE_DIR}/src/host/window.cu
  ${PROJECT_SOURCE_DIR}/src/host/virtual_ranks.cpp
  ${PROJECT_SOURCE_DIR}/src/device/instances.cu
  ${PROJECT_SOURCE_DIR}/src/device/prologue.cu
  ${PROJECT_SOURCE_DIR}/src/device/instances_in_out.cu
  ${PROJECT_SOURCE_DIR}/src/device/instances_out_in.cu
  ${PROJECT_SOURCE_DIR}/src/baseline/baseline.cu
  ${PROJECT_SOURCE_DIR}/src/baseline/grouped_gemm.cu)
