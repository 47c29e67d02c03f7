#!/usr/bin/env python3
"""Plots a `monomoe bench --sweep` CSV: median latency of monomoe and the baseline against the swept
variable. Usage: plot_sweep.py SWEEP.csv OUT.png   (needs matplotlib: scripts/setup-plot.sh)"""
import sys

import plotting


def main() -> int:
    _, rows, dst = plotting.csv_rows(__doc__, "plot_sweep", "no data rows")
    var = next(iter(rows[0].keys()))
    plt = plotting.pyplot("plot_sweep")
    if plt is None:
        return 1
    xs = [float(r[var]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("monomoe_ms", "monomoe (fused)"), ("baseline_ms", "baseline (bulk-synchronous)")):
        pts = [(x, float(r[key])) for x, r in zip(xs, rows) if float(r[key]) > 0]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(var + (" (tokens per GPU fixed)" if var == "gpus" else ""))
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"monomoe bench --sweep {var}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return plotting.save(fig, dst, "plot_sweep", 120)


if __name__ == "__main__":
    sys.exit(main())
