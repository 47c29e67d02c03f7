#!/usr/bin/env bash
# One call on a GPU machine: build against PyTorch's NCCL (pinned by rpath), run the GPU tests, the
# random-config check and the benchmark. Logs go to $OUT (or ./out) as gpu-*.log and bench.json;
# at the end every log is also packed into $OUT/logs.tar.gz (the device tool brings back only a
# few files of $OUT, in name order: gpu-summary.log, bench.json and the archive come first).
# Usage: scripts/gpu-check.sh [all|quick|bench]   (quick: tests + check; bench: bench (+ sweep) only)
# With 2 or more GPUs and the Python package built, it also runs examples/torch_moe_block.py under
# torchrun on 2 GPUs.
# Env: GPUS (bench/check GPUs, default all visible), CASES (check cases, default 24), VIRTUAL
#      (virtual ranks of the one-GPU multi-rank check, default 4; 0 skips it), BENCH_ARGS
#      (extra bench flags, e.g. --trace), SWEEP (tokens|experts|gpus: also run a sweep), TESTS
#      (ctest -R regex to run a subset), EXCLUDE (ctest -E regex, e.g. 'python.gpu|StoppedWorker'
#      to save ~110 s), TEST_TIMEOUT (per test, default 150 s), COMMIT (for logs),
#      EXTRA_BENCH (more bench runs after the main one, ';'-separated flag sets, e.g.
#      "--experts 128 --tokens 16384;--dtype fp32"; a set with its own --gpus keeps it; logs
#      gpu-bench-extra-N.log), SOAK (calls of
#      `monomoe soak` on the GPUS after the check; unset: no soak; log gpu-soak.log), PIP (1: also
#      `pip install --no-build-isolation` the package into <build dir>/pip, as a user would, and run
#      the GPU pytest suite against that install; log gpu-pip.log), GPU_BUILD_DIR (the build
#      directory, default ./build-gpu; e.g. /tmp/ab-build-<variant> after `scripts/ab.sh run` in the
#      same call, whose kernels are then not compiled again: run from ab/<variant>), PROBE (1:
#      also run the fp8 warp-specialized GEMM probe, bench/probes/fp8_ws_gemm.cu, after the
#      tests; log gpu-probe.log), CLUSTER_PROBE (1: also run bench/probes/cluster_coop.cu, whether
#      a cooperative launch of one block per SM can run in 2-CTA clusters; log
#      gpu-cluster-probe.log).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
OUT=${OUT:-$here/out}
mkdir -p "$OUT"
# Everything in one archive whatever way the script ends; the single logs move into it.
# (find, not `ls *.log *.csv`: under pipefail a glob with no match, e.g. no CSV, failed the list
# and nothing was packed.)
pack_logs() {
  (cd "$OUT" && find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.csv' \) \
     ! -name gpu-summary.log -printf '%f\n' > .packed &&
     [ -s .packed ] && tar -czf logs.tar.gz -T .packed && xargs rm -f < .packed; rm -f .packed)
}
trap pack_logs EXIT
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
# nanobind, pytest and scikit-build-core carried in third_party/python (scripts/setup-deps.sh)
export PYTHONPATH=$here/third_party/python${PYTHONPATH:+:$PYTHONPATH}
source "$here/scripts/nccl-root.sh"
W=${NCCL_ROOT:-$(torch_nccl_root)}
echo "== $(date -u +%FT%TZ) commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)} NCCL_ROOT=$W" | tee "$OUT/gpu-summary.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu-summary.log"
[ -f third_party/cutlass/include/cute/tensor.hpp ] || { echo "third_party/ missing: carry it" >&2; exit 3; }
export NCCL_ROOT=$W
t0=$(date +%s)
GB=${GPU_BUILD_DIR:-$here/build-gpu}
# Tests and tools ON explicitly: a directory that ab.sh configured without tests keeps its cache.
(BUILD_DIR=$GB MONOMOE_CMAKE_ARGS="-DMONOMOE_BUILD_TESTS=ON -DMONOMOE_BUILD_TOOLS=ON"
 source scripts/common.sh) > "$OUT/gpu-build.log" 2>&1
rc=$?
echo "build rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu-summary.log"
if [ $rc -ne 0 ]; then grep -E "error|Error" "$OUT/gpu-build.log" | head -40; exit $rc; fi
ldd "$GB"/libmonomoe.so 2>/dev/null | grep -i nccl | tee -a "$OUT/gpu-summary.log"
if ls "$GB"/python/monomoe/_C*.so >/dev/null 2>&1; then
  echo "python package built: $GB/python (ctest python.gpu runs its GPU tests)" | tee -a "$OUT/gpu-summary.log"
else
  echo "python package NOT built (no nanobind for $(command -v python3)): python tests skipped" | tee -a "$OUT/gpu-summary.log"
