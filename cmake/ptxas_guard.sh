#!/usr/bin/env bash
# CUDA compiler launcher of the monomoe library (CMakeLists.txt, MONOMOE_PTXAS_GUARD):
#   ptxas_guard.sh <nvcc> <arguments...>
# Runs the compile with ptxas's resource report (-Xptxas -v) and fails it when ptxas reports
# that "wgmma.mma_async instructions are serialized", for any reason: a wgmma pipeline crossing a
# function call (advisory C7510) or too few registers for the pipeline in the function (C7512).
# The kernels sit at the inliner's budget: a few more lines once made it outline a GEMM task, and
# every k-loop then waited for each wgmma (the bf16 kernels 25% slower, perf log 2026-11-30
# 10:50); fp8's kernel ran serialized for lack of registers (C7512, which this guard did not catch
# then: perf log 2026-11-30 18:08). The advisories are no warnings, so -Werror does not catch
# them. ptxas's per-function report lines are dropped; everything else the compile prints passes
# through.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: ptxas_guard.sh <compiler> [arguments...]" >&2; exit 2; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" -Xptxas -v 2> "$log"
rc=$?
grep -v -E '^ptxas info +: |^ +[0-9]+ bytes stack frame' "$log" >&2
if grep -q -E 'C751[0-9]|wgmma.mma_async instructions are serialized' "$log"; then
  echo "error: ptxas serialized wgmma instructions:" >&2
  grep -E 'C751[0-9]|wgmma.mma_async instructions are serialized' "$log" >&2
  echo "  C7510: a function holding wgmma, or called inside a wgmma pipeline, was not" >&2
  echo "  inlined; mark it __forceinline__ or move the call (docs/hopper-pipeline.md)." >&2
  echo "  C7512: too many registers live beside the wgmma accumulators in flight." >&2
  echo "  Configure with -DMONOMOE_PTXAS_GUARD=OFF to build anyway." >&2
  exit 1
fi
exit $rc
