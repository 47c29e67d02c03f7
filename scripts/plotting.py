"""What the plot scripts share: matplotlib (headless) or a message, and saving a figure."""
import sys


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
