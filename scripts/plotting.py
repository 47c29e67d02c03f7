"""What the plot scripts share: their arguments and CSV, matplotlib (headless) or a message, and
saving a figure."""
import csv
import sys


def csv_rows(doc, tool, nothing):
    """(src, rows, dst) for `tool SRC.csv DST.png`; exits 2 with `doc` on other arguments, 1 (saying
    the CSV has `nothing`) when it has no data rows."""
    if len(sys.argv) != 3:
        print(doc, file=sys.stderr)
        sys.exit(2)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"{tool}: {src} has {nothing}", file=sys.stderr)
        sys.exit(1)
    return src, rows, dst


def pyplot(tool):
    """matplotlib.pyplot with the Agg backend, or None after telling how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{tool}: matplotlib is missing; run scripts/setup-plot.sh", file=sys.stderr)
        return None
    return plt


def save(fig, dst, tool, dpi):
    """Lays out and writes the figure, and says where."""
    fig.tight_layout()
    fig.savefig(dst, dpi=dpi)
    print(f"{tool}: wrote {dst}")
    return 0
