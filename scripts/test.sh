#!/usr/bin/env bash
# Runs every test of caddy-gateway on a fresh machine: formatting, go vet and
# golangci-lint, the unit and adapt tests, the in-process Caddy integration
# tests, and the end-to-end tests against a caddy binary built with xcaddy,
# then every fuzz target briefly. Installs or starts whatever the tests need.
#
# Independent steps overlap to keep a fresh machine's run short: installing
# packages, linting and building caddy run side by side, and the test
# binaries run two at a time. Each background step writes its own log,
# printed when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="/usr/local/go/bin:$PATH"

# Caddy writes under $HOME/.config/caddy: keep every run's state in a temp dir.
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
export HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/config" XDG_DATA_HOME="$tmp/data" XDG_CACHE_HOME="${XDG_CACHE_HOME:-$tmp/cache}"
export GOCACHE="${GOCACHE:-$(go env GOCACHE)}" GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
mkdir -p "$HOME"

# step NAME CMD...: runs CMD in the background, its output in $tmp/NAME.log.
step() {
  local name=$1
  shift
  echo "== start: $name (at ${SECONDS}s)"
  ( set +e; "$@" >"$tmp/$name.log" 2>&1; echo $? >"$tmp/$name.rc" ) &
  pids+=($!)
}
# finish NAME: waits for step NAME, prints its log, fails the run if it failed.
finish() {
  local name=$1
  while [ ! -f "$tmp/$name.rc" ]; do sleep 1; done
  echo "== $name (exit $(cat "$tmp/$name.rc"), at ${SECONDS}s)"
  cat "$tmp/$name.log"
  if [ "$(cat "$tmp/$name.rc")" != 0 ]; then
    summary "$tmp/$name.log"
    echo "FAILED: $name"
    exit 1
  fi
}
# summary LOG: repeats what names a failure (failed tests, their file:line
# messages, panics, data races) at the end, where a truncated log still
# shows it: the servers' own log lines otherwise bury it.
summary() {
  echo "== what failed (from $(basename "$1"))"
  grep -E -e '^\s*--- FAIL' -e '^(FAIL|panic:|WARNING: DATA RACE)' -e '^\s+[A-Za-z0-9_]+_test\.go:[0-9]+:' "$1" | head -60 || true
}

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted"
  exit 1
fi

go mod download
step deps bash scripts/deps.sh # redis-server, redis-cli, chromium
step lint bash scripts/lint.sh # go vet, then golangci-lint (pinned)

echo "== build caddy with xcaddy (at ${SECONDS}s)"
bin="$tmp/caddy"
make --no-print-directory build BIN="$bin"
export CADDY_BIN="$bin"
finish deps

echo "== go test -race (at ${SECONDS}s)"
# One go test for every package: each package is compiled once (two go test
# processes side by side would both compile Caddy's whole tree with -race),
# and the test binaries run two at a time, so the integration package (one
# in-process Caddy; its tests stay serial) runs beside the others.
if ! go test -race -count=1 -timeout 30m ./... 2>&1 | tee "$tmp/packages.log"; then
  summary "$tmp/packages.log"
  echo "FAILED: go test"
  exit 1
fi
finish lint

echo "== fuzz targets (${FUZZTIME:-3s} each, at ${SECONDS}s)"
bash scripts/fuzz.sh

echo "== all passed in ${SECONDS}s"
