package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
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
	r := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "http://example.com/api", nil)
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
	h := &Handler{
		Exempt: []string{"10.0.0.0/8", "2001:db8::1"}, Key: "{http.request.header.X-Client}",
		Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}},
	}
	provision(t, h)
	for range 5 {
		if w, err := serve(h, "10.1.2.3", "X-Client", "k"); err != nil || w.Header().Get("RateLimit") != "" {
			t.Fatalf("exempt client limited or counted: %v %v", err, w.Header())
		}
		if _, err := serve(h, "2001:db8::1"); err != nil {
			t.Fatalf("exempt single address limited: %v", err)
		}
	}
	serve(h, "192.0.2.1", "X-Client", "k")
	if _, err := serve(h, "192.0.2.2", "X-Client", "k"); status(t, err) != 429 {
		t.Fatal("non-exempt key not limited")
	}
	// A key whose text is an exempt address exempts nothing: only the
	// client IP is matched.
	if _, err := serve(h, "192.0.2.9", "X-Client", "10.9.9.9"); err != nil {
		t.Fatal(err)
	}
	if w, err := serve(h, "192.0.2.9", "X-Client", "10.9.9.9"); status(t, err) != 429 {
		t.Fatalf("a key spelling an exempt address is exempt: %v %v", err, w.Header())
	}
}

// Caddy's private ranges hold "::1" without a prefix length: provisioning
// parses it and exempts loopback and private clients.
func TestHandlerExemptPrivateRanges(t *testing.T) {
	h := &Handler{Exempt: []string{"private_ranges"}, Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
	provision(t, h)
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "fd00::5"} {
		for range 3 {
			if w, err := serve(h, ip); err != nil || w.Header().Get("RateLimit") != "" {
				t.Fatalf("private client %s limited or counted: %v %v", ip, err, w.Header())
			}
		}
	}
	serve(h, "192.0.2.1")
	if _, err := serve(h, "192.0.2.1"); status(t, err) != 429 {
		t.Fatal("public client not limited")
	}
}

// A configured key spelling an address never shares state with the
// client-IP fallback for that address, nor with the default key of
// another handler of the zone, whatever the prefix grouping.
func TestHandlerKeysNeverShareWithClientIP(t *testing.T) {
	rate := []Rate{{Events: 1, Period: caddy.Duration(time.Hour)}}
	for _, v4 := range []int{32, 24} {
		zone := fmt.Sprint("keyns-", v4)
		byKey := &Handler{Zone: zone, Key: "{http.request.header.X-Api-Key}", IPv4Prefix: &v4, Rate: rate}
		byIP := &Handler{Zone: zone, IPv4Prefix: &v4, Rate: rate}
		provision(t, byKey)
		provision(t, byIP)
		// Anyone sends the victims' addresses as keys...
		for _, addr := range []string{"192.0.2.50", "203.0.113.60"} {
			if _, err := serve(byKey, "198.51.100.7", "X-Api-Key", addr); err != nil {
				t.Fatal(err)
			}
		}
		// ...and the victims are still served: by the empty key's
		// fallback and by the default key of the zone's other handler.
		if _, err := serve(byKey, "192.0.2.50"); err != nil {
			t.Fatalf("/%d: victim locked out of the key fallback by a key spelling its address", v4)
		}
		if _, err := serve(byIP, "203.0.113.60"); err != nil {
			t.Fatalf("/%d: victim locked out of the default key by a key spelling its address", v4)
		}
		// The key itself is limited, grouped by prefix like an address.
		other := "192.0.2.50"
		if v4 == 24 {
			other = "192.0.2.99"
		}
		if _, err := serve(byKey, "203.0.113.1", "X-Api-Key", other); status(t, err) != 429 {
			t.Fatalf("/%d: key spelling an address not limited", v4)
		}
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
		poolKey := cur.poolKey
		cur.Cleanup()
		cancel2()
		if _, ok := zones.References(poolKey); ok {
			t.Errorf("zone %q still pooled after the last cleanup", zone)
		}
	}
}

