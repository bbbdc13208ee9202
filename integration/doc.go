// Package integration holds the tests that run a real Caddy: in-process
// through caddytest, and end to end through a binary built with xcaddy. All of
// them live in this one package because an in-process Caddy is a process-wide
// singleton; run it serially (`go test -p 1`).
package integration
