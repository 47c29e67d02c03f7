#!/usr/bin/env bash
# Issue 19's 2-GPU runs that need only the CLI, in one device call: the straggler delays, the soak,
# issue 10's four shapes, issue 14's shared expert and its fp8 shape, 2-GPU compute-sanitizer
# memcheck (a shared expert in one run), the token sweep. Each run has its own time bound; a one-line result per run
# on stdout, the logs in $OUT (or ./out)/r2-logs.tar.gz (r2-*.log, the sweep's CSV and plot). Exit
# status 1 when a run failed (its status, a FAIL line), a straggler delay D cost more than D + 10%
# of the undelayed median (issue 13's bound), or the shared expert added more than 1.1x its FLOPs
# at the layer's own FFN rate without it (issue 14's bound).
# Env: ONLY (space-separated subset of: stragglers soak shapes shared fp8 memcheck sweep; default
#      all; fp8 alone takes minutes: its shape has 6.4 GB of weights made on the host),
#      CALLS (soak calls, default 10000), GPU_BUILD_DIR (default ./build-gpu), BUILD (0: use the
#      CLI already in GPU_BUILD_DIR, e.g. from gpu-check.sh earlier in the same call).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
OUT=${OUT:-$here/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
GB=${GPU_BUILD_DIR:-$here/build-gpu}
mm=$GB/tools/monomoe
t0=$(date +%s)
if [ "${BUILD:-1}" != 0 ]; then
  export PYTHONPATH=$here/third_party/python${PYTHONPATH:+:$PYTHONPATH}
  source scripts/nccl-root.sh
  export NCCL_ROOT=${NCCL_ROOT:-$(torch_nccl_root)}
  (BUILD_DIR=$GB MONOMOE_CMAKE_ARGS="-DMONOMOE_BUILD_TESTS=OFF -DMONOMOE_BUILD_TOOLS=ON"
   source scripts/common.sh) > "$OUT/r2-build.log" 2>&1 || { tail -30 "$OUT/r2-build.log"; exit 3; }
  echo "build $(( $(date +%s) - t0 )) s"
fi
[ -x "$mm" ] || { echo "runs-2gpu: no $mm (build first, or BUILD=1)" >&2; exit 2; }
failed=0
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
one() {  # one <log name> <seconds> <args...>: run, print the result lines
  local name=$1 limit=$2
  shift 2
  local ts=$(date +%s)
  timeout "$limit" "$@" > "$OUT/r2-$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] || grep -q "FAIL" "$OUT/r2-$name.log"; then failed=$((failed + 1)); fi
  echo "== $name rc=$rc $(( $(date +%s) - ts )) s: ${*:2}"
  grep -E "monomoe|baseline|floor|PASS|FAIL|mismatch|latency|error|ERROR|calls|timed out|sweep" \
    "$OUT/r2-$name.log" | grep -v "^#" | tail -12
}
median_of() { awk '$1 == "monomoe" && $2 ~ /^[0-9.]+$/ {print $2; exit}' "$OUT/r2-$1.log"; }
tflops_of() { awk '$1 == "monomoe" && $2 ~ /^[0-9.]+$/ {print $5; exit}' "$OUT/r2-$1.log"; }
if want stragglers; then
  for d in 0 100 1000 10000; do
    one "delay-$d" 60 "$mm" bench --gpus 2 --no-ceiling --delay-rank 1 --delay-us "$d"
  done
  base=$(median_of delay-0)
  for d in 100 1000 10000; do
    m=$(median_of "delay-$d")
    verdict=$(awk -v m="${m:-inf}" -v b="${base:-0}" -v d="$d" 'BEGIN {
      bound = d / 1000 + 1.1 * b
      printf "%s (%s ms, bound D + 10%% = %.3f)", (b > 0 && m + 0 <= bound ? "ok" : "OVER"), m, bound }')
    echo "straggler D = $d us: $verdict"
    [[ "$verdict" == ok* ]] || failed=$((failed + 1))
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
if want shared; then
  # Issue 14: a shared expert of width 2048 on the default shape (8192 tokens, hidden 2048) adds at
  # most 1.1x its own FLOPs (2 x 8192 x 2048 x 2048 x 2) at the layer's FFN rate without it.
  for g in 2 1; do
    one "shared-$g-none" 60 "$mm" bench --gpus "$g" --no-ceiling
    one "shared-$g-2048" 60 "$mm" bench --gpus "$g" --no-ceiling --shared-ffn 2048
    verdict=$(awk -v a="$(median_of "shared-$g-none")" -v b="$(median_of "shared-$g-2048")" \
                  -v r="$(tflops_of "shared-$g-none")" 'BEGIN {
      bound = r > 0 ? 1.1 * 2 * 8192 * 2048 * 2048 * 2 / (r * 1e12) * 1e3 : 0
      added = b - a
      printf "%s (+%.3f ms on %s, bound 1.1x its FLOPs at %s TFLOP/s = %.3f ms)",
             (bound > 0 && a > 0 && b > 0 && added <= bound ? "ok" : "OVER"), added, a, r, bound }')
    echo "shared expert 2048, $g GPU(s): $verdict"
    [[ "$verdict" == ok* ]] || failed=$((failed + 1))
  done
fi
if want fp8; then
  # Issue 14: --hidden 4096 --ffn 2048 --experts 256 --topk 6 --act swiglu in fp8 at 8192 and 64
  # tokens per GPU, next to bf16 with the same ([out, in]) weights. Most of each run is the host
  # making 6.4 GB of weights (and fp8's dequantized bf16 copy for the baseline): 64 sampled tokens
  # keep the float64 reference short, and each run gets 300 s.
  for t in 8192 64; do
    for d in fp8 bf16; do
      one "fp8-shape-$d-$t" 300 "$mm" bench --gpus 2 --no-ceiling --sample 64 --hidden 4096 \
        --ffn 2048 --experts 256 --topk 6 --act swiglu --weight-layout out-in --dtype "$d" \
        --tokens "$t"
    done
  done
fi
if want memcheck; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for run in "bf16" "tf32" "bf16 --shared-ffn 512"; do
    # shellcheck disable=SC2086  # a run is a dtype and maybe more flags
    one "memcheck-${run// /}" 120 "$cs" --tool memcheck --report-api-errors no --target-processes all \
      --error-exitcode 99 "$mm" bench --gpus 2 --tokens 300 --hidden 256 --ffn 256 --experts 16 \
      --topk 2 --timeout 300 --no-baseline --no-ceiling --no-floor --warmup 0 --iters 1 --dtype $run
  done
fi
want sweep && one sweep 150 "$mm" bench --gpus 2 --no-ceiling --sweep tokens --csv "$OUT/r2-sweep.csv" --plot "$OUT/r2-sweep.png"
echo "total $(( $(date +%s) - t0 )) s; $failed failed"
# the device tool brings back only a few files: everything in one archive
# (find, not ls of globs: a glob with no match, e.g. no plot without matplotlib, failed the list)
(cd "$OUT" && find . -maxdepth 1 -type f -name 'r2-*' ! -name r2-logs.tar.gz -printf '%f\n' > .r2 &&
   [ -s .r2 ] && tar -czf r2-logs.tar.gz -T .r2 && xargs rm -f < .r2; rm -f .r2)
[ "$failed" -eq 0 ]
