#!/usr/bin/env bash
# scripts/ab.sh run against a stand-in cmake and monomoe (no GPU, no build): every (set, variant,
# GPU count) gets its rounds and its median, the sets' flags reach bench with the common ones
# appended, the logs are named per set and packed, and BUDGET stops before a run that could end
# past it while the medians of the runs made are still printed.
set -u
src=${1:?usage: test_ab.sh <repository root>}
source "$(dirname "$0")/script_test.sh"
scratch "/tmp/ab-build-abtest-$$-*"
repo_with "$src" ab.sh nccl-root.sh
a=abtest-$$-a b=abtest-$$-b
mkdir -p "$dir/repo/ab/$a" "$dir/repo/ab/$b"
printf '%s 1111111\n%s 2222222\n' "$a" "$b" > "$dir/repo/ab/refs.txt"

# The stand-in monomoe: variant a takes 0.5 ms, b 0.4 (with --tokens 1: 0.05 and 0.04); every call
# appends its arguments to $FAKE_CALLS and sleeps $FAKE_SLEEP seconds.
cat > "$dir/bin/fake-monomoe" <<'MM'
#!/usr/bin/env bash
echo "$0 $*" >> "$FAKE_CALLS"
sleep "${FAKE_SLEEP:-0}"
ms=0.5; [[ "$0" == *-b/* ]] && ms=0.4
[[ " $* " == *" --tokens 1 "* ]] && ms=$(awk -v m="$ms" 'BEGIN { printf "%.2f", m / 10 }')
echo "correctness monomoe:  PASS rel_err=0.0028"
printf 'monomoe          %s     %s\nbaseline         1.000     0.990\n' "$ms" "$ms"
MM
chmod +x "$dir/bin/fake-monomoe"
stand_in_cmake
export NCCL_ROOT=none FAKE_CALLS=$dir/calls

# Two sets, two GPU counts, three rounds, no budget.
out=$(cd "$dir/repo" && OUT=$dir/out1 SETS="--tokens 1;--tokens 128 --graph" GPUS="1 2" ROUNDS=3 \
      BUDGET=0 scripts/ab.sh run --trace 2>&1) || fail "run 1: status $?: $out"
[ "$(wc -l < "$FAKE_CALLS")" -eq 24 ] || fail "run 1: $(wc -l < "$FAKE_CALLS") bench calls, not 24"
grep -q -- "-b/tools/monomoe bench --gpus 2 --no-ceiling --tokens 128 --graph --trace$" "$FAKE_CALLS" ||
  fail "run 1: a set's flags or the common ones did not reach bench: $(head -3 "$FAKE_CALLS")"
expect() { [[ "$out" == *"$1"* ]] || fail "$2: no '$1' in: $out"; }
expect " set 1: --tokens 1" "run 1"
expect "  gpus 2  $b (2222222): 0.04" "run 1 (set 1's median)"
expect "  gpus 1  $a (1111111): 0.5" "run 1 (set 2's median)"
expect "round 3  set 2  gpus 2  $b: monomoe 0.4 ms  baseline 1.000 ms  correctness 1 PASS 0 FAIL" "run 1"
[[ "$out" != *"stopped before"* ]] || fail "run 1: stopped without a budget"
tar -tzf "$dir/out1/ab-logs.tar.gz" | grep -q "^ab-s2-$a-1-3.log$" || fail "run 1: log names"

# One set (no SETS): the old log names; a budget that stops the run after a few calls.
: > "$FAKE_CALLS"
out=$(cd "$dir/repo" && OUT=$dir/out2 FAKE_SLEEP=1 GPUS=1 ROUNDS=10 BUDGET=3 \
      scripts/ab.sh run --tokens 64 2>&1) || fail "run 2: status $?: $out"
calls=$(wc -l < "$FAKE_CALLS")
{ [ "$calls" -ge 1 ] && [ "$calls" -lt 20 ]; } || fail "run 2: $calls bench calls under BUDGET=3"
expect "BUDGET=3 s: stopped before round" "run 2"
expect "  gpus 1  $a (1111111): 0.5" "run 2 (the median of the runs made)"
tar -tzf "$dir/out2/ab-logs.tar.gz" | grep -q "^ab-$a-1-1.log$" || fail "run 2: log names"

# The ptxas guard is passed to every configure: ON unless PTXAS_GUARD says otherwise (a kept build
# folder must not keep an older value).
grep -q -- "-DMONOMOE_PTXAS_GUARD=ON" "$dir/configures" || fail "guard: not ON by default"
! grep -q -- "-DMONOMOE_PTXAS_GUARD=OFF" "$dir/configures" || fail "guard: OFF without PTXAS_GUARD"
: > "$dir/configures"
out=$(cd "$dir/repo" && OUT=$dir/out3 PTXAS_GUARD=OFF GPUS=1 ROUNDS=1 BUDGET=0 \
      scripts/ab.sh run --tokens 64 2>&1) || fail "run 3: status $?: $out"
[ "$(grep -c -- "-DMONOMOE_PTXAS_GUARD=OFF" "$dir/configures")" -eq 2 ] ||
  fail "guard: PTXAS_GUARD=OFF did not reach both variants' configures: $(cat "$dir/configures")"
echo "PASS"
