#!/usr/bin/env bash
# The GPU pytest suite under torchrun on 2 GPUs (ctest python.gpu.torchrun2). Exit 77 (skipped)
# where fewer than 2 GPUs are visible or torchrun is missing.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-python3}
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$gpus" -lt 2 ]; then echo "SKIPPED: needs 2 GPUs, $gpus visible"; exit 77; fi
if ! "$python" -c "import torch.distributed.run" >/dev/null 2>&1; then
  echo "SKIPPED: torch.distributed.run (torchrun) is not importable"; exit 77
fi
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
exec timeout 500 "$python" -m torch.distributed.run --nproc-per-node 2 -m pytest -q -rs -m gpu \
  -p no:cacheprovider "$here"
