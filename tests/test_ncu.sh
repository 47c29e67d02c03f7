#!/usr/bin/env bash
# scripts/ncu.sh against a stand-in cmake, monomoe and ncu (no GPU, no build): the profiled command
# is bench on one GPU with the given flags and the fixed ones, ncu gets the kernel filter, the
# skip count and the three sections with the clocks left alone, and the two exports land in $OUT.
set -u
src=${1:?usage: test_ncu.sh <repository root>}
source "$(dirname "$0")/script_test.sh"
scratch
repo_with "$src" ncu.sh nccl-root.sh
printf '#!/bin/sh\nexit 0\n' > "$dir/bin/fake-monomoe"
stand_in_cmake
# The stand-in ncu: a profiling call writes its report (-o NAME -> NAME.ncu-rep); -i prints text.
cat > "$dir/bin/ncu" <<'NCU'
#!/usr/bin/env bash
echo "$*" >> "$NCU_CALLS"
if [ "$1" = -i ]; then
  [ -f "$2" ] || { echo "no report $2" >&2; exit 1; }
  if [[ " $* " == *" --csv "* ]]; then echo '"Address","Source"'; else echo "    Duration us 888.48"; fi
  exit 0
fi
while [ $# -gt 0 ]; do [ "$1" = -o ] && touch "$2.ncu-rep"; shift; done
NCU
chmod +x "$dir/bin/ncu"
export NCCL_ROOT=none NCU_CALLS=$dir/calls

out=$(cd "$dir/repo" && OUT=$dir/out NCU_BUILD=$dir/build scripts/ncu.sh --dtype fp8 \
      --weight-layout out-in 2>&1) || fail "status $?: $out"
profile=$(head -1 "$NCU_CALLS")
for want in "--clock-control none" "-k regex:moe_forward" "-s 3 -c 1" "--section SourceCounters" \
            "--section WarpStateStats" "--section SpeedOfLight" \
            "tools/monomoe bench --gpus 1 --dtype fp8 --weight-layout out-in --no-baseline"; do
  [[ "$profile" == *"$want"* ]] || fail "the profiling call lacks '$want': $profile"
done
[ -s "$dir/out/ncu.txt" ] || fail "no ncu.txt"
zcat "$dir/out/src-sass.csv.gz" | grep -q Address || fail "no source export"
[ ! -e "$dir/out/ncu-rep.ncu-rep" ] || fail "the report was left in OUT"
[[ "$out" == *"Duration"* ]] || fail "the summary lines were not printed: $out"
grep -q -- "-DMONOMOE_BUILD_TESTS=OFF" "$dir/configures" || fail "the CLI is built with tests"
grep -q -- "-DMONOMOE_PTXAS_GUARD=ON" "$dir/configures" || fail "the ptxas guard is not ON"

# SKIP reaches ncu.
: > "$NCU_CALLS"
(cd "$dir/repo" && OUT=$dir/out SKIP=7 NCU_BUILD=$dir/build scripts/ncu.sh > /dev/null 2>&1) ||
  fail "SKIP=7: status $?"
grep -q -- "-s 7 -c 1" "$NCU_CALLS" || fail "SKIP=7 did not reach ncu: $(head -1 "$NCU_CALLS")"
echo "PASS"
