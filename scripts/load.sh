#!/usr/bin/env bash
# Load comparison, loopback only, bounded, through one caddy binary built with
# xcaddy: plain reverse_proxy (the baseline, given the same Authorization
# header as every other scenario) against each directive alone, the whole
# stack (throttle + jwt_auth RS256 + reverse_proxy), aggregate against its
# slowest backend, and throttle on Redis against throttle in memory (a
# redis-server is started on a free port; skipped with a message when the
# binary or the machine lacks it). Reports req/s, p50, p99, caddy CPU per
# request and the ratios. Extra flags go to the load program (-n, -c,
# -rounds, -only).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CADDY_BIN:-bin/caddy}"
[ -x "$bin" ] || make --no-print-directory build BIN="$bin"
go run ./internal/loadtest -caddy "$bin" "$@"
