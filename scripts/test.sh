#!/usr/bin/env bash
# Fresh machine -> dependencies, build, the whole test suite. GPU tests (label gpu) skip with a
# printed reason where no GPU is visible.
source "$(dirname "$0")/common.sh"
cd "$BUILD_DIR" && ctest --output-on-failure --timeout 600 "$@"
