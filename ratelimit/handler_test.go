package ratelimit

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provision provisions h in a fresh caddy context, gives its store a manual
// clock, and cleans up at the end of the test.
func provision(t *testing.T, h *Handler) (*clock, caddy.Context) {
	t.Helper()
	c := new(clock)
	c.t.Store(int64(time.Hour))
	h.now = c.now
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Cleanup()
		cancel()
	})
	return c, ctx
}

var okHandler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
})

// serve runs one request from clientIP through h and returns the recorder
// and the handler's error.
func serve(h *Handler, clientIP string, headers ...string) (*httptest.ResponseRecorder, error) {
	r := httptest.NewRequest(http.MethodGet, "http://example.com/api", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	r.RemoteAddr = "203.0.113.250:1234" // the peer; never used when client_ip is set
	repl := caddyhttp.NewTestReplacer(r)
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: clientIP})
	r = r.WithContext(ctx)
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, okHandler)
	return w, err
}

func status(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return http.StatusOK
	}
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("error is not a caddyhttp.HandlerError: %v", err)
	}
	return he.StatusCode
}

func TestHandlerIETFHeaders(t *testing.T) {
	h := &Handler{Zone: "api", Rate: []Rate{
		{Events: 10, Period: caddy.Duration(time.Second), Burst: 3},
		{Events: 100, Period: caddy.Duration(time.Hour)},
	}}
	c, _ := provision(t, h)

	w, err := serve(h, "192.0.2.1")
	if status(t, err) != 200 {
		t.Fatalf("first request: %v", err)
	}
	if got, want := w.Header().Get("RateLimit-Policy"), `"api";q=3;w=1, "api-2";q=100;w=3600`; got != want {
		t.Errorf("RateLimit-Policy = %s, want %s", got, want)
	}
	// 1 of 3 used: full again in 100ms -> t=1; second rate: 36s -> t=36.
	if got, want := w.Header().Get("RateLimit"), `"api";r=2;t=1, "api-2";r=99;t=36`; got != want {
		t.Errorf("RateLimit = %s, want %s", got, want)
	}
	serve(h, "192.0.2.1")
	serve(h, "192.0.2.1")
	w, err = serve(h, "192.0.2.1")
	if status(t, err) != http.StatusTooManyRequests {
		t.Fatalf("4th request: status %d, want 429", status(t, err))
	}
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1 (100ms rounded up)", got)
	}
	if got, want := w.Header().Get("RateLimit"), `"api";r=0;t=1, "api-2";r=97;t=108`; got != want {
		t.Errorf("RateLimit on 429 = %s, want %s", got, want)
	}
	c.advance(100 * time.Millisecond)
	if _, err := serve(h, "192.0.2.1"); err != nil {
		t.Fatalf("request after Retry-After: %v", err)
	}
}

func TestHandlerRetryAfterRoundsUp(t *testing.T) {
	h := &Handler{Rate: []Rate{{Events: 2, Period: caddy.Duration(5 * time.Second), Burst: 1}}}
	c, _ := provision(t, h)
	serve(h, "192.0.2.1")
	c.advance(time.Millisecond) // 2.499s left
	w, err := serve(h, "192.0.2.1")
	if status(t, err) != 429 {
		t.Fatal("not refused")
	}
	if got := w.Header().Get("Retry-After"); got != "3" {
		t.Errorf("Retry-After = %q, want 3", got)
	}
	if got := w.Header().Get("RateLimit"); got != `"throttle";r=0;t=3` {
		t.Errorf("RateLimit = %q", got)
	}
	c.advance(2499 * time.Millisecond)
	if _, err := serve(h, "192.0.2.1"); err != nil {
		t.Fatalf("refused after the real wait: %v", err)
	}
}

