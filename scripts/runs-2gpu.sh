#!/usr/bin/env bash
# Issue 19's 2-GPU runs that need only the CLI, in one device call: the straggler delays, the soak,
# issue 10's four shapes, 2-GPU compute-sanitizer memcheck, the token sweep. Each run has its own
# time bound; logs in $OUT (or ./out)/r2-logs.tar.gz (r2-*.log, the sweep's CSV and plot), a one-line result per run on stdout.
# Env: ONLY (space-separated subset of: stragglers soak shapes memcheck sweep; default all),
#      CALLS (soak calls, default 10000).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
OUT=${OUT:-$here/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
export PYTHONPATH=$here/third_party/python${PYTHONPATH:+:$PYTHONPATH}
source scripts/nccl-root.sh
export NCCL_ROOT=${NCCL_ROOT:-$(torch_nccl_root)}
GB=${GPU_BUILD_DIR:-$here/build-gpu}
t0=$(date +%s)
(BUILD_DIR=$GB MONOMOE_CMAKE_ARGS="-DMONOMOE_BUILD_TESTS=OFF -DMONOMOE_BUILD_TOOLS=ON"
 source scripts/common.sh) > "$OUT/r2-build.log" 2>&1 || { tail -30 "$OUT/r2-build.log"; exit 3; }
echo "build $(( $(date +%s) - t0 )) s"
mm=$GB/tools/monomoe
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
one() {  # one <log name> <seconds> <args...>: run, print the result lines
  local name=$1 limit=$2
  shift 2
  local ts=$(date +%s)
  timeout "$limit" "$@" > "$OUT/r2-$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(( $(date +%s) - ts )) s: ${*:2}"
  grep -E "monomoe|baseline|floor|PASS|FAIL|mismatch|latency|error|ERROR|calls|timed out|sweep" \
    "$OUT/r2-$name.log" | grep -v "^#" | tail -12
}
if want stragglers; then
  for d in 0 100 1000 10000; do
    one "delay-$d" 60 "$mm" bench --gpus 2 --no-ceiling --delay-rank 1 --delay-us "$d"
  done
fi
want soak && one soak 200 "$mm" soak --gpus 2 --calls "${CALLS:-10000}"
if want shapes; then
  i=0
  for s in "--hidden 4096 --ffn 1536 --experts 128 --topk 8" \
           "--hidden 6144 --ffn 1024 --experts 160 --topk 6 --act swiglu" \
           "--hidden 2048 --ffn 5632 --experts 16 --topk 2 --act swiglu" \
           "--hidden 8192 --ffn 2048 --experts 64 --topk 4 --tokens 4096"; do
    i=$((i + 1))
    # shellcheck disable=SC2086  # a shape is a list of flags
    one "shape-$i" 90 "$mm" bench --gpus 2 --no-ceiling $s
  done
fi
if want memcheck; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for dtype in bf16 tf32; do
    one "memcheck-$dtype" 120 "$cs" --tool memcheck --report-api-errors no --target-processes all \
      --error-exitcode 99 "$mm" bench --gpus 2 --tokens 300 --hidden 256 --ffn 256 --experts 16 \
      --topk 2 --timeout 300 --dtype "$dtype" --no-baseline --no-ceiling --no-floor --warmup 0 --iters 1
  done
fi
want sweep && one sweep 150 "$mm" bench --gpus 2 --no-ceiling --sweep tokens --csv "$OUT/r2-sweep.csv" --plot "$OUT/r2-sweep.png"
echo "total $(( $(date +%s) - t0 )) s"
# the device tool brings back only a few files: everything in one archive
(cd "$OUT" && ls r2-*.log r2-*.csv r2-*.png 2>/dev/null > .r2 && tar -czf r2-logs.tar.gz -T .r2 && xargs rm -f < .r2; rm -f .r2)