fi
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
mm=$GB/tools/monomoe
if [ "${1:-all}" != bench ]; then
(cd "$GB" && ctest -L gpu ${TESTS:+-R "$TESTS"} ${EXCLUDE:+-E "$EXCLUDE"} --output-on-failure --timeout ${TEST_TIMEOUT:-150}) > "$OUT/gpu-tests.log" 2>&1
echo "gpu tests rc=$?: $(grep -E 'tests passed|tests failed' "$OUT/gpu-tests.log")" | tee -a "$OUT/gpu-summary.log"
grep -E "FAILED|Failure|PASS|FAIL|Expected|Which is|error|killed worker|SKIPPED" "$OUT/gpu-tests.log" | head -80
timeout 200 $mm check --gpus $GPUS --cases ${CASES:-24} > "$OUT/gpu-check.log" 2>&1
echo "check --gpus $GPUS rc=$?: $(tail -1 "$OUT/gpu-check.log")" | tee -a "$OUT/gpu-summary.log"
grep FAIL "$OUT/gpu-check.log" | head -10
# The multi-rank path on one GPU (virtual ranks), whatever the machine has: every kernel change is
# checked there too (the ctest run above already had the LayerVirtualRanks tests).
if [ "${VIRTUAL:-4}" != 0 ]; then
  timeout 300 $mm check --virtual-ranks ${VIRTUAL:-4} --cases ${CASES:-24} > "$OUT/gpu-check-virtual.log" 2>&1
  echo "check --virtual-ranks ${VIRTUAL:-4} rc=$?: $(tail -1 "$OUT/gpu-check-virtual.log")" | tee -a "$OUT/gpu-summary.log"
  grep FAIL "$OUT/gpu-check-virtual.log" | head -10
fi
if [ -n "${SOAK:-}" ]; then
  timeout 500 $mm soak --gpus $GPUS --calls "$SOAK" > "$OUT/gpu-soak.log" 2>&1
  echo "soak --gpus $GPUS --calls $SOAK rc=$?" | tee -a "$OUT/gpu-summary.log"
  tail -5 "$OUT/gpu-soak.log" | tee -a "$OUT/gpu-summary.log"
fi
if [ "$GPUS" -ge 2 ] && ls "$GB"/python/monomoe/_C*.so >/dev/null 2>&1; then
  # The PyTorch example under torchrun on 2 GPUs (its latency next to the plain PyTorch block).
  PYTHONPATH=$GB/python timeout 300 torchrun --nproc-per-node 2 examples/torch_moe_block.py \
    > "$OUT/gpu-torch-example.log" 2>&1
  echo "torchrun examples/torch_moe_block.py rc=$?: $(grep 'block with' "$OUT/gpu-torch-example.log")" | tee -a "$OUT/gpu-summary.log"
fi
if [ "${PIP:-0}" = 1 ]; then
  # The package as `pip install .` builds it (scikit-build-core and nanobind from third_party/python:
  # the GPU machines have no registry), then the GPU tests against that copy, not the build tree's.
  rm -rf "$GB"/pip
  { NCCL_ROOT=$W timeout 400 python3 -m pip install --no-build-isolation --no-deps --no-index \
      --target "$GB"/pip . &&
    PYTHONPATH=$GB/pip:$here/third_party/python timeout 300 python3 -m pytest -q -rs \
      -m gpu -p no:cacheprovider python/tests; } > "$OUT/gpu-pip.log" 2>&1
  echo "pip install . + pytest -m gpu rc=$?: $(tail -1 "$OUT/gpu-pip.log")" | tee -a "$OUT/gpu-summary.log"
fi
if [ "${PROBE:-0}" = 1 ]; then
  timeout 200 "$GB"/bench/fp8_ws_gemm > "$OUT/gpu-probe.log" 2>&1
  echo "probe fp8_ws_gemm rc=$?: $(tail -1 "$OUT/gpu-probe.log")" | tee -a "$OUT/gpu-summary.log"
  grep -E "check|TFLOP" "$OUT/gpu-probe.log" | tee -a "$OUT/gpu-summary.log"
fi
if [ "${CLUSTER_PROBE:-0}" = 1 ]; then
  timeout 60 "$GB"/bench/cluster_coop > "$OUT/gpu-cluster-probe.log" 2>&1
  echo "probe cluster_coop rc=$?" | tee -a "$OUT/gpu-summary.log"
  tee -a "$OUT/gpu-summary.log" < "$OUT/gpu-cluster-probe.log"
fi
[ "${1:-all}" = quick ] && exit 0
fi
timeout 200 $mm bench --gpus $GPUS --json "$OUT/bench.json" ${BENCH_ARGS:-} > "$OUT/gpu-bench.log" 2>&1
echo "bench --gpus $GPUS ${BENCH_ARGS:-} rc=$?" | tee -a "$OUT/gpu-summary.log"
grep -E "correctness|FAILED" "$OUT/gpu-bench.log" | tee -a "$OUT/gpu-summary.log"
tail -12 "$OUT/gpu-bench.log" | tee -a "$OUT/gpu-summary.log"
if [ -n "${EXTRA_BENCH:-}" ]; then
  IFS=';' read -ra extra <<< "$EXTRA_BENCH"
  for i in "${!extra[@]}"; do
    g="--gpus $GPUS"; [[ " ${extra[$i]} " == *" --gpus "* ]] && g=
    timeout 300 $mm bench $g ${extra[$i]} > "$OUT/gpu-bench-extra-$i.log" 2>&1
    echo "bench $g ${extra[$i]} rc=$?" | tee -a "$OUT/gpu-summary.log"
    tail -7 "$OUT/gpu-bench-extra-$i.log" | tee -a "$OUT/gpu-summary.log"
  done
fi
if [ -n "${SWEEP:-}" ]; then
  timeout 300 $mm bench --sweep "$SWEEP" --csv "$OUT/sweep-$SWEEP.csv" --plot "$OUT/sweep-$SWEEP.png" \
    ${BENCH_ARGS:-} > "$OUT/gpu-sweep.log" 2>&1
  echo "sweep $SWEEP rc=$?" | tee -a "$OUT/gpu-summary.log"
  cat "$OUT/sweep-$SWEEP.csv" | tee -a "$OUT/gpu-summary.log"
fi