func TestHandlerLegacyAndOffHeaders(t *testing.T) {
	h := &Handler{Headers: HeadersLegacy, Rate: []Rate{
		{Events: 10, Period: caddy.Duration(time.Second), Burst: 10},
		{Events: 2, Period: caddy.Duration(time.Minute)},
	}}
	provision(t, h)
	w, _ := serve(h, "192.0.2.1")
	// The second rate is the most constraining: 1 left, full in 30s.
	for name, want := range map[string]string{"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "30"} {
		if got := w.Header().Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if w.Header().Get("RateLimit") != "" || w.Header().Get("RateLimit-Policy") != "" {
		t.Error("legacy mode sent IETF headers")
	}

	off := &Handler{Headers: HeadersOff, Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
	provision(t, off)
	serve(off, "192.0.2.1")
	w, err := serve(off, "192.0.2.1")
	if status(t, err) != 429 {
		t.Fatal("not refused")
	}
	for name := range w.Header() {
		if name != "Retry-After" {
			t.Errorf("headers off sent %s", name)
		}
	}
}

func TestHandlerPrefixes(t *testing.T) {
	four := 24
	h := &Handler{IPv4Prefix: &four, Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
	provision(t, h)
	for _, tc := range []struct {
		ip   string
		want int
	}{
		{"2001:db8:1:2::1", 200},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", 429}, // same /64
		{"2001:db8:1:3::1", 200},                  // next /64
		{"198.51.100.1", 200},
		{"198.51.100.200", 429},      // same /24
		{"::ffff:198.51.100.7", 429}, // IPv4-mapped is IPv4
		{"198.51.101.1", 200},
	} {
		_, err := serve(h, tc.ip)
		if got := status(t, err); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.ip, got, tc.want)
		}
	}
}

func TestHandlerExempt(t *testing.T) {
	h := &Handler{Exempt: []string{"10.0.0.0/8", "2001:db8::1"}, Key: "{http.request.header.X-Client}",
		Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
	provision(t, h)
	for range 5 {
		if w, err := serve(h, "10.1.2.3", "X-Client", "k"); err != nil || w.Header().Get("RateLimit") != "" {
			t.Fatalf("exempt client limited or counted: %v %v", err, w.Header())
		}
		if _, err := serve(h, "192.0.2.9", "X-Client", "10.9.9.9"); err != nil {
			t.Fatalf("exempt key limited: %v", err)
		}
		if _, err := serve(h, "2001:db8::1"); err != nil {
			t.Fatalf("exempt single address limited: %v", err)
		}
	}
	serve(h, "192.0.2.1", "X-Client", "k")
	if _, err := serve(h, "192.0.2.2", "X-Client", "k"); status(t, err) != 429 {
		t.Fatal("non-exempt key not limited")
	}
}

func TestHandlerKeyPlaceholderAndEmptyFallback(t *testing.T) {
	h := &Handler{Key: "{http.request.header.X-API-Key}", Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
	provision(t, h)
	if _, err := serve(h, "192.0.2.1", "X-API-Key", "alpha"); err != nil {
		t.Fatal(err)
	}
	// Another IP, same API key: same bucket.
	if _, err := serve(h, "192.0.2.2", "X-API-Key", "alpha"); status(t, err) != 429 {
		t.Fatal("same key from another IP not limited")
	}
	if _, err := serve(h, "192.0.2.1", "X-API-Key", "beta"); err != nil {
		t.Fatal("another key limited")
	}
	// No header: falls back to the client IP.
	if _, err := serve(h, "192.0.2.3"); err != nil {
		t.Fatal(err)
	}
	if _, err := serve(h, "192.0.2.3"); status(t, err) != 429 {
		t.Fatal("empty key fallback not limited by client IP")
	}
	if !h.warned.Load() {
		t.Error("empty key did not warn")
	}
}

func TestHandlerDryRun(t *testing.T) {
	h := &Handler{Zone: "dry-test", DryRun: true, Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
	provision(t, h)
	for i := range 3 {
		w, err := serve(h, "192.0.2.1")
		if err != nil {
			t.Fatalf("dry run refused request %d: %v", i+1, err)
		}
		if got := w.Header().Get("RateLimit"); got != `"dry-test";r=0;t=60` {
			t.Errorf("request %d: RateLimit = %q", i+1, got)
		}
		if w.Header().Get("Retry-After") != "" {
			t.Error("dry run sent Retry-After")
		}
	}
	if got := value(h.counters.allowed); got != 1 {
		t.Errorf("allowed = %v, want 1", got)
	}
	if got := value(h.counters.dryRun); got != 2 {
		t.Errorf("dry_run = %v, want 2", got)
	}
	if got := value(h.counters.refused); got != 0 {
		t.Errorf("refused = %v, want 0", got)
	}
}

func TestZoneSharingAndPrivacy(t *testing.T) {
	rate := []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}
	a := &Handler{Zone: "shared-test", Rate: rate}
	b := &Handler{Zone: "shared-test", Rate: rate}
	provision(t, a)
	provision(t, b)
	serve(a, "192.0.2.1")
	if _, err := serve(b, "192.0.2.1"); status(t, err) != 429 {
		t.Error("handlers of one zone do not share state")
	}

	// Two identical unnamed handlers of one config are private.
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	u1 := &Handler{Rate: rate}
	u2 := &Handler{Rate: rate}
	for _, h := range []*Handler{u1, u2} {
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		defer h.Cleanup()
	}
	serve(u1, "192.0.2.1")
	if _, err := serve(u2, "192.0.2.1"); err != nil {
		t.Error("unnamed zones share state")
	}
}

// A reload provisions the new handler before cleaning up the old one: the
// zone's state carries over, named or not.
func TestZoneSurvivesReload(t *testing.T) {
	for _, zone := range []string{"reload-test", ""} {
		ctx1, cancel1 := caddy.NewContext(caddy.Context{Context: context.Background()})
		old := &Handler{Zone: zone, Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
		if err := old.Provision(ctx1); err != nil {
			t.Fatal(err)
		}
		serve(old, "192.0.2.1")

		ctx2, cancel2 := caddy.NewContext(caddy.Context{Context: context.Background()})
		cur := &Handler{Zone: zone, Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute), Burst: 1}}}
		if err := cur.Provision(ctx2); err != nil {
			t.Fatal(err)
		}
		old.Cleanup()
		cancel1()
		if _, err := serve(cur, "192.0.2.1"); status(t, err) != 429 {
			t.Errorf("zone %q: state lost over a reload", zone)
		}
		cur.Cleanup()
		cancel2()
		if _, ok := zones.References(cur.poolKey); ok {
			t.Errorf("zone %q still pooled after the last cleanup", zone)
		}
	}
}

func TestMetricsRegisterTwice(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if _, err := newCounters(reg, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := newCounters(reg, "b"); err != nil {
		t.Fatalf("second registration: %v", err)
	}
	// An equal collector registered by someone else is reused.
	reg2 := prometheus.NewPedanticRegistry()
	foreign := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "caddy_throttle_allowed_total",
		Help: "Requests admitted by the throttle handler.",
	}, []string{"zone"})
	reg2.MustRegister(foreign)
	c, err := newCounters(reg2, "z")
	if err != nil {
		t.Fatal(err)
	}
	c.allowed.Inc()
	if value(foreign.WithLabelValues("z")) != 1 {
		t.Error("existing collector not reused")
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "caddy_throttle_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetName() != "zone" {
				t.Errorf("%s has labels %v, want zone only", mf.GetName(), m.GetLabel())
			}
		}
	}
}

func BenchmarkServeHTTP(b *testing.B) {
	h := &Handler{Rate: []Rate{{Events: 1_000_000_000, Period: caddy.Duration(time.Second)}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"}))
	w := &headerOnly{h: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r, okHandler)
	}
}

type headerOnly struct{ h http.Header }

func (w *headerOnly) Header() http.Header         { return w.h }
func (w *headerOnly) Write(b []byte) (int, error) { return len(b), nil }
func (w *headerOnly) WriteHeader(int)             {}

// value reads a counter.
func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
