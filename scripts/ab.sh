#!/usr/bin/env bash
# A/B of several commits in ONE device call (METHOD: side by side, same run): which change moved a
# number. The GPU machines get a copy of the working tree without git history, so the commits are
# exported here first into the ignored folder ab/, which the device call carries.
#
#   scripts/ab.sh prepare REF [REF ...]     here: ab/<ref>/ = `git archive REF` (+ third_party link)
#   scripts/ab.sh run [BENCH ARGS ...]      on the GPU machine (carry ["third_party", "ab"]):
#       builds every ab/* tree's CLI side by side (tests off; about the time of one build), then
#       ROUNDS (default 3) rounds of `monomoe bench --gpus G --no-ceiling SET BENCH ARGS` per
#       variant, interleaved (a, b, c, a, b, c, ...) so that drift hits every variant alike; prints
#       each run's monomoe and baseline medians (with --trace also rank 0's task and block medians)
#       and, last, the median over rounds per (set, variant, G).
# Env (run): GPUS (the G values, default "1"; e.g. "1 2"), ROUNDS, JOBS (build jobs per variant,
#            default nproc / variants), NCCL_ROOT (default: PyTorch's NCCL, as gpu-check.sh),
#            SETS (bench argument sets separated by ';', e.g. "--graph --tokens 128;--tokens 1":
#            each is run by every variant in every round, with BENCH ARGS appended to each; unset:
#            one set, BENCH ARGS alone), BUDGET (seconds from the start, default 540; 0: none: a
#            run that could end past it, by the longest run so far, is not started, and the
#            medians of the runs made are printed: a device call has 600 s).
#            PTXAS_GUARD (ON by default: every variant's build fails where ptxas serializes
#            wgmma, cmake/ptxas_guard.sh; OFF for a diagnostic variant whose extra code trips it,
#            its timings then not comparable. Passed explicitly, so that a build directory kept
#            from an earlier call does not keep an older value.)
# Logs: $OUT (or ./out)/ab-logs.tar.gz: ab-<variant>-<G>-<round>.log (with SETS
#       ab-s<set>-<variant>-<G>-<round>.log) and ab-build-<variant>.log.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cmd=${1:-}
shift || true
case "$cmd" in
  prepare)
    [ $# -ge 1 ] || { echo "usage: scripts/ab.sh prepare REF [REF ...]" >&2; exit 2; }
    rm -rf ab && mkdir -p ab
    for ref in "$@"; do
      name=${ref//\//_}
      commit=$(git rev-parse --short "$ref") || exit 2
      mkdir -p "ab/$name"
      git archive "$ref" | tar -x -C "ab/$name" || exit 2
      ln -s ../../third_party "ab/$name/third_party"
      echo "$name $commit" >> ab/refs.txt
    done
    cat ab/refs.txt
    echo "now: run with carry [\"third_party\", \"ab\"] and command scripts/ab.sh run [bench args]"
    ;;
  run)
    [ -f ab/refs.txt ] || { echo "ab.sh run: no ab/refs.txt (scripts/ab.sh prepare first, carry ab)" >&2; exit 2; }
    export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
    OUT=${OUT:-$here/out}
    mkdir -p "$OUT"
    source "$here/scripts/nccl-root.sh"
    W=${NCCL_ROOT:-$(torch_nccl_root)}
    mapfile -t names < <(awk '{print $1}' ab/refs.txt)
    jobs=${JOBS:-$(( $(nproc) / ${#names[@]} > 0 ? $(nproc) / ${#names[@]} : 1 ))}
    t0=$(date +%s)
    for v in "${names[@]}"; do
      ( cmake -S "ab/$v" -B "/tmp/ab-build-$v" -G Ninja -DCMAKE_BUILD_TYPE=Release \
          ${W:+-DNCCL_ROOT="$W"} -DMONOMOE_BUILD_TESTS=OFF \
          -DMONOMOE_PTXAS_GUARD="${PTXAS_GUARD:-ON}" > "$OUT/ab-build-$v.log" 2>&1 &&
        cmake --build "/tmp/ab-build-$v" -j "$jobs" --target monomoe_cli >> "$OUT/ab-build-$v.log" 2>&1
        echo "build $v rc=$?" ) &
    done
    wait
    echo "builds: $(( $(date +%s) - t0 )) s"
    if [ -n "${SETS:-}" ]; then IFS=';' read -ra sets <<< "$SETS"; else sets=(""); fi
    budget=${BUDGET:-540}
    longest=0
    stopped=
    declare -A results
    for round in $(seq 1 "${ROUNDS:-3}"); do
      for si in "${!sets[@]}"; do
        for g in ${GPUS:-1}; do
          for v in "${names[@]}"; do
            if [ "$budget" -gt 0 ] && [ $(( $(date +%s) - t0 + longest )) -gt "$budget" ]; then
              stopped="round $round, set $(( si + 1 )), gpus $g, $v"
              break 4
            fi
            mm=$(find "/tmp/ab-build-$v" -name monomoe -type f -perm -u+x | head -1)
            [ -n "$mm" ] || { echo "$v: no monomoe binary (build failed: $OUT/ab-build-$v.log)"; continue; }
            tag=${SETS:+s$(( si + 1 ))-}
            log="$OUT/ab-$tag$v-$g-$round.log"
            t_run=$(date +%s)
            # shellcheck disable=SC2086  # a set is a list of flags
            timeout 120 "$mm" bench --gpus "$g" --no-ceiling ${sets[$si]} "$@" > "$log" 2>&1
            rc=$?
            (( $(date +%s) - t_run > longest )) && longest=$(( $(date +%s) - t_run ))
            m=$(awk '$1 == "monomoe" && $2 ~ /^[0-9.]+$/ {print $2; exit}' "$log")
            b=$(awk '$1 == "baseline" && $2 ~ /^[0-9.]+$/ {print $2; exit}' "$log")
            # Every rank's correctness line (a variant that has never run may be wrong: read it first).
            ok=$(grep -c "correctness monomoe: *PASS" "$log")
            bad=$(grep -c "correctness monomoe: *FAIL" "$log")
            echo "round $round  ${SETS:+set $(( si + 1 ))  }gpus $g  $v: monomoe ${m:-?} ms  baseline ${b:-?} ms  correctness ${ok} PASS ${bad} FAIL  (rc=$rc, $(( $(date +%s) - t0 )) s)"
            # With --trace: rank 0's per-task and per-block medians (us), so that an A/B shows where
            # a variant's time went without unpacking the logs.
            tr=$(awk '
              function med() { for (i = 1; i < NF; ++i) if ($i == "median") return $(i + 1); return "?" }
              /^  gemm0 /   { g0 = med() } /^  gemm1 /     { g1 = med() } /^  combine / { c = med() }
              /^  queue wait/ { q = med() } /^  in GEMM tasks/ { w = med() } /^  first task/ { f = med() }
              END { if (g0 != "") printf "gemm0 %s  gemm1 %s  combine %s per task; first task %s, queue wait %s, in GEMM tasks %s per block", g0, g1, (c == "" ? "-" : c), f, q, w }' "$log")
            [ -n "$tr" ] && echo "    trace (us, rank 0): $tr"
            results["$si $v $g"]+="${m:-} "
          done
        done
      done
    done
    [ -n "$stopped" ] && echo "BUDGET=$budget s: stopped before $stopped (the longest run took $longest s)"
    echo "median over rounds (ms):"
    for si in "${!sets[@]}"; do
      [ -n "${SETS:-}" ] && echo " set $(( si + 1 )): ${sets[$si]}"
      for g in ${GPUS:-1}; do
        for v in "${names[@]}"; do
          med=$(echo ${results["$si $v $g"]:-} | tr ' ' '\n' | grep -v '^$' | sort -n |
                awk '{a[NR] = $1} END {if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2); else print "?"}')
          echo "  gpus $g  $v ($(awk -v n="$v" '$1 == n {print $2}' ab/refs.txt)): $med"
        done
      done
    done
    # The device tool returns only a few files of $OUT: the logs travel as one archive.
    (cd "$OUT" && tar -czf ab-logs.tar.gz ab-*.log && rm -f ab-*.log)
    ;;
  *)
    echo "usage: scripts/ab.sh prepare REF [REF ...] | scripts/ab.sh run [bench args]" >&2
    exit 2
    ;;
esac
