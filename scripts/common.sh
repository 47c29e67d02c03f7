# Shared by scripts/run.sh and scripts/test.sh: install dependencies, configure and build.
# Picks PyTorch's NCCL when one is installed (that is the NCCL torchrun jobs load at run time),
# else the CUDA toolkit's. Override with NCCL_ROOT=... and BUILD_DIR=...; MONOMOE_CMAKE_ARGS adds
# configure flags (e.g. -DMONOMOE_BUILD_TESTS=ON).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$here/build}
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # monomoe never uses NVLink multicast

# Pure-Python build/test dependencies that setup-deps.sh put in third_party/python (nanobind, pytest).
export PYTHONPATH="$here/third_party/python${PYTHONPATH:+:$PYTHONPATH}"
"$here/scripts/setup-deps.sh"
source "$here/scripts/nccl-root.sh"
if [ -z "${NCCL_ROOT:-}" ]; then NCCL_ROOT=$(torch_nccl_root); fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$here" -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release ${NCCL_ROOT:+-DNCCL_ROOT="$NCCL_ROOT"} \
  -DPython_EXECUTABLE="$(command -v python3)" ${MONOMOE_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)"