// Handlers of one config register the collectors again (fine) and count
// under their zone label only.
func TestMetricsRegisterTwice(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	rate := []Rate{{Events: 1, Period: caddy.Duration(time.Hour)}}
	a := &Handler{Zone: "metrics-a", Rate: rate}
	b := &Handler{Zone: "metrics-b", Rate: rate}
	for _, h := range []*Handler{a, b} {
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		defer h.Cleanup()
	}
	serve(a, "192.0.2.1")
	serve(a, "192.0.2.1")
	serve(b, "192.0.2.1")
	mfs, err := ctx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "caddy_throttle_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := m.GetLabel()
			if mf.GetName() == "caddy_throttle_refusals_total" {
				// zone and reason, in name order
				if len(labels) != 2 || labels[0].GetName() != "reason" || (labels[0].GetValue() != "rate" && labels[0].GetValue() != "concurrency") {
					t.Fatalf("%s has labels %v, want reason and zone", mf.GetName(), labels)
				}
				labels = labels[1:]
			}
			if len(labels) != 1 || labels[0].GetName() != "zone" {
				t.Fatalf("%s has labels %v, want zone only", mf.GetName(), m.GetLabel())
			}
			if mf.GetName() == "caddy_throttle_in_progress" {
				continue
			}
			got[mf.GetName()+"/"+labels[0].GetValue()] += m.GetCounter().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"caddy_throttle_allowed_total/metrics-a": 1,
		"caddy_throttle_refused_total/metrics-a": 1,
		"caddy_throttle_allowed_total/metrics-b": 1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

// One zone named with different rates by two handlers of one config is a
// config error naming the zone; equal rates (however spelled) are fine.
func TestZoneRatesMustAgree(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	fast := &Handler{Zone: "agree", Rate: []Rate{{Events: 100, Period: caddy.Duration(time.Second)}}}
	same := &Handler{Zone: "agree", Rate: []Rate{{Events: 200, Period: caddy.Duration(2 * time.Second), Burst: 100}}}
	slow := &Handler{Zone: "agree", Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Hour)}}}
	for _, h := range []*Handler{fast, same} {
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		defer h.Cleanup()
	}
	err := slow.Provision(ctx)
	if err == nil {
		slow.Cleanup()
		t.Fatal("one zone with two different rates accepted")
	}
	if !strings.Contains(err.Error(), `zone "agree"`) || !strings.Contains(err.Error(), "1/1h0m0s burst 1") {
		t.Errorf("error %q does not name the zone and its rates", err)
	}
	if slow.poolKey != "" {
		t.Error("refused handler holds a zone")
	}
	// Another config may declare other rates: a reload.
	ctx2, cancel2 := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel2()
	if err := slow.Provision(ctx2); err != nil {
		t.Fatalf("other config: %v", err)
	}
	slow.Cleanup()
}

// A reload that changes a zone's rates starts it afresh: state is never
// read under other rates than those that wrote it.
func TestZoneReloadWithNewRatesStartsAfresh(t *testing.T) {
	ctx1, cancel1 := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel1()
	old := &Handler{Zone: "rerate", Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Hour)}}}
	if err := old.Provision(ctx1); err != nil {
		t.Fatal(err)
	}
	defer old.Cleanup()
	serve(old, "192.0.2.1")
	if _, err := serve(old, "192.0.2.1"); status(t, err) != 429 {
		t.Fatal("not limited")
	}
	ctx2, cancel2 := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel2()
	cur := &Handler{Zone: "rerate", Rate: []Rate{{Events: 100, Period: caddy.Duration(time.Second)}}}
	if err := cur.Provision(ctx2); err != nil {
		t.Fatal(err)
	}
	defer cur.Cleanup()
	w, err := serve(cur, "192.0.2.1")
	if err != nil {
		t.Fatalf("new rates read the old rates' state: %v", err)
	}
	if got := w.Header().Get("RateLimit"); got != `"rerate";r=99;t=1` {
		t.Errorf("RateLimit = %q, want a fresh bucket", got)
	}
	// The old config, still running until it is cleaned up, is untouched.
	if _, err := serve(old, "192.0.2.1"); status(t, err) != 429 {
		t.Error("old config's state reset")
	}
}

// A config that fails its checks joins no zone and starts nothing.
func TestProvisionChecksBeforeJoining(t *testing.T) {
	for _, h := range []*Handler{
		{Zone: "bad-rate", Rate: []Rate{{Events: 0, Period: caddy.Duration(time.Second)}}},
		{Zone: "bad-exempt", Exempt: []string{"10.0.0.0/33"}, Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Second)}}},
		{Zone: "bad-headers", Headers: "nope", Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Second)}}},
		{Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Second)}}, MaxKeys: -1},
	} {
		before := sweepers()
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err == nil {
			t.Errorf("%+v provisioned", h)
		}
		if h.poolKey != "" || h.mem != nil {
			t.Errorf("%+v joined a zone before its config was checked", h)
		}
		if h.Zone != "" {
			if _, ok := zones.References(namedKey(h.Zone, []limit{lim(1, time.Second, 1)})); ok {
				t.Errorf("zone %s pooled", h.Zone)
			}
		}
		cancel()
		if n := sweepers(); n > before {
			t.Errorf("%+v: %d sweepers running, %d before", h, n, before)
		}
	}
}

// sweepers counts the zone sweeper goroutines of the process.
func sweepers() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "ratelimit.(*memStore).run(")
}

