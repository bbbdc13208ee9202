package main

import (
	"os"
	"os/exec"
	"testing"
)

// TestRedisScriptCalls checks the load program's Redis helpers against a
// real redis-server: a script call shows in INFO commandstats.
func TestRedisScriptCalls(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (scripts/deps.sh installs it)")
	}
	r, err := startRedis(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer r.stop()
	// throttle_redis_unix reaches the same server through its socket.
	if fi, err := os.Stat(r.sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no Unix socket at %s: %v", r.sock, err)
	}
	before, err := r.scriptCalls()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := r.command("EVAL", "return 'ok'", "0"); err != nil {
			t.Fatal(err)
		}
	}
	after, err := r.scriptCalls()
	if err != nil {
		t.Fatal(err)
	}
	if after-before != 3 {
		t.Fatalf("script calls went from %d to %d, want +3", before, after)
	}
}
