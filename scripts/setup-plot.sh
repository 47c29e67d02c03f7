#!/usr/bin/env bash
# Installs matplotlib from PyPI for scripts/plot_sweep.py (into the user site, or the active venv).
set -euo pipefail
if python3 -c 'import matplotlib' 2>/dev/null; then exit 0; fi
python3 -m pip install --quiet matplotlib || python3 -m pip install --quiet --user matplotlib ||
  python3 -m pip install --quiet --user --break-system-packages matplotlib
