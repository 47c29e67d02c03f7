#!/usr/bin/env bash
# scripts/runs-2gpu.sh against a stand-in monomoe and compute-sanitizer (no GPU, no build):
# every run is made with its flags, the straggler bound (D + 10% of the undelayed median) passes
# and fails as it should, a failing run makes the exit status 1, and the logs are packed.
set -u
src=${1:?usage: test_runs_2gpu.sh <repository root>}
source "$(dirname "$0")/script_test.sh"
scratch
repo_with "$src" runs-2gpu.sh
mkdir -p "$dir/build/tools"
# The stand-in monomoe: bench's median is 0.8 ms plus the delay (plus $FAKE_EXTRA ms when delayed),
# plus $FAKE_SHARED ms (default 0.264) with --shared-ffn, at 335 FFN TFLOP/s; soak fails when
# FAKE_SOAK_FAIL is set. Every call appends its arguments to $FAKE_CALLS.
cat > "$dir/build/tools/monomoe" <<'MM'
#!/usr/bin/env bash
echo "$*" >> "$FAKE_CALLS"
if [ "$1" = soak ]; then
  [ -n "${FAKE_SOAK_FAIL:-}" ] && { echo "[rank 0] FAIL"; exit 1; }
  echo "[rank 0] PASS"; exit 0
fi
d=0; sh=0; prev=
for a in "$@"; do [ "$prev" = --delay-us ] && d=$a; [ "$prev" = --shared-ffn ] && sh=1; prev=$a; done
ms=$(awk -v d="$d" -v x="${FAKE_EXTRA:-0}" -v s="$sh" -v sx="${FAKE_SHARED:-0.264}" \
     'BEGIN { printf "%.3f", 0.8 + d / 1000 + (d > 0 ? x : 0) + s * sx }')
echo "[rank 0] correctness monomoe:  PASS rel_err=0.0028"
printf 'path         median ms    min ms      tokens/s   FFN TFLOP/s\n'
printf 'monomoe          %s     %s    19960235         335.0\nbaseline         1.250     1.240    13099320         219.8\n' "$ms" "$ms"
MM
printf '#!/usr/bin/env bash\necho "cs $*" >> "$FAKE_CALLS"\nshift 8\n"$@"\necho "========= ERROR SUMMARY: 0 errors"\n' \
  > "$dir/bin/compute-sanitizer"
chmod +x "$dir/build/tools/monomoe" "$dir/bin/compute-sanitizer"
export PATH="$dir/bin:$PATH" FAKE_CALLS=$dir/calls
run() { (cd "$dir/repo" && BUILD=0 GPU_BUILD_DIR="$dir/build" OUT="$1" scripts/runs-2gpu.sh 2>&1); }

# Everything, every bound kept.
out=$(run "$dir/out1") || fail "run 1: status $?: $out"
[ "$(grep -c "^bench" "$FAKE_CALLS")" -eq 20 ] || fail "run 1: $(grep -c "^bench" "$FAKE_CALLS") bench calls, not 20"
grep -q -- "--act swiglu --weight-layout out-in --dtype fp8 --tokens 64$" "$FAKE_CALLS" || fail "run 1: fp8 shape"
grep -q "^bench --gpus 2 --no-ceiling --delay-rank 1 --delay-us 10000$" "$FAKE_CALLS" || fail "run 1: straggler flags"
grep -q "^soak --gpus 2 --calls 10000$" "$FAKE_CALLS" || fail "run 1: soak flags"
grep -q -- "--hidden 8192 --ffn 2048 --experts 64 --topk 4 --tokens 4096$" "$FAKE_CALLS" || fail "run 1: shape 4"
[ "$(grep -c "^cs --tool memcheck" "$FAKE_CALLS")" -eq 3 ] || fail "run 1: memcheck runs"
grep -q -- "--dtype bf16 --shared-ffn 512$" "$FAKE_CALLS" || fail "run 1: memcheck with a shared expert"
grep -q "^bench --gpus 1 --no-ceiling --shared-ffn 2048$" "$FAKE_CALLS" || fail "run 1: shared flags"
[[ "$out" == *"shared expert 2048, 2 GPU(s): ok (+0.264 ms on 0.800, bound 1.1x its FLOPs at 335.0 TFLOP/s = 0.451 ms)"* ]] ||
  fail "run 1: shared verdict: $out"
grep -q -- "--sweep tokens" "$FAKE_CALLS" || fail "run 1: sweep"
[[ "$out" == *"straggler D = 1000 us: ok (1.800 ms"* ]] || fail "run 1: straggler verdict: $out"
[[ "$out" == *"; 0 failed"* ]] || fail "run 1: failure count: $out"
tar -tzf "$dir/out1/r2-logs.tar.gz" | grep -q "^r2-delay-100.log$" || fail "run 1: logs not packed"
ls "$dir/out1"/r2-*.log >/dev/null 2>&1 && fail "run 1: logs left beside the archive"

# A straggler that costs more than D + 10%, and a failing soak: status 1, each named.
: > "$FAKE_CALLS"
out=$(cd "$dir/repo" && FAKE_EXTRA=0.2 FAKE_SOAK_FAIL=1 ONLY="stragglers soak" BUILD=0 \
      GPU_BUILD_DIR="$dir/build" OUT="$dir/out2" scripts/runs-2gpu.sh 2>&1) && fail "run 2: status 0: $out"
[[ "$out" == *"straggler D = 100 us: OVER (1.100 ms"* ]] || fail "run 2: no OVER verdict: $out"
[[ "$out" == *"; 4 failed"* ]] || fail "run 2: failure count (3 delays + soak): $out"
grep -q "^bench.*--hidden" "$FAKE_CALLS" && fail "run 2: ONLY ran the shapes"

# A shared expert that costs more than 1.1x its FLOPs: OVER, status 1.
out=$(cd "$dir/repo" && FAKE_SHARED=0.6 ONLY=shared BUILD=0 GPU_BUILD_DIR="$dir/build" \
      OUT="$dir/out4" scripts/runs-2gpu.sh 2>&1) && fail "run 4: status 0: $out"
[[ "$out" == *"shared expert 2048, 1 GPU(s): OVER (+0.600 ms"* ]] || fail "run 4: no OVER verdict: $out"
[[ "$out" == *"; 2 failed"* ]] || fail "run 4: failure count: $out"

# No CLI: a clear error.
out=$(cd "$dir/repo" && BUILD=0 GPU_BUILD_DIR="$dir/none" OUT="$dir/out3" scripts/runs-2gpu.sh 2>&1)
[ $? -eq 2 ] && [[ "$out" == *"no $dir/none/tools/monomoe"* ]] || fail "run 3: $out"
echo "PASS"