func BenchmarkServeHTTP(b *testing.B) {
	h := &Handler{Rate: []Rate{{Events: 1_000_000_000, Period: caddy.Duration(time.Second)}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	r := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "http://example.com/", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"}))
	w := &headerOnly{h: make(http.Header)}
	b.ReportAllocs()
	defer cpuPerOp(b)()
	for b.Loop() {
		h.ServeHTTP(w, r, okHandler)
		w.reset()
	}
}

type headerOnly struct{ h http.Header }

// reset drops the rate-limit headers, as a fresh response has none (a
// throttle handler adds its items to those of earlier ones).
func (w *headerOnly) reset() {
	w.h[hdrRateLimit] = nil
	w.h[hdrPolicy] = nil
}

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

// BenchmarkServeHTTPKeyTwoRates: a configured key (a request header through
// the replacer) and two rates, legacy headers.
func BenchmarkServeHTTPKeyTwoRates(b *testing.B) {
	h := &Handler{
		Key:     "{http.request.header.X-Api-Key}",
		Headers: "legacy",
		Rate: []Rate{
			{Events: 1_000_000_000, Period: caddy.Duration(time.Second)},
			{Events: 1_000_000_000, Period: caddy.Duration(time.Hour)},
		},
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	r := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "http://example.com/", nil)
	r.Header.Set("X-Api-Key", "key-0123456789abcdef")
	repl := caddyhttp.NewTestReplacer(r)
	c := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	r = r.WithContext(context.WithValue(c, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"}))
	w := &headerOnly{h: make(http.Header)}
	b.ReportAllocs()
	defer cpuPerOp(b)()
	for b.Loop() {
		h.ServeHTTP(w, r, okHandler)
	}
}

// Each header gets a slice of its own: a later handler editing one value in
// place changes no other header nor the next response. Long zone names,
// whose values outgrow the inline buffer, come out whole.
func TestHandlerHeaderValuesIndependent(t *testing.T) {
	long := strings.Repeat("z", 200)
	for _, tc := range []struct{ zone, mode string }{{"ind", "ietf"}, {long, "ietf"}, {"ind-legacy", "legacy"}} {
		h := &Handler{Zone: tc.zone, Headers: tc.mode, Rate: []Rate{{Events: 10, Period: caddy.Duration(time.Minute)}, {Events: 100, Period: caddy.Duration(time.Hour)}}}
		provision(t, h)
		w1, _ := serve(h, "192.0.2.1")
		for name, vals := range w1.Header() {
			vals[0] = "edited"
			if cap(vals) != 1 {
				t.Errorf("%s: %d values' room shared", name, cap(vals))
			}
		}
		w2, _ := serve(h, "192.0.2.1")
		if tc.mode == "ietf" {
			want := `"` + tc.zone + `";q=10;w=60, "` + tc.zone + `-2";q=100;w=3600`
			if got := w2.Header().Get("RateLimit-Policy"); got != want {
				t.Errorf("policy %q, want %q", got, want)
			}
			want = `"` + tc.zone + `";r=8;t=12, "` + tc.zone + `-2";r=98;t=72`
			if got := w2.Header().Get("RateLimit"); got != want {
				t.Errorf("RateLimit %q, want %q", got, want)
			}
		} else {
			for name, want := range map[string]string{"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "8", "X-RateLimit-Reset": "12"} {
				if got := w2.Header().Get(name); got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
		}
	}
}

// A key made of one placeholder alone is read with Get: the same text as
// ReplaceAll gives.
func TestSinglePlaceholderKeyMatchesReplaceAll(t *testing.T) {
	r := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "http://example.com/a?q=1", nil)
	r.Header.Set("X-Api-Key", "alpha")
	r.Header.Add("X-Two", "a")
	r.Header.Add("X-Two", "b")
	repl := caddyhttp.NewTestReplacer(r)
	for _, k := range []string{"{http.request.header.X-Api-Key}", "{http.request.header.X-Missing}", "{http.request.header.X-Two}", "{http.request.uri.query.q}", "{http.request.port}", "{unknown.thing}", "{a}{b}", "x{http.request.header.X-Api-Key}", "{a\\}}"} {
		name := singlePlaceholder(k)
		if name == "" {
			if strings.Count(k, "{") == 1 && strings.HasPrefix(k, "{") && strings.HasSuffix(k, "}") && !strings.Contains(k, "\\") {
				t.Errorf("%q not recognised as one placeholder", k)
			}
			continue
		}
		got, _ := repl.GetString(name)
		if want := repl.ReplaceAll(k, ""); got != want {
			t.Errorf("%q: Get gives %q, ReplaceAll %q", k, got, want)
		}
	}
}
