# CuTe/CUTLASS headers (the tile-MMA building blocks of the kernel), from the PyPI package
# nvidia-cutlass that scripts/setup-deps.sh unpacks into third_party/cutlass/include.
if(NOT EXISTS "${MONOMOE_CUTLASS_DIR}/cute/tensor.hpp")
  message(FATAL_ERROR
    "monomoe needs the CuTe headers (CUTLASS >= 4) and found none in MONOMOE_CUTLASS_DIR="
    "'${MONOMOE_CUTLASS_DIR}'.\nRun scripts/setup-deps.sh (installs nvidia-cutlass from PyPI into "
    "third_party/), or pass -DMONOMOE_CUTLASS_DIR=<folder holding cute/ and cutlass/>.")
endif()
add_library(monomoe_cute INTERFACE)
add_library(monomoe::cute ALIAS monomoe_cute)
# SYSTEM: CUTLASS headers are not held to this project's warnings-as-errors.
target_include_directories(monomoe_cute SYSTEM INTERFACE $<BUILD_INTERFACE:${MONOMOE_CUTLASS_DIR}>)
