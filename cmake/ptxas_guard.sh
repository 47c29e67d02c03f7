#!/usr/bin/env bash
# CUDA compiler launcher of the monomoe library (CMakeLists.txt, MONOMOE_PTXAS_GUARD):
#   ptxas_guard.sh <nvcc> <arguments...>
# Runs the compile with ptxas's resource report (-Xptxas -v) and fails it when ptxas reports
# advisory C7510, "wgmma.mma_async instructions are serialized": a wgmma pipeline crossing a
# function call (the kernels sit at the inliner's budget; a few more lines once made it outline a
# GEMM task, and every k-loop then waited for each wgmma: the bf16 kernels 25% slower, perf log
# 2026-11-30 10:50). The advisory is no warning, so -Werror does not catch it. ptxas's per-function
# report lines are dropped; everything else the compile prints passes through.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: ptxas_guard.sh <compiler> [arguments...]" >&2; exit 2; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" -Xptxas -v 2> "$log"
rc=$?
grep -v -E '^ptxas info +: |^ +[0-9]+ bytes stack frame' "$log" >&2
if grep -q 'C7510' "$log"; then
  echo "error: ptxas serialized wgmma instructions (advisory C7510):" >&2
  grep 'C7510' "$log" >&2
  echo "  a function holding wgmma, or called inside a wgmma pipeline, was not inlined; mark it" >&2
  echo "  __forceinline__ or move the call (docs/hopper-pipeline.md). Configure with" >&2
  echo "  -DMONOMOE_PTXAS_GUARD=OFF to build anyway." >&2
  exit 1
fi
exit $rc
