# caddy-gateway. `make run` builds Caddy with the gateway (xcaddy) and runs
# Caddyfile.example; `make test` runs every test.

CADDY_VERSION ?= v2.11.9
MODULE        := github.com/caddygateway/caddy-gateway
# The module path is not published, so xcaddy is given the zero
# pseudo-version with a local replacement (a bare `=.` makes `go get` ask the
# module proxy for the path, which refuses it).
WITH          := $(MODULE)@v0.0.0-00010101000000-000000000000=$(CURDIR)
BIN           ?= bin/caddy

.PHONY: build run test lint fuzz bench load clean

build:
	go tool xcaddy build $(CADDY_VERSION) --output $(BIN) --with $(WITH)

run: build
	$(BIN) run --config Caddyfile.example --adapter caddyfile

test:
	bash scripts/test.sh

lint:
	bash scripts/lint.sh

# Every package with a Go benchmark (found, so that a new package's
# benchmarks run without editing this list).
BENCH_PKGS     = $(sort $(dir $(shell grep -rl --include='*_test.go' '^func Benchmark' .)))

bench:
	go test -run '^$$' -bench . -benchmem $(BENCH_PKGS)

fuzz:
	FUZZTIME=$${FUZZTIME:-60s} bash scripts/fuzz.sh

# Builds the tree into a temporary binary (or uses CADDY_BIN) and prints
# the load table; LOAD_FLAGS go to internal/loadtest (-n, -rounds, -only,
# -pprof DIR, ...).
load:
	bash scripts/load.sh $(LOAD_FLAGS)

clean:
	rm -rf bin
