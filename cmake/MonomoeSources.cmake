# Sources of the GPU library. The persistent kernel is instantiated only in
# src/device/instances.cu (one instantiation per dtype; see the list there): CUDA templates compile
# slowly, so keep that list short.
set(MONOMOE_GPU_SOURCES
  ${PROJECT_SOURCE_DIR}/src/host/communicator.cpp
  ${PROJECT_SOURCE_DIR}/src/host/layer.cu
  ${PROJECT_SOURCE_DIR}/src/host/window.cu
  ${PROJECT_SOURCE_DIR}/src/host/virtual_ranks.cpp
  ${PROJECT_SOURCE_DIR}/src/device/instances.cu
  ${PROJECT_SOURCE_DIR}/src/baseline/baseline.cu)
