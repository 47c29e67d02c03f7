#!/usr/bin/env bash
# cmake/ptxas_guard.sh against stand-in compilers (no nvcc needed): it passes a compile's
# arguments through with -Xptxas -v appended, drops ptxas's report lines, keeps everything else,
# returns the compile's status, and fails a compile whose ptxas output says wgmma instructions were
# serialized (advisories C7510 and C7512).
set -u
guard=${1:?usage: test_ptxas_guard.sh <path of cmake/ptxas_guard.sh>}
source "$(dirname "$0")/script_test.sh"
scratch

# A stand-in compiler: records its arguments, prints what $FAKE_STDERR says, exits $FAKE_RC.
cat > "$dir/cc" <<'CC'
#!/usr/bin/env bash
printf '%s\n' "$@" > "$FAKE_ARGS"
printf '%b' "$FAKE_STDERR" >&2
exit "${FAKE_RC:-0}"
CC
chmod +x "$dir/cc"
export FAKE_ARGS=$dir/args
report="ptxas info    : Used 254 registers, used 1 barriers, 1024 bytes smem\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"

# A clean compile: status 0, the report dropped, a real warning kept, -Xptxas -v appended.
out=$(FAKE_STDERR="${report}foo.cu(3): warning: something\n" "$guard" "$dir/cc" -c foo.cu -o foo.o 2>&1)
rc=$?
[ $rc -eq 0 ] || fail "clean compile: status $rc"
[[ "$out" == *"warning: something"* ]] || fail "clean compile: the warning was dropped: $out"
[[ "$out" != *"Used 254 registers"* ]] || fail "clean compile: ptxas's report passed through"
[ "$(tr '\n' ' ' < "$FAKE_ARGS")" = "-c foo.cu -o foo.o -Xptxas -v " ] ||
  fail "arguments: $(tr '\n' ' ' < "$FAKE_ARGS")"

# A failing compile keeps its status and its error.
out=$(FAKE_RC=2 FAKE_STDERR="foo.cu(9): error: bad\n" "$guard" "$dir/cc" -c foo.cu 2>&1)
rc=$?
[ $rc -eq 2 ] || fail "failing compile: status $rc, not 2"
[[ "$out" == *"error: bad"* ]] || fail "failing compile: its error was dropped"

# Serialized wgmma: the compile succeeded, the guard fails it and names the advisory.
c7510="ptxas info    : (C7510) Potential Performance Loss: wgmma.mma_async instructions are serialized due to wgmma pipeline crossing function boundary at a function call in the function 'k'\n"
out=$(FAKE_STDERR="${report}${c7510}" "$guard" "$dir/cc" -c foo.cu 2>&1)
rc=$?
[ $rc -ne 0 ] || fail "C7510: the guard let it through"
[[ "$out" == *"C7510"* ]] || fail "C7510: not named in the output: $out"
# ... and for lack of registers (the message ptxas printed for the fp8 kernel, 2026-11-30).
c7512="ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized due to insufficient register resources for the function 'k'\n"
out=$(FAKE_STDERR="${report}${c7512}" "$guard" "$dir/cc" -c foo.cu 2>&1)
rc=$?
[ $rc -ne 0 ] || fail "C7512: the guard let it through"
[[ "$out" == *"C7512"* ]] || fail "C7512: not named in the output: $out"
echo "PASS: ptxas_guard.sh passes clean compiles, keeps failures, fails on C7510 and C7512"
