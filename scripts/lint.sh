#!/usr/bin/env bash
# Runs golangci-lint with .golangci.yml when it is installed (it is not
# fetched here: CI must not depend on a download). go vet always runs.
set -euo pipefail
cd "$(dirname "$0")/.."
go vet ./...
if command -v golangci-lint >/dev/null 2>&1; then
  golangci-lint run ./...
else
  echo "golangci-lint not installed; ran go vet only" >&2
fi
