#!/usr/bin/env bash
# Load comparison, loopback only, bounded: plain reverse_proxy vs the gateway
# stack (throttle + jwt_auth + reverse_proxy) through one caddy binary built
# with xcaddy, in one run. Extra flags go to the load program (-n, -c, -rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CADDY_BIN:-bin/caddy}"
[ -x "$bin" ] || make --no-print-directory build BIN="$bin"
go run ./internal/loadtest -caddy "$bin" "$@"
