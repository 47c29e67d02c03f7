#!/usr/bin/env python3
"""Draws a `monomoe bench --trace-tasks` CSV as a timeline: one row per persistent block, one bar per
task (GEMM0, GEMM1, combine in three colours), microseconds from the first block's start; the gaps
are the time a block waited for tasks. Also prints, per task type, its count and total busy time.
Usage: plot_timeline.py TASKS.csv OUT.png   (needs matplotlib: scripts/setup-plot.sh)"""
import sys

import plotting

COLORS = {"gemm0": "tab:blue", "gemm1": "tab:orange", "combine": "tab:green"}


def main() -> int:
    src, rows, dst = plotting.csv_rows(__doc__, "plot_timeline", "no tasks")
    busy = {}
    for r in rows:
        t = r["type"]
        n, total = busy.get(t, (0, 0.0))
        busy[t] = (n + 1, total + float(r["end_us"]) - float(r["start_us"]))
    for t, (n, total) in sorted(busy.items()):
        print(f"{t:8s} {n:6d} tasks, {total:10.1f} us busy in all blocks")
    plt = plotting.pyplot("plot_timeline")
    if plt is None:
        return 1
    blocks = max(int(r["block"]) for r in rows) + 1
    fig, ax = plt.subplots(figsize=(12, max(4.0, blocks * 0.06)))
    for t, color in COLORS.items():
        spans = [(int(r["block"]), float(r["start_us"]), float(r["end_us"]))
                 for r in rows if r["type"] == t]
        for b, s, e in spans:
            ax.broken_barh([(s, e - s)], (b - 0.4, 0.8), facecolors=color, linewidth=0)
        ax.plot([], [], color=color, linewidth=6, label=f"{t} ({len(spans)})")
    ax.set_xlabel("us from the first block's start")
    ax.set_ylabel("block")
    ax.set_ylim(-1, blocks)
    ax.invert_yaxis()
    ax.set_title(f"monomoe tasks per block ({src})")
    ax.legend(loc="lower right")
    return plotting.save(fig, dst, "plot_timeline", 110)


if __name__ == "__main__":
    sys.exit(main())
