#!/usr/bin/env bash
# Fresh machine -> dependencies, build, the main job: the benchmark with the embedded default
# config on all visible GPUs. Without a GPU: `info` and a small CPU reference run instead.
# Extra arguments go to `monomoe bench` (see `monomoe bench --help`).
source "$(dirname "$0")/common.sh"
cli="$BUILD_DIR/tools/monomoe"
"$cli" info
if nvidia-smi -L >/dev/null 2>&1; then
  "$cli" bench --gpus all "$@"
else
  echo
  echo "No GPU visible: running a small CPU reference instead. The GPU benchmark needs a GPU."
  "$cli" reference --tokens 512 --hidden 256 --ffn 512 --experts 8 --topk 2
fi
