package aggregate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// sampleBody is a realistic ~2 KB JSON document.
func sampleBody(seed int) []byte {
	var sb strings.Builder
	fmt.Fprintf(&sb, `{"id":%d,"name":"user-%d","tags":["a","b","c"],"items":[`, seed, seed)
	for i := range 20 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"sku":"SKU-%05d","qty":%d,"price":%d.99,"title":"Item number %d with a longer title"}`, i, i%7, i*3, i)
	}
	sb.WriteString(`],"meta":{"created":"2026-01-02T03:04:05Z","active":true,"score":12345678901234567890}}`)
	return []byte(sb.String())
}

func benchBackends() []*Backend {
	out := make([]*Backend, 3)
	for i := range out {
		b := &Backend{Name: fmt.Sprintf("backend%d", i)}
		b.nameJSON, _ = json.Marshal(b.Name)
		out[i] = b
	}
	return out
}

// BenchmarkEnvelopeSplice is the path the handler takes without target:
// backendValue (UTF-8 and json.Valid) on each body, then its bytes spliced
// into the envelope.
func BenchmarkEnvelopeSplice(b *testing.B) {
	backends := benchBackends()
	bodies := [][]byte{sampleBody(1), sampleBody(2), sampleBody(3)}
	results := make([]result, 3)
	var buf bytes.Buffer
	b.SetBytes(int64(len(bodies[0]) * 3))
	b.ReportAllocs()
	for b.Loop() {
		for i, body := range bodies {
			v, ok := backendValue(body, nil)
			if !ok {
				b.Fatal("invalid")
			}
			results[i] = result{status: 200, value: v}
		}
		buf.Reset()
		writeEnvelope(&buf, backends, results)
	}
}

// BenchmarkEnvelopeDecodeReencode is the alternative: decode each body and
// encode the envelope again (with json.Number so that it stays exact).
func BenchmarkEnvelopeDecodeReencode(b *testing.B) {
	backends := benchBackends()
	bodies := [][]byte{sampleBody(1), sampleBody(2), sampleBody(3)}
	var buf bytes.Buffer
	b.SetBytes(int64(len(bodies[0]) * 3))
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		buf.WriteString(`{"data":{`)
		for i, body := range bodies {
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.UseNumber()
			var v any
			if err := dec.Decode(&v); err != nil {
				b.Fatal(err)
			}
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.Write(backends[i].nameJSON)
			buf.WriteByte(':')
			enc, err := json.Marshal(v)
			if err != nil {
				b.Fatal(err)
			}
			buf.Write(enc)
		}
		buf.WriteString(`}}`)
	}
}

func TestDecodeReencodeBaselineMatchesSplice(t *testing.T) {
	// The two benchmarked paths produce the same data (modulo key order
	// inside objects, which re-encoding sorts).
	body := sampleBody(1)
	var a, b any
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	writeEnvelope(&buf, benchBackends()[:1], []result{{status: 200, value: body}})
	var env struct{ Data map[string]any }
	if err := json.Unmarshal(buf.Bytes(), &env); err != nil {
		t.Fatal(err)
	}
	b = env.Data["backend0"]
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	if !bytes.Equal(x, y) {
		t.Fatal("spliced envelope lost data")
	}
}

// benchUpstreams starts three loopback JSON backends.
func benchUpstreams(b *testing.B) []*httptest.Server {
	b.Helper()
	out := make([]*httptest.Server, 0, 3)
	for i := range 3 {
		body := sampleBody(i)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(body)
		}))
		b.Cleanup(srv.Close)
		out = append(out, srv)
	}
	return out
}

func p50(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// BenchmarkServeHTTP3Backends measures one aggregate request over three
// loopback backends (ns/op, B/op, allocs/op of the whole fan-out, backends
// included) and reports, as p50-added-µs, the median latency of the
// aggregate minus the median latency of the slowest backend called alone
// through an equally tuned client.
func BenchmarkServeHTTP3Backends(b *testing.B) {
	ups := benchUpstreams(b)
	h := &Handler{}
	for i, u := range ups {
		h.Backends = append(h.Backends, &Backend{Name: fmt.Sprintf("b%d", i), URL: u.URL + "/items/{http.request.uri.query.id}"})
	}
	h = provisioned(b, h)

	// The slowest backend alone, through an equally tuned transport.
	direct := &http.Client{Transport: newTransport()}
	defer direct.CloseIdleConnections()
	const samples = 2000
	var slowest time.Duration
	for _, u := range ups {
		lat := make([]time.Duration, 0, samples)
		for range samples {
			start := time.Now()
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, u.URL+"/items/42", nil)
			resp, err := direct.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			lat = append(lat, time.Since(start))
		}
		slowest = max(slowest, p50(lat))
	}

	rec := &discardWriter{h: make(http.Header)}
	lat := make([]time.Duration, 0, 1<<16)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequestWithContext(b.Context(), http.MethodGet, "/?id=42", nil)
		repl := caddy.NewReplacer()
		ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl)
		req = req.WithContext(ctx)
		repl.Map(func(key string) (any, bool) {
			if key == "http.request.uri.query.id" {
				return req.URL.Query().Get("id"), true
			}
			return nil, false
		})
		clear(rec.h)
		start := time.Now()
		if err := h.ServeHTTP(rec, req, nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if rec.status != http.StatusOK {
			b.Fatalf("status %d", rec.status)
		}
	}
	b.StopTimer()
	agg := p50(lat)
	b.ReportMetric(float64(agg.Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(slowest.Nanoseconds())/1e3, "slowest-p50-µs")
	b.ReportMetric(float64((agg-slowest).Nanoseconds())/1e3, "p50-added-µs")
}

// discardWriter is a minimal ResponseWriter for benchmarks.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// cannedTransport answers every request in memory, so that a benchmark
// counts only the handler's own work and allocations.
type cannedTransport struct{ body []byte }

func (ct cannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode:    http.StatusOK,
		Header:        http.Header{"Content-Type": {"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(ct.body)),
		ContentLength: int64(len(ct.body)),
		Request:       req,
	}, nil
}

// BenchmarkServeHTTP3BackendsInMemory is BenchmarkServeHTTP3Backends with
// the network taken out: the handler's own cost per request.
func BenchmarkServeHTTP3BackendsInMemory(b *testing.B) {
	h := &Handler{}
	for i := range 3 {
		h.Backends = append(h.Backends, &Backend{Name: fmt.Sprintf("b%d", i), URL: "http://127.0.0.1:9/items/{id}?q={id}"})
	}
	h = provisioned(b, h)
	h.client.Transport = cannedTransport{body: sampleBody(1)}
	rec := &discardWriter{h: make(http.Header)}
	req := httptest.NewRequestWithContext(b.Context(), http.MethodGet, "/", nil)
	repl := caddy.NewReplacer()
	repl.Set("id", "42")
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
	b.ReportAllocs()
	for b.Loop() {
		clear(rec.h)
		if err := h.ServeHTTP(rec, req, nil); err != nil || rec.status != http.StatusOK {
			b.Fatal(err, rec.status)
		}
	}
}

// BenchmarkCacheHitVsRespond compares a request answered from a backend's
// cache (no backend call: the loopback backend counts its calls) with
// Caddy's plain `respond` (caddyhttp.StaticResponse) of the same body; the
// hit-added-µs metric is the difference of their ns/op.
func BenchmarkCacheHitVsRespond(b *testing.B) {
	body := sampleBody(1)
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(body)
	}))
	b.Cleanup(up.Close)
	h := provisioned(b, &Handler{Backends: []*Backend{
		{Name: "cached", URL: up.URL + "/items/{id}", Cache: &CacheConfig{}},
	}})
	envelope := `{"data":{"cached":` + string(body) + `}}`
	static := &caddyhttp.StaticResponse{
		StatusCode: caddyhttp.WeakString("200"), Body: envelope,
		Headers: http.Header{"Content-Type": {"application/json"}},
	}
	newReq := func() *http.Request {
		req := httptest.NewRequestWithContext(b.Context(), http.MethodGet, "/", nil)
		repl := caddy.NewReplacer()
		repl.Set("id", "42")
		return req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
	}
	rec := &discardWriter{h: make(http.Header)}
	if err := h.ServeHTTP(rec, newReq(), nil); err != nil || calls.Load() != 1 {
		b.Fatal(err, calls.Load())
	}
	var perOp [2]float64
	for i, sub := range []struct {
		name  string
		serve func(http.ResponseWriter, *http.Request) error
	}{
		{"respond", func(w http.ResponseWriter, r *http.Request) error { return static.ServeHTTP(w, r, nil) }},
		{"cache_hit", func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, nil) }},
	} {
		b.Run(sub.name, func(b *testing.B) {
			req := newReq()
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				clear(rec.h)
				if err := sub.serve(rec, req); err != nil {
					b.Fatal(err)
				}
			}
			perOp[i] = float64(time.Since(start).Nanoseconds()) / float64(b.N)
		})
	}
	if calls.Load() != 1 {
		b.Fatalf("%d backend calls, want 1 (every request a hit)", calls.Load())
	}
	b.Logf("cache hit minus respond: %.2f µs per request", (perOp[1]-perOp[0])/1e3)
}

// BenchmarkServeHTTPChain2InMemory is a chain of two backends (the second
// takes its path value from the first) with the network taken out.
func BenchmarkServeHTTPChain2InMemory(b *testing.B) {
	h := provisioned(b, &Handler{Backends: []*Backend{
		{Name: "user", URL: "http://127.0.0.1:9/users/{id}"},
		{Name: "orders", URL: "http://127.0.0.1:9/orders/{backends.user.id}"},
	}})
	h.client.Transport = cannedTransport{body: sampleBody(1)}
	rec := &discardWriter{h: make(http.Header)}
	req := httptest.NewRequestWithContext(b.Context(), http.MethodGet, "/", nil)
	repl := caddy.NewReplacer()
	repl.Set("id", "42")
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
	b.ReportAllocs()
	for b.Loop() {
		clear(rec.h)
		if err := h.ServeHTTP(rec, req, nil); err != nil || rec.status != http.StatusOK {
			b.Fatal(err, rec.status)
		}
	}
}
