#!/usr/bin/env bash
# Nsight Compute's per-instruction counters of one persistent-kernel launch, in one device call:
# where a kernel's stall samples and executed instructions lie, by SASS address (the recipe of the
# perf log's ncu entries, e.g. 2026-11-30 22:17).
#
#   scripts/ncu.sh [BENCH ARGS ...]     e.g. scripts/ncu.sh --dtype fp8 --weight-layout out-in
#
# Builds the CLI alone (tests off) against PyTorch's NCCL in NCU_BUILD (default /tmp/ncu-build; a
# folder kept from an earlier call is reused), then profiles launch SKIP + 1 of moe_forward_kernel
# in `monomoe bench --gpus 1 BENCH ARGS --no-baseline --no-ceiling --no-floor --iters 3 --warmup 1`
# with the sections SpeedOfLight, WarpStateStats and SourceCounters, clocks as the GPU sets them
# (never changed: --clock-control none). Writes to $OUT (or ./out): ncu.txt (the sections),
# src-sass.csv.gz (one row per SASS instruction: stall samples, instructions executed; a code
# region is found by its execution counts), ncu-build.log, ncu-run.log.
# Env: SKIP (launches before the profiled one, default 3: past the correctness check and the
#      warm-up), NCU (the ncu binary; default the one on PATH, else the toolkit's), NCCL_ROOT,
#      PTXAS_GUARD (as scripts/ab.sh: ON unless OFF).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
OUT=${OUT:-$here/out}
mkdir -p "$OUT"
source "$here/scripts/nccl-root.sh"
W=${NCCL_ROOT:-$(torch_nccl_root)}
[ "$W" = none ] && W=
build=${NCU_BUILD:-/tmp/ncu-build}
ncu=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
t0=$(date +%s)
{ cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${W:+-DNCCL_ROOT="$W"} \
    -DMONOMOE_BUILD_TESTS=OFF -DMONOMOE_PTXAS_GUARD="${PTXAS_GUARD:-ON}" &&
  cmake --build "$build" --target monomoe_cli; } > "$OUT/ncu-build.log" 2>&1 ||
  { echo "ncu.sh: the build failed ($OUT/ncu-build.log)"; tail -20 "$OUT/ncu-build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
mm=$(find "$build" -name monomoe -type f -perm -u+x | head -1)
[ -n "$mm" ] || { echo "ncu.sh: no monomoe binary in $build"; exit 1; }
rep=$OUT/ncu-rep
rm -f "$rep.ncu-rep"
"$ncu" --clock-control none -k regex:moe_forward -s "${SKIP:-3}" -c 1 --section SpeedOfLight \
  --section WarpStateStats --section SourceCounters -o "$rep" \
  "$mm" bench --gpus 1 "$@" --no-baseline --no-ceiling --no-floor --iters 3 --warmup 1 \
  > "$OUT/ncu-run.log" 2>&1 || { echo "ncu.sh: ncu failed"; tail -20 "$OUT/ncu-run.log"; exit 1; }
"$ncu" -i "$rep.ncu-rep" > "$OUT/ncu.txt" 2>&1
"$ncu" -i "$rep.ncu-rep" --page source --csv --print-source sass 2> /dev/null |
  gzip > "$OUT/src-sass.csv.gz"
rm -f "$rep.ncu-rep"  # large; the two exports above hold what the logs use
grep -E "Duration|Elapsed Cycles|Compute \(SM\) Throughput|Memory Throughput" "$OUT/ncu.txt" |
  head -8
echo "ncu.sh: $OUT/ncu.txt, $OUT/src-sass.csv.gz ($(( $(date +%s) - t0 )) s)"
