# Sourced by the tests of scripts/ and cmake/ scripts (test_ab.sh, test_ncu.sh, test_runs_2gpu.sh,
# test_ptxas_guard.sh), which run them against stand-ins on a machine without a GPU:
#   scratch [EXTRA...]      $dir, a folder removed on exit (with the EXTRA paths or globs)
#   fail MESSAGE            prints FAIL: MESSAGE and exits 1
#   repo_with ROOT SCRIPT.. $dir/repo/scripts/ holding those scripts of ROOT/scripts (the scripts
#                           work from their folder's parent), and $dir/bin/
#   stand_in_cmake          $dir/bin/cmake, on PATH: configuring records its arguments in
#                           $dir/configures and makes the -B folder; building copies
#                           $dir/bin/fake-monomoe (the test writes it) to <build>/tools/monomoe
fail() {
  echo "FAIL: $*"
  exit 1
}

scratch() {
  dir=$(mktemp -d)
  # (expanded when the trap runs: EXTRA may be a glob)
  trap "rm -rf \"$dir\" $*" EXIT
}

repo_with() {
  local root=$1
  shift
  mkdir -p "$dir/repo/scripts" "$dir/bin"
  for s in "$@"; do cp "$root/scripts/$s" "$dir/repo/scripts/"; done
}

stand_in_cmake() {
  cat > "$dir/bin/cmake" <<CM
#!/usr/bin/env bash
if [ "\$1" = --build ]; then
  mkdir -p "\$2/tools" && cp "$dir/bin/fake-monomoe" "\$2/tools/monomoe" && chmod +x "\$2/tools/monomoe"
else
  echo "\$*" >> "$dir/configures"
  while [ \$# -gt 0 ]; do [ "\$1" = -B ] && mkdir -p "\$2"; shift; done
fi
CM
  chmod +x "$dir/bin/cmake"
  export PATH="$dir/bin:$PATH"
}
