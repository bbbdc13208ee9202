#!/usr/bin/env bash
# Runs every Go fuzz target of the module for FUZZTIME each (default 3s):
# `make test` runs them briefly, `make fuzz` longer (FUZZTIME=60s). A crasher
# is written by Go under the package's testdata/fuzz/<Target>/ and fails the run.
#
# A run that fails without writing an input (the fuzz engine's own trouble:
# a worker that died or hung, a coordinator deadline on a loaded machine) is
# printed in full and run once more: the target fails only if that fails too.
# A failing seed corpus entry or a build error fails both runs, so a real
# failure is never hidden. FUZZPARALLEL (default 2) bounds the fuzz workers.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-3s}"
parallel="${FUZZPARALLEL:-2}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
failed=()

# fuzz PKG TARGET: one run, its output printed and kept in $out.
fuzz() {
  local rc=0
  go test -run '^$' -fuzz "^$2\$" -fuzztime "$fuzztime" -parallel "$parallel" "$1" >"$out" 2>&1 || rc=$?
  cat "$out"
  return "$rc"
}

for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  targets=$(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/' || true)
  for t in $targets; do
    echo "-- $pkg $t ($fuzztime)"
    fuzz "$pkg" "$t" && continue
    if grep -q 'Failing input written' "$out"; then
      echo "FAILED: $pkg $t found a failing input (above; re-run with the command Go printed)"
    else
      echo "!! $pkg $t exited non-zero without writing a failing input (output above): running it once more"
      fuzz "$pkg" "$t" && continue
      echo "FAILED: $pkg $t failed twice (output above)"
    fi
    status=1
    failed+=("$pkg $t")
  done
done
if [ "$status" != 0 ]; then
  echo "fuzz targets failed:"
  printf '  %s\n' "${failed[@]}"
fi
exit $status
