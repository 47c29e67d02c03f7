#!/usr/bin/env bash
# Installs what the build needs that the toolkit does not ship, into ignored folders of this repo:
#   third_party/cutlass/include  CuTe/CUTLASS headers from the PyPI package nvidia-cutlass
# and, when run as root on a Debian machine without them, GoogleTest and CMake from Debian.
# Safe to run again: it skips what is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CUTLASS_VERSION=${CUTLASS_VERSION:-4.2.0.0}
dest="$here/third_party/cutlass"

if [ ! -f "$dest/include/cute/tensor.hpp" ] || [ "$(cat "$dest/VERSION" 2>/dev/null)" != "$CUTLASS_VERSION" ]; then
  echo "setup-deps: fetching nvidia-cutlass==$CUTLASS_VERSION (CuTe headers) from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "nvidia-cutlass==$CUTLASS_VERSION"
  rm -rf "$dest" && mkdir -p "$dest"
  # The wheel keeps the C++ headers under cutlass_library/source/include (see its setup.cfg).
  python3 - "$tmp"/nvidia_cutlass-*.whl "$dest" <<'PY'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "cutlass_library/source/include/"
n = 0
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / "include" / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
            n += 1
if n == 0:
    sys.exit("setup-deps: the wheel has no " + prefix + " folder")
print(f"setup-deps: {n} header files in {dest / 'include'}")
PY
  echo "$CUTLASS_VERSION" > "$dest/VERSION"
fi

# GoogleTest: Debian's libgtest-dev ships the CMake package GTest.
# Where neither is present but third_party/googletest was carried in, the tests build that instead.
if [ ! -f /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake ] && [ ! -d /usr/include/gtest ] &&
   [ ! -f "$here/third_party/googletest/CMakeLists.txt" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup-deps: installing GoogleTest from Debian"
    apt-get update -qq && apt-get install -y -qq libgtest-dev >/dev/null
  else
    echo "setup-deps: GoogleTest is missing; install libgtest-dev (tests will not build)" >&2
  fi
fi

# Python: nanobind builds the extension monomoe._C, pytest runs python/tests, scikit-build-core is
# the backend of `pip install .`, PyTorch runs the module's tests. nanobind, pytest and
# scikit-build-core are pure Python: when missing they go into third_party/python
# (on PYTHONPATH through scripts/common.sh), so that carrying third_party/ to a machine without a
# registry (the GPU machines) brings them. PyTorch is installed from PyPI when missing. Where nothing
# can be installed, the build goes on without the Python package and says so.
pydeps="$here/third_party/python"
export PYTHONPATH="$pydeps${PYTHONPATH:+:$PYTHONPATH}"
for pkg in nanobind:nanobind pytest:pytest scikit_build_core:scikit-build-core; do
  mod=${pkg%%:*}; dist=${pkg#*:}
  if ! python3 -c "import $mod" >/dev/null 2>&1; then
    echo "setup-deps: installing $dist from PyPI into third_party/python (for the Python package)"
    python3 -m pip install --quiet --disable-pip-version-check --target "$pydeps" "$dist" ||
      echo "setup-deps: could not install $dist; the Python package or its tests will be skipped" >&2
  fi
done
if ! python3 -c "import torch" >/dev/null 2>&1; then
  echo "setup-deps: installing torch from PyPI (for the Python package's tests)"
  python3 -m pip install --quiet --disable-pip-version-check torch ||
    echo "setup-deps: could not install torch; the Python package's tests will be skipped" >&2
fi

# GoogleTest sources for machines without it (the GPU machines): copied next to the CuTe headers so
# that carrying third_party/ brings both. tests/CMakeLists.txt builds them when find_package fails.
if [ -d /usr/src/googletest ] && [ ! -f "$here/third_party/googletest/CMakeLists.txt" ]; then
  mkdir -p "$here/third_party" && cp -r /usr/src/googletest "$here/third_party/googletest"
fi
