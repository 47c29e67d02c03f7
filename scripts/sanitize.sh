#!/usr/bin/env bash
# compute-sanitizer over small configurations of every precision and activation (reliability):
# memcheck, racecheck and synccheck on one GPU, and memcheck over 2 GPUs (forked workers) where
# two are visible. A run passes when the tool reports 0 errors and the layer's output matches the
# CPU reference (the program checks it). Every run gets a long kernel wait bound: under the tools
# the blocks run far slower and the kernel's bounded waits must not fire.
#
# MODE=tests (default): per tool ONE process of the one-GPU layer tests that cover every precision
# and activation in both weight layouts (LayerGpu.EveryPrecisionAndActivation, .OutInWeightLayout,
# .Tf32OutInWgmmaShapes, .PoisonedRowIsIsolated: 40-odd layers), so the tool's and NCCL's start-up
# is paid three times, not forty (about 13 s per process measured 2026-11-29). MODE=bench: one
# `monomoe bench` process per (precision, activation, tool) instead, subsets through DTYPES
# (default "bf16 tf32 fp32"), ACTS (default "relu gelu silu swiglu").
# Usage: scripts/sanitize.sh [BUILD_DIR]   (default: build-gpu, else build). Logs: $OUT or ./out.
# Env: MODE, TOOLS (default "memcheck racecheck synccheck"), FILTER (MODE=tests: another gtest
# filter), MULTI (0: skip the 2-GPU memcheck runs).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$([ -d "$here/build-gpu" ] && echo "$here/build-gpu" || echo "$here/build")}
OUT=${OUT:-$here/out}
mkdir -p "$OUT"
log="$OUT/sanitize.log"
: > "$log"
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
mm="$BUILD/tools/monomoe"
cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
[ -x "$mm" ] || { echo "sanitize: no $mm (build first)" >&2; exit 2; }
[ -x "$cs" ] || { echo "sanitize: no compute-sanitizer" >&2; exit 2; }
small="--tokens 300 --hidden 256 --ffn 256 --experts 8 --topk 2 --timeout 300"
once="--no-baseline --no-ceiling --no-floor --warmup 0 --iters 1"
runs=0
failed=0
run() {  # run <tool> <what> <program> <args...>
  local tool=$1 what=$2
  shift 2
  local out
  # memcheck: device memory errors only. Its API-error reports name calls that return an error by
  # design inside NCCL's set-up (kernel-image probes, cuMemCreate of handle types the machine lacks);
  # monomoe checks every call it makes itself (host/check.hpp).
  local extra=()
  [ "$tool" = memcheck ] && extra=(--report-api-errors no)
  out=$("$cs" --tool "$tool" "${extra[@]}" --target-processes all --error-exitcode 99 --print-limit 20 \
        "$@" 2>&1)
  local rc=$?
  local summary
  summary=$(echo "$out" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -1)
  runs=$((runs + 1))
  { echo "== $tool $what: rc=$rc ${summary:-no summary}"; echo "$out" | tail -40; } >> "$log"
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    echo "FAIL $tool $what (rc=$rc) ${summary}"
  else
    echo "ok   $tool $what ${summary}"
  fi
}
if [ "${MODE:-tests}" = tests ]; then
  tests="$BUILD/tests/test_layer_gpu"
  [ -x "$tests" ] || { echo "sanitize: no $tests (build the tests)" >&2; exit 2; }
  filter=${FILTER:-LayerGpu.EveryPrecisionAndActivation:LayerGpu.OutInWeightLayout:LayerGpu.Tf32OutInWgmmaShapes:LayerGpu.PoisonedRowIsIsolated}
  export MONOMOE_TEST_TIMEOUT=300  # the tests' kernel wait bound (tests/layer_gpu_test.hpp)
  for tool in ${TOOLS:-memcheck racecheck synccheck}; do
    run "$tool" "layer tests (every precision, activation, layout)" \
      "$tests" --gtest_filter="$filter"
  done
else
  for dtype in ${DTYPES:-bf16 tf32 fp32}; do
    for act in ${ACTS:-relu gelu silu swiglu}; do
      for tool in ${TOOLS:-memcheck racecheck synccheck}; do
        run "$tool" "$dtype/$act" "$mm" bench --gpus 1 $small --dtype "$dtype" --act "$act" $once
      done
    done
  done
  run memcheck "bf16/gelu out-in" "$mm" bench --gpus 1 $small --weight-layout out-in $once
  # tf32 with out-in weights runs on wgmma, its operands stored to shared memory by st.shared.
  for tool in ${TOOLS:-memcheck racecheck synccheck}; do
    run "$tool" "tf32/swiglu out-in" "$mm" bench --gpus 1 $small --dtype tf32 --act swiglu \
      --weight-layout out-in $once
  done
fi
if [ "${MULTI:-1}" != 0 ] && [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  for dtype in bf16 tf32; do
    run memcheck "$dtype 2 GPUs" "$mm" bench --gpus 2 $small --experts 16 --dtype "$dtype" $once
  done
fi
echo "sanitize: $((runs - failed)) of $runs runs clean (logs: $log)"
[ $failed -eq 0 ]
