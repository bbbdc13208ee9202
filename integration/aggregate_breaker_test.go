package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// adminAggregate returns the admin API's view of the named backend.
func adminAggregate(t *testing.T, name string) map[string]any {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, fmt.Sprintf("http://localhost:%d/gateway/aggregate", adminPort), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var found map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["name"] == name {
				found = x
				return
			}
			for _, y := range x {
				walk(y)
			}
		case []any:
			for _, y := range x {
				walk(y)
			}
		}
	}
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("GET /gateway/aggregate: %d %s", resp.StatusCode, body)
	}
	walk(doc)
	if found == nil {
		t.Fatalf("backend %q not in /gateway/aggregate: %s", name, body)
	}
	return found
}

// Failures in a row (5xx, unreachable, timeout) open the breaker; while it
// is open, no call is made and the backend fails at once with
// circuit_open; a 4xx counts as a success and ends the run; after the
// cooldown one trial goes through and its success closes the breaker.
func TestAggregateBreakerOpensAndRecovers(t *testing.T) {
	var status atomic.Int32
	status.Store(http.StatusInternalServerError)
	up := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(status.Load()))
		io.WriteString(w, `{}`)
	})
	tc := gateway(t, "", `
	aggregate {
		backend flaky `+up.URL+`/x {
			breaker 3 2s
		}
		backend other `+up.URL+`/other {
			fallback null
		}
	}`)
	call := func() []string {
		t.Helper()
		_, body := send(t, tc, get(t, "/"))
		return aggDecode(t, body).errs()
	}
	// 500, 500, 404 (a success: ends the run), 500, 500: still closed.
	for _, s := range []int32{500, 500, 404, 500, 500} {
		status.Store(s)
		call()
	}
	if st := adminAggregate(t, "flaky"); st["breaker"] != "closed" || st["failures"] != 2.0 {
		t.Fatalf("after 500 500 404 500 500: %v", st)
	}
	status.Store(http.StatusServiceUnavailable)
	call() // third failure in a row: open
	hits := up.hits.Load()
	for range 5 {
		if errs := call(); !slices.Contains(errs, "flaky:circuit_open") {
			t.Fatalf("open breaker: %v", errs)
		}
	}
	// Only the other backend was called.
	if got := up.hits.Load() - hits; got != 5 {
		t.Fatalf("%d calls while open, want 5 (other only)", got)
	}
	if st := adminAggregate(t, "flaky"); st["breaker"] != "open" {
		t.Fatalf("admin: %v", st)
	}
	if m := metricsText(t); !strings.Contains(m, `caddy_aggregate_breaker_state{backend="flaky"} 2`) ||
		!strings.Contains(m, `caddy_aggregate_backend_calls_total{backend="flaky",outcome="circuit_open"} 5`) {
		t.Errorf("metrics lack the open breaker")
	}

	// After the cooldown, one trial: it fails, the breaker opens again.
	// The cooldown is 2s, so that the calls checked as refused while it
	// is open cannot outlast it on a slow machine.
	time.Sleep(2100 * time.Millisecond)
	if errs := call(); !slices.Contains(errs, "flaky:status:503") {
		t.Fatalf("trial: %v", errs)
	}
	if errs := call(); !slices.Contains(errs, "flaky:circuit_open") {
		t.Fatalf("after a failed trial: %v", errs)
	}
	// Next cooldown: the trial succeeds and closes it.
	time.Sleep(2100 * time.Millisecond)
	status.Store(http.StatusOK)
	for range 3 {
		if errs := call(); len(errs) != 0 {
			t.Fatalf("after a good trial: %v", errs)
		}
	}
	if st := adminAggregate(t, "flaky"); st["breaker"] != "closed" || st["failures"] != 0.0 {
		t.Fatalf("admin: %v", st)
	}
}

// Unreachable and timed-out calls count as failures too.
func TestAggregateBreakerCountsUnreachableAndTimeout(t *testing.T) {
	hang := newAggUpstream(t, aggSlow)
	tc := gateway(t, "", `
	aggregate {
		backend gone `+aggClosedURL()+`/x {
			breaker 2 1m
		}
		backend slow `+hang.URL+`/x {
			timeout 50ms
			breaker 2 1m
		}
	}`)
	for range 2 {
		send(t, tc, get(t, "/"))
	}
	hits := hang.hits.Load()
	_, body := send(t, tc, get(t, "/"))
	if errs := aggDecode(t, body).errs(); !slices.Equal(errs, []string{"gone:circuit_open", "slow:circuit_open"}) {
		t.Fatalf("errors %v", errs)
	}
	if hang.hits.Load() != hits {
		t.Fatal("a call went through an open breaker")
	}
}

// The breaker's state survives a reload that keeps the backend, and starts
// afresh for a backend that changed.
func TestAggregateBreakerSurvivesReload(t *testing.T) {
	up := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	})
	site := func(extra, cooldown string) string {
		return `
	handle /other {
		respond "` + extra + `"
	}
	aggregate {
		backend b ` + up.URL + `/x {
			breaker 1 ` + cooldown + `
		}
	}`
	}
	tc := gateway(t, "", site("one", "1m"))
	send(t, tc, get(t, "/"))
	tc = gateway(t, "", site("two", "1m")) // the backend is unchanged
	hits := up.hits.Load()
	_, body := send(t, tc, get(t, "/"))
	if errs := aggDecode(t, body).errs(); !slices.Equal(errs, []string{"b:circuit_open"}) || up.hits.Load() != hits {
		t.Fatalf("after a reload keeping the backend: %v, %d calls", errs, up.hits.Load()-hits)
	}
	tc = gateway(t, "", site("two", "2m")) // the backend changed
	_, body = send(t, tc, get(t, "/"))
	if errs := aggDecode(t, body).errs(); !slices.Equal(errs, []string{"b:status:502"}) {
		t.Fatalf("after a reload changing the backend: %v", errs)
	}
}
