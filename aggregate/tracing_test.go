package aggregate

import (
	"context"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/caddyserver/caddy/v2"
)

// traceBackends starts a JSON backend and a failing one, both recording
// the traceparent and tracestate each path received.
func traceBackends(t *testing.T) (ok, failing *httptest.Server, seen func() map[string][2]string) {
	t.Helper()
	var mu sync.Mutex
	got := map[string][2]string{}
	record := func(r *http.Request) {
		mu.Lock()
		got[r.URL.Path] = [2]string{r.Header.Get("Traceparent"), r.Header.Get("Tracestate")}
		mu.Unlock()
	}
	ok = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(r)
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(ok.Close)
	failing = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(failing.Close)
	return ok, failing, func() map[string][2]string {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(got)
	}
}

func TestBackendCallsAreChildSpans(t *testing.T) {
	ok, failing, seen := traceBackends(t)
	h := provisioned(t, &Handler{Backends: []*Backend{
		{Name: "user", URL: ok.URL + "/users/{http.request.uri.query.id}"},
		{Name: "orders", URL: strings.Replace(failing.URL, "://", "://svc:s3cret@", 1) + "/orders"},
	}})

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	// What Caddy's tracing handler does: a server span in the request context.
	ctx, server := tp.Tracer("test").Start(t.Context(), "server", trace.WithSpanKind(trace.SpanKindServer))
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/?id=42", nil)
	req.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") // overridden
	resp, err := serve(h, req)
	server.End()
	if err != nil || resp.Code != http.StatusOK {
		t.Fatalf("%v %d %s", err, resp.Code, resp.Body)
	}

	spans := rec.Ended()
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = s
	}
	if len(spans) != 3 || byName["user"] == nil || byName["orders"] == nil {
		t.Fatalf("spans %v", spanNames(spans))
	}
	got := seen()
	for name, path := range map[string]string{"user": "/users/42", "orders": "/orders"} {
		s := byName[name]
		if s.Parent().SpanID() != server.SpanContext().SpanID() || s.SpanContext().TraceID() != server.SpanContext().TraceID() {
			t.Errorf("%s: not a child of the request's span", name)
		}
		if s.SpanKind() != trace.SpanKindClient {
			t.Errorf("%s: kind %v", name, s.SpanKind())
		}
		want := "00-" + s.SpanContext().TraceID().String() + "-" + s.SpanContext().SpanID().String() + "-01"
		if got[path][0] != want {
			t.Errorf("%s: backend saw traceparent %q, want its span's %q", name, got[path][0], want)
		}
	}
	attrs := func(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
		m := map[attribute.Key]attribute.Value{}
		for _, kv := range s.Attributes() {
			m[kv.Key] = kv.Value
		}
		return m
	}
	u := attrs(byName["user"])
	if u["url.template"].AsString() != ok.URL+"/users/{http.request.uri.query.id}" || // the template, not the ID
		u["http.response.status_code"].AsInt64() != 200 || u["aggregate.outcome"].AsString() != "ok" ||
		u["aggregate.backend"].AsString() != "user" || u["http.request.method"].AsString() != "GET" {
		t.Errorf("user span attributes %v", u)
	}
	if byName["user"].Status().Code == codes.Error {
		t.Error("successful call has an error status")
	}
	o := attrs(byName["orders"])
	if o["url.template"].AsString() != failing.URL+"/orders" {
		t.Errorf("orders url.template %q: userinfo must not reach a trace", o["url.template"].AsString())
	}
	if o["http.response.status_code"].AsInt64() != 503 || o["aggregate.outcome"].AsString() != "status" ||
		byName["orders"].Status().Code != codes.Error {
		t.Errorf("orders span attributes %v, status %v", o, byName["orders"].Status())
	}
}

func spanNames(spans []sdktrace.ReadOnlySpan) []string {
	names := make([]string, 0, len(spans))
	for _, s := range spans {
		names = append(names, s.Name())
	}
	slices.Sort(names)
	return names
}

func TestClientTraceContextPropagatedWithoutTracing(t *testing.T) {
	ok, failing, seen := traceBackends(t)
	h := provisioned(t, &Handler{Backends: []*Backend{
		{Name: "a", URL: ok.URL + "/a"},
		{Name: "b", URL: failing.URL + "/b"},
	}})
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	const ts = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
	req.Header.Set("Traceparent", tp)
	req.Header.Set("Tracestate", ts)
	if _, err := serve(h, req); err != nil {
		t.Fatal(err)
	}
	for path, v := range seen() {
		if v != [2]string{tp, ts} {
			t.Errorf("%s: saw %q, want the client's trace context unchanged", path, v)
		}
	}
	// No trace context from the client: none invented.
	req = httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
	if _, err := serve(h, req); err != nil {
		t.Fatal(err)
	}
	for path, v := range seen() {
		if strings.Join(v[:], "") != "" {
			t.Errorf("%s: saw %q without a client trace context", path, v)
		}
	}
}

// A cache hit and a breaker refusal are visible on the backend's span,
// with no call made; the span's url.template never holds a query value.
func TestSpanShowsCacheHitAndBreakerRefusal(t *testing.T) {
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path == "/down" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(up.Close)
	h := provisioned(t, &Handler{Backends: []*Backend{
		{Name: "cached", URL: up.URL + "/c?api_key=s3cret&id={http.request.uri.query.id}", Cache: &CacheConfig{}},
		{Name: "down", URL: up.URL + "/down", Breaker: &BreakerConfig{Failures: 1, Cooldown: caddy.Duration(time.Minute)}},
	}})
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	for range 2 {
		ctx, server := tp.Tracer("test").Start(t.Context(), "server", trace.WithSpanKind(trace.SpanKindServer))
		if _, err := serve(h, httptest.NewRequestWithContext(ctx, http.MethodGet, "/?id=42", nil)); err != nil {
			t.Fatal(err)
		}
		server.End()
	}
	if calls.Load() != 2 {
		t.Fatalf("%d calls, want 2 (one each, then a hit and a refusal)", calls.Load())
	}
	var got []string
	for _, s := range rec.Ended() {
		if s.Name() == "server" {
			continue
		}
		m := map[attribute.Key]string{}
		for _, kv := range s.Attributes() {
			m[kv.Key] = kv.Value.String()
		}
		if s.Name() == "cached" && m["url.template"] != up.URL+"/c?api_key&id" {
			t.Errorf("url.template %q", m["url.template"])
		}
		got = append(got, s.Name()+":"+m["aggregate.cache"]+":"+m["aggregate.breaker"]+":"+m["aggregate.outcome"])
	}
	slices.Sort(got)
	want := []string{"cached:hit::ok", "cached:miss::ok", "down:::status", "down::open:circuit_open"}
	if !slices.Equal(got, want) {
		t.Fatalf("spans %v, want %v", got, want)
	}
}
