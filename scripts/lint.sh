#!/usr/bin/env bash
# Runs go vet, and golangci-lint with .golangci.yml when it is installed
# (`go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@latest`;
# it is not fetched here: CI must not depend on a download).
set -euo pipefail
cd "$(dirname "$0")/.."
go vet ./...
lint=$(command -v golangci-lint || true)
[ -n "$lint" ] || { [ -x "$(go env GOPATH)/bin/golangci-lint" ] && lint="$(go env GOPATH)/bin/golangci-lint"; } || true
if [ -n "$lint" ]; then
  "$lint" run ./...
else
  echo "golangci-lint not installed; ran go vet only" >&2
fi
