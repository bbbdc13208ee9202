package integration

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// traceRecorder is a backend that records the W3C trace context of every
// request, by path.
type traceRecorder struct {
	*aggUpstream
	mu   sync.Mutex
	seen map[string][2]string
}

func newTraceRecorder(t *testing.T) *traceRecorder {
	t.Helper()
	tr := &traceRecorder{seen: map[string][2]string{}}
	tr.aggUpstream = newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		tr.seen[r.URL.Path] = [2]string{r.Header.Get("Traceparent"), r.Header.Get("Tracestate")}
		tr.mu.Unlock()
		io.WriteString(w, `{}`)
	})
	return tr
}

func (tr *traceRecorder) get(path string) [2]string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.seen[path]
}

// With `tracing` on the route, every backend request carries the trace
// context of its own child span: the client's trace id, a new parent id
// (neither the client's nor the server span's). Without it, the client's
// trace context goes on unchanged.
func TestAggregateTraceContextThroughCaddy(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "none") // Caddy's tracing exports nowhere
	up := newTraceRecorder(t)
	tc := gateway(t, "", `
	handle /traced {
		tracing
		header X-Span-Id {http.vars.span_id}
		aggregate {
			backend a `+up.URL+`/traced/a
			backend b `+up.URL+`/traced/b
		}
	}
	handle /plain {
		aggregate {
			backend a `+up.URL+`/plain/a
			backend b `+up.URL+`/plain/b
		}
	}`)
	const (
		traceID    = "4bf92f3577b34da6a3ce929d0e0e4736"
		clientSpan = "00f067aa0ba902b7"
		parent     = "00-" + traceID + "-" + clientSpan + "-01"
		state      = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
	)
	resp, body := send(t, tc, get(t, "/traced", "Traceparent", parent, "Tracestate", state))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("traced: status %d: %s", resp.StatusCode, body)
	}
	serverSpan := resp.Header.Get("X-Span-Id")
	if len(serverSpan) != 16 {
		t.Fatalf("no server span (X-Span-Id %q): is tracing on?", serverSpan)
	}
	parents := map[string]bool{}
	for _, p := range []string{"/traced/a", "/traced/b"} {
		got := up.get(p)
		parts := strings.Split(got[0], "-")
		if len(parts) != 4 || parts[0] != "00" || parts[1] != traceID || parts[3] != "01" {
			t.Fatalf("%s: traceparent %q is not in the client's trace", p, got[0])
		}
		if parts[2] == clientSpan || parts[2] == serverSpan {
			t.Errorf("%s: parent id %s is not a span of its own (client %s, server %s)", p, parts[2], clientSpan, serverSpan)
		}
		parents[parts[2]] = true
		if got[1] != state {
			t.Errorf("%s: tracestate %q, want %q", p, got[1], state)
		}
	}
	if len(parents) != 2 {
		t.Errorf("both backends saw the same parent id: %v", parents)
	}

	resp, body = send(t, tc, get(t, "/plain", "Traceparent", parent, "Tracestate", state))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("plain: status %d: %s", resp.StatusCode, body)
	}
	for _, p := range []string{"/plain/a", "/plain/b"} {
		if got := up.get(p); got != [2]string{parent, state} {
			t.Errorf("%s: saw %q, want the client's trace context unchanged", p, got)
		}
	}
}

// scrape returns the lines of Caddy's admin /metrics that start with
// prefix.
func scrape(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	for line := range strings.SplitSeq(metricsText(t), "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return out
}

// sample returns the value of series in lines (0 when absent).
func sample(t *testing.T, lines []string, series string) float64 {
	t.Helper()
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	return 0
}

func TestAggregateMetricsThroughCaddy(t *testing.T) {
	user := newAggUpstream(t, aggJSON(`{"id":"u-1"}`))
	failing := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	tc := gateway(t, "metrics", `
	aggregate {
		backend m_user `+user.URL+`/users/{query.id}
		backend m_orders `+failing.URL+`/orders?user={query.id}
		backend m_gone `+aggClosedURL()+`/x
	}`)
	before := scrape(t, "caddy_aggregate_")
	const n = 3
	for i := range n {
		resp, body := send(t, tc, get(t, fmt.Sprintf("/?id=secret-id-%d", i), "X-Forwarded-For", "198.51.100.7"))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	}
	after := scrape(t, "caddy_aggregate_")
	for series, want := range map[string]float64{
		`caddy_aggregate_backend_calls_total{backend="m_user",outcome="ok"}`:          n,
		`caddy_aggregate_backend_calls_total{backend="m_orders",outcome="status"}`:    n,
		`caddy_aggregate_backend_calls_total{backend="m_gone",outcome="unreachable"}`: n,
		`caddy_aggregate_backend_calls_total{backend="m_user",outcome="timeout"}`:     0,
		`caddy_aggregate_backend_duration_seconds_count{backend="m_user"}`:            n,
		`caddy_aggregate_backend_duration_seconds_count{backend="m_orders"}`:          n,
		`caddy_aggregate_backend_duration_seconds_bucket{backend="m_gone",le="+Inf"}`: n,
		`caddy_aggregate_responses_total{complete="false",status="200"}`:              n,
		`caddy_aggregate_responses_total{complete="true",status="200"}`:               0,
	} {
		if got := sample(t, after, series) - sample(t, before, series); got != want {
			t.Errorf("%s grew by %v, want %v", series, got, want)
		}
	}
	if sample(t, after, `caddy_aggregate_backend_calls_total{backend="m_user",outcome="ok"}`) == 0 {
		t.Fatalf("no aggregate series on /metrics:\n%s", strings.Join(after, "\n"))
	}
	// Labels come from the config: no path, ID or client address.
	for _, l := range after {
		for _, leak := range []string{"secret-id", "/users", "/orders", "198.51.100.7", "127.0.0.1", "localhost"} {
			if strings.Contains(l, leak) {
				t.Errorf("metric line holds %q: %s", leak, l)
			}
		}
	}
}
