#!/usr/bin/env bash
# Two `monomoe check --join` processes started by hand, as another launcher would start them: rank
# and world size from MONOMOE_* variables, the NCCL id through a rendezvous file. Rank 1 starts
# first and waits for rank 0's file. Exit 77 (skipped) with fewer than 2 GPUs.
set -u
bin=$1
gpus=$("$bin" info 2>/dev/null | sed -n 's/^GPUs *\([0-9][0-9]*\).*/\1/p' | head -n1)
gpus=${gpus:-0}
if [ "$gpus" -lt 2 ]; then
  echo "SKIPPED: needs 2 GPUs, $gpus visible"
  exit 77
fi
work=$(mktemp -d /tmp/monomoe-join-XXXXXX)
rdv=$work/rendezvous
run_rank() {
  MONOMOE_RANK=$1 MONOMOE_WORLD_SIZE=2 MONOMOE_RUN_ID=join-test-$$ \
    timeout 300 "$bin" check --join --rendezvous "$rdv" --cases 4 --seed 11 >"$work/rank$1.log" 2>&1
}
run_rank 1 & p1=$!
sleep 2
run_rank 0 & p0=$!
wait $p0; s0=$?
wait $p1; s1=$?
for r in 0 1; do echo "---- rank $r (exit $([ $r = 0 ] && echo $s0 || echo $s1))"; cat "$work/rank$r.log"; done
ok=0
[ "$s0" -eq 0 ] && [ "$s1" -eq 0 ] && grep -q "4 passed, 0 failed" "$work/rank0.log" && ok=1
[ -e "$rdv" ] && { echo "rendezvous file was not removed by rank 0"; ok=0; }
rm -rf "$work"
[ $ok -eq 1 ] && echo "PASS: two hand-started ranks joined and passed" && exit 0
echo "FAIL"
exit 1
