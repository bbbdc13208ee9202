#!/usr/bin/env bash
# Runs go vet, then golangci-lint with .golangci.yml (tests included). The
# linter is pinned: it is built from the Go module proxy at this exact
# version into bin/tools on first use, so every machine and CI lint alike.
set -euo pipefail
cd "$(dirname "$0")/.."
GOLANGCI_LINT_VERSION=v2.15.0
go vet ./...
tools="$PWD/bin/tools"
lint="$tools/golangci-lint-$GOLANGCI_LINT_VERSION"
if [ ! -x "$lint" ]; then
  mkdir -p "$tools"
  GOBIN="$tools" go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
  mv "$tools/golangci-lint" "$lint"
fi
"$lint" run ./...
