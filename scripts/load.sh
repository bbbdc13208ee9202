#!/usr/bin/env bash
# Load comparison, loopback only, bounded, through one caddy binary built with
# xcaddy from this tree (or CADDY_BIN): plain reverse_proxy (the baseline,
# sent the same request as the scenarios compared with it) against each
# directive alone, the whole stack (throttle + jwt_auth RS256 +
# reverse_proxy), cors against plain with the same Origin, aggregate against
# its slowest backend, and throttle on Redis against throttle in memory (a
# redis-server is started on a free port; skipped with a message when the
# binary or the machine lacks it). The scenarios are the table in
# internal/loadtest/scenarios.go. One table: req/s, p50, p99, caddy CPU per
# request, caddy heap allocations and bytes per request (its own memstats,
# /debug/vars on an admin endpoint on a free port), the deltas and ratios
# over each baseline, and the allocation budget each is held to. Extra flags
# go to the load program (-n, -c, -rounds, -only, -pprof DIR,
# -memprofilerate).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CADDY_BIN:-}"
if [ -z "$bin" ]; then
	# Always the tree as it is now: a binary left in bin/ may be older.
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	bin="$tmp/caddy"
	make --no-print-directory build BIN="$bin" >&2
fi
go run ./internal/loadtest -caddy "$bin" "$@"
