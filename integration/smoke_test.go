package integration

import (
	"net/http"
	"testing"
)

// TestHarnessServes checks the in-process harness itself: a config loads on
// this process's free ports and answers.
func TestHarnessServes(t *testing.T) {
	tc := gateway(t, "", `respond "ok" 200`)
	resp, body := do(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}
