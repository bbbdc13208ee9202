#!/usr/bin/env bash
# Runs every test of caddy-gateway on a fresh machine: formatting, go vet,
# the unit and adapt tests, the in-process Caddy integration tests, and the
# end-to-end tests against a caddy binary built with xcaddy. Installs or
# starts whatever the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="/usr/local/go/bin:$PATH"

# Caddy writes under $HOME/.config/caddy: keep every run's state in a temp dir.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/config" XDG_DATA_HOME="$tmp/data" XDG_CACHE_HOME="${XDG_CACHE_HOME:-$tmp/cache}"
export GOCACHE="${GOCACHE:-$(go env GOCACHE)}" GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}"
mkdir -p "$HOME"

echo "== install what the tests need (redis-server, redis-cli, chromium)"
bash scripts/deps.sh

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted"
  exit 1
fi

echo "== go vet and golangci-lint (pinned)"
bash scripts/lint.sh

echo "== build caddy with xcaddy"
bin="$tmp/caddy"
make --no-print-directory build BIN="$bin"
export CADDY_BIN="$bin"

echo "== go test -race"
# -p 1: the integration package runs one in-process Caddy; keep packages serial.
go test -race -count=1 -p 1 -timeout 30m ./...

echo "== fuzz targets (${FUZZTIME:-3s} each)"
bash scripts/fuzz.sh
