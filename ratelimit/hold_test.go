package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// blocking is a next handler that blocks each request until release is
// closed, telling started when it runs.
type blocking struct {
	started chan struct{}
	release chan struct{}
	status  int
	header  map[string]string
}

func newBlocking() *blocking {
	return &blocking{started: make(chan struct{}, 100), release: make(chan struct{})}
}

func (b *blocking) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	for k, v := range b.header {
		w.Header().Set(k, v)
	}
	if b.status != 0 {
		w.WriteHeader(b.status)
	}
	b.started <- struct{}{}
	select {
	case <-b.release:
	case <-r.Context().Done():
	}
	return nil
}

// serveAsync serves one request of ip in the background and returns a
// channel with its recorder once it is done.
func serveAsync(h *Handler, ip string, next caddyhttp.Handler, hdr ...string) <-chan *httptest.ResponseRecorder {
	ch := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		w, err := serveWith(h, ip, next, hdr...)
		if err != nil {
			if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok {
				w.Code = he.StatusCode
			}
		}
		ch <- w
	}()
	return ch
}

// serveWith serves one request of ip through h to next.
func serveWith(h *Handler, ip string, next caddyhttp.Handler, hdr ...string) (*httptest.ResponseRecorder, error) {
	return serveCtx(context.Background(), h, ip, next, hdr...)
}

func serveCtx(ctx context.Context, h *Handler, ip string, next caddyhttp.Handler, hdr ...string) (*httptest.ResponseRecorder, error) {
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://example.com/", nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	repl := caddyhttp.NewTestReplacer(r)
	c := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	r = r.WithContext(context.WithValue(c, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip}))
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return next.ServeHTTP(w, r)
	}))
	return w, err
}

func code(w *httptest.ResponseRecorder, err error) int {
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok {
		return he.StatusCode
	}
	if err != nil {
		return -1
	}
	return w.Code
}

func inflight(s *memStore) int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, c := range sh.inflight {
			n += int(c)
		}
		sh.mu.Unlock()
	}
	return n
}

// TestConcurrentMemory: with concurrent 2, two requests of one key in
// progress pass, a third is refused 429 with Retry-After 1 and its own
// header item; once one finishes, the next passes; other keys are not
// affected; counts return to zero.
func TestConcurrentMemory(t *testing.T) {
	h := &Handler{Zone: "conc-mem", Concurrent: 2}
	provision(t, h)
	b := newBlocking()
	first := serveAsync(h, "192.0.2.1", b)
	second := serveAsync(h, "192.0.2.1", b)
	<-b.started
	<-b.started
	w, err := serveWith(h, "192.0.2.1", okHandler)
	if code(w, err) != 429 || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("third request: %d, Retry-After %q; want 429, 1", code(w, err), w.Header().Get("Retry-After"))
	}
	if got := w.Header().Get("RateLimit"); got != `"conc-mem-concurrency";r=0` {
		t.Errorf("RateLimit %q", got)
	}
	if got := w.Header().Get("RateLimit-Policy"); got != `"conc-mem-concurrency";q=2;qu="concurrent-requests"` {
		t.Errorf("RateLimit-Policy %q", got)
	}
	if w, err := serveWith(h, "192.0.2.2", okHandler); code(w, err) != 200 || w.Header().Get("RateLimit") != `"conc-mem-concurrency";r=1` {
		t.Fatalf("another client: %d %q", code(w, err), w.Header().Get("RateLimit"))
	}
	if got := value(h.counters.refusedConc); got != 1 {
		t.Errorf("concurrency refusals %v, want 1", got)
	}
	close(b.release)
	<-first
	<-second
	if n := inflight(h.mem); n != 0 {
		t.Fatalf("%d slots held after every request finished", n)
	}
	if w, err := serveWith(h, "192.0.2.1", okHandler); code(w, err) != 200 {
		t.Fatalf("after release: %d", code(w, err))
	}
}

// TestConcurrentClientGoneReleases: a request whose client goes away gives
// its slot back.
func TestConcurrentClientGoneReleases(t *testing.T) {
	h := &Handler{Zone: "conc-gone", Concurrent: 1}
	provision(t, h)
	b := newBlocking()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_, _ = serveCtx(ctx, h, "192.0.2.1", b)
		close(done)
	}()
	<-b.started
	if w, err := serveWith(h, "192.0.2.1", okHandler); code(w, err) != 429 {
		t.Fatalf("second: %d, want 429", code(w, err))
	}
	cancel()
	<-done
	if n := inflight(h.mem); n != 0 {
		t.Fatalf("%d slots held after the client left", n)
	}
}

// upgrading answers 101 and then holds the connection until release.
type upgrading struct{ blocking }

func (u *upgrading) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(http.StatusSwitchingProtocols)
	u.started <- struct{}{}
	<-u.release
	return nil
}

// TestConcurrentUpgradeReleases: an upgraded connection gives its slot back
// once the upgrade is answered, while it still runs.
func TestConcurrentUpgradeReleases(t *testing.T) {
	h := &Handler{Zone: "conc-ws", Concurrent: 1}
	provision(t, h)
	u := &upgrading{*newBlocking()}
	ws := serveAsync(h, "192.0.2.1", u, "Connection", "Upgrade", "Upgrade", "websocket")
	<-u.started
	if n := inflight(h.mem); n != 0 {
		t.Fatalf("%d slots held by an upgraded connection", n)
	}
	if w, err := serveWith(h, "192.0.2.1", okHandler); code(w, err) != 200 {
		t.Fatalf("request beside a WebSocket: %d, want 200", code(w, err))
	}
	close(u.release)
	<-ws
	if n := inflight(h.mem); n != 0 {
		t.Fatalf("%d slots held", n)
	}
	if v := gaugeValue(h); v != 0 {
		t.Fatalf("in_progress %v, want 0", v)
	}
}

func gaugeValue(h *Handler) float64 {
	var m dto.Metric
	if err := h.counters.inProgress.Write(&m); err != nil {
		panic(err)
	}
	return m.GetGauge().GetValue()
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestConcurrentBesideRatesAllOrNothing: a request refused for want of a
// slot takes nothing from the rates, and one refused by a rate takes no
// slot.
func TestConcurrentBesideRatesAllOrNothing(t *testing.T) {
	h := &Handler{Zone: "conc-rates", Concurrent: 1, Rate: []Rate{rate(1, time.Hour, 3)}}
	provision(t, h)
	b := newBlocking()
	held := serveAsync(h, "192.0.2.1", b)
	<-b.started
	for range 5 {
		if w, err := serveWith(h, "192.0.2.1", okHandler); code(w, err) != 429 {
			t.Fatalf("beside a held slot: %d, want 429", code(w, err))
		}
	}
	close(b.release)
	<-held
	// The rate spent 1 of 3: two more pass, then the rate refuses, and
	// its refusals hold no slot.
	for i := range 2 {
		if w, err := serveWith(h, "192.0.2.1", okHandler); code(w, err) != 200 {
			t.Fatalf("request %d after release: %d (refusals for concurrency consumed the rate)", i, code(w, err))
		}
	}
	w, err := serveWith(h, "192.0.2.1", okHandler)
	if code(w, err) != 429 || inflight(h.mem) != 0 {
		t.Fatalf("rate spent: %d with %d slots held", code(w, err), inflight(h.mem))
	}
	if got := w.Header().Get("RateLimit"); got != `"conc-rates";r=0;t=3600, "conc-rates-concurrency";r=1` {
		t.Errorf("RateLimit %q", got)
	}
	if value(h.counters.refusedRate) != 1 || value(h.counters.refusedConc) != 5 {
		t.Errorf("refusals rate %v, concurrency %v; want 1 and 5", value(h.counters.refusedRate), value(h.counters.refusedConc))
	}
}

// TestConcurrentExactMemory: N simultaneous requests of one key: exactly n
// pass.
func TestConcurrentExactMemory(t *testing.T) {
	h := &Handler{Zone: "conc-exact", Concurrent: 7}
	provision(t, h)
	b := newBlocking()
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			w, err := serveWith(h, "192.0.2.1", b)
			mu.Lock()
			codes[code(w, err)]++
			mu.Unlock()
		})
	}
	for range 7 {
		<-b.started
	}
	// 43 refusals come back while 7 are held.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		n := codes[429]
		mu.Unlock()
		if n == 43 || time.Now().After(deadline) {
			break
		}
	}
	close(b.release)
	wg.Wait()
	if codes[200] != 7 || codes[429] != 43 {
		t.Fatalf("statuses %v, want 7 × 200 and 43 × 429", codes)
	}
	if n := inflight(h.mem); n != 0 {
		t.Fatalf("%d slots leaked", n)
	}
}

// TestCostStatic: a request takes cost units from every rate; the headers
// count units; Retry-After is when that same request would pass.
func TestCostStatic(t *testing.T) {
	h := &Handler{Zone: "cost-static", Cost: "4", Rate: []Rate{rate(1, time.Second, 10), rate(100, time.Hour, 100)}}
	provision(t, h)
	w, err := serveWith(h, "192.0.2.1", okHandler)
	if code(w, err) != 200 {
		t.Fatal(code(w, err))
	}
	if got := w.Header().Get("RateLimit"); got != `"cost-static";r=6;t=4, "cost-static-2";r=96;t=144` {
		t.Errorf("RateLimit %q", got)
	}
	serveWith(h, "192.0.2.1", okHandler)
	w, err = serveWith(h, "192.0.2.1", okHandler) // 8 spent, 2 left: 4 do not fit
	if code(w, err) != 429 {
		t.Fatalf("third request of cost 4 with 2 left: %d", code(w, err))
	}
	if got := w.Header().Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q, want 2 (two more units)", got)
	}
	if got := w.Header().Get("RateLimit"); got != `"cost-static";r=2;t=8, "cost-static-2";r=92;t=288` {
		t.Errorf("refused RateLimit %q (a refusal takes nothing)", got)
	}
}

// TestCostPlaceholder: the cost is resolved per request; a value that is
// not a whole number from 1 to the smallest burst is refused 400 and takes
// nothing.
func TestCostPlaceholder(t *testing.T) {
	h := &Handler{Zone: "cost-ph", Cost: "{http.request.header.X-Cost}", Rate: []Rate{rate(1, time.Hour, 10)}}
	provision(t, h)
	for _, bad := range []string{"", "0", "-1", "11", "1.5", "abc", "99999999999999999999", "+3", " "} {
		w, err := serveWith(h, "192.0.2.1", okHandler, "X-Cost", bad)
		if code(w, err) != 400 {
			t.Errorf("cost %q: %d, want 400", bad, code(w, err))
		}
	}
	w, err := serveWith(h, "192.0.2.1", okHandler, "X-Cost", "10")
	if code(w, err) != 200 || w.Header().Get("RateLimit") != `"cost-ph";r=0;t=3600` {
		t.Fatalf("cost 10 after bad ones: %d %q (a bad cost took something)", code(w, err), w.Header().Get("RateLimit"))
	}
}

// TestCostHeaderSettles: the reported cost replaces the up-front one on
// every rate: a charge leaves the key in debt until it is paid, a smaller
// report gives back; missing or invalid reports leave the up-front cost.
func TestCostHeaderSettles(t *testing.T) {
	h := &Handler{Zone: "settle", CostHeader: "X-Tokens-Used", Rate: []Rate{rate(10, time.Second, 10), rate(100, time.Minute, 100)}}
	clk, _ := provision(t, h)
	reply := func(v string) caddyhttp.Handler {
		return caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
			if v != "" {
				w.Header().Set("X-Tokens-Used", v)
			}
			return nil
		})
	}
	k := h.key(httptest.NewRequestWithContext(context.Background(), http.MethodGet, "/", nil), mustAddr("192.0.2.1"))
	remaining := func() [2]int64 {
		out := make([]verdict, 2)
		d, _ := h.mem.acquire(context.Background(), k, ask{units: 1}, h.limits, out)
		if d.allowed {
			h.mem.settle(k, h.limits, -1) // give the probe back
		}
		return [2]int64{out[0].remaining + 1, out[1].remaining + 1}
	}
	if w, err := serveWith(h, "192.0.2.1", reply("4")); code(w, err) != 200 {
		t.Fatal(code(w, err))
	}
	if got := remaining(); got != [2]int64{6, 96} {
		t.Fatalf("after a report of 4: %v, want [6 96]", got)
	}
	serveWith(h, "192.0.2.1", reply("0")) // gives back its 1
	serveWith(h, "192.0.2.1", reply(""))  // keeps its 1
	serveWith(h, "192.0.2.1", reply("x")) // keeps its 1
	if got := remaining(); got != [2]int64{4, 94} {
		t.Fatalf("after reports 0, none, invalid: %v, want [4 94]", got)
	}
	// A report of 14 puts the key 10 units beyond its burst of 10: it
	// waits one second (10 units at 10/s) before its next unit.
	serveWith(h, "192.0.2.1", reply("14"))
	w, err := serveWith(h, "192.0.2.1", okHandler)
	if code(w, err) != 429 || w.Header().Get("Retry-After") != "2" {
		t.Fatalf("in debt: %d, Retry-After %q; want 429 and 2", code(w, err), w.Header().Get("Retry-After"))
	}
	clk.t.Add(int64(1100 * time.Millisecond))
	if w, err := serveWith(h, "192.0.2.1", okHandler); code(w, err) != 200 {
		t.Fatalf("after the debt is paid: %d", code(w, err))
	}
	// A huge report owes at most one burst.
	clk.t.Add(int64(time.Hour))
	serveWith(h, "192.0.2.1", reply("1000000000000"))
	w, err = serveWith(h, "192.0.2.1", okHandler)
	if ra := w.Header().Get("Retry-After"); code(w, err) != 429 || ra != "61" {
		t.Fatalf("after a huge report: %d, Retry-After %q; want 429 and 61 (one burst of 100/1m of debt, then one unit)", code(w, err), ra)
	}
}

// TestCostHeaderTrailer: the cost may come as a trailer.
func TestCostHeaderTrailer(t *testing.T) {
	h := &Handler{Zone: "settle-tr", CostHeader: "X-Tokens-Used", Rate: []Rate{rate(1, time.Hour, 10)}}
	provision(t, h)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		_, _ = w.Write([]byte("body"))
		w.Header().Set(http.TrailerPrefix+"X-Tokens-Used", "5")
		return nil
	})
	serveWith(h, "192.0.2.1", next)
	w, _ := serveWith(h, "192.0.2.1", okHandler)
	if got := w.Header().Get("RateLimit"); !strings.HasPrefix(got, `"settle-tr";r=4;`) {
		t.Fatalf("RateLimit %q, want r=4 after a trailer of 5 and one more request", got)
	}
}

// TestSettledBounds: settlement never moves a TAT before now nor beyond
// the debt cap, whatever delta is.
func TestSettledBounds(t *testing.T) {
	l := limit{interval: 100, tolerance: 1000}
	for _, tc := range []struct{ tat, delta, want int64 }{
		{5000, -100, 5000}, // never before now
		{5500, -3, 5200},
		{5000, 3, 5300},
		{5000, 1 << 62, 7000},    // at most now + 2 × tolerance
		{5000, -(1 << 62), 5000}, // no overflow
		{4000, 2, 5200},          // an idle key starts from now
	} {
		if got := settled(tc.tat, 5000, tc.delta, l); got != tc.want {
			t.Errorf("settled(%d, 5000, %d) = %d, want %d", tc.tat, tc.delta, got, tc.want)
		}
	}
}

// TestCostConfigErrors: Provision refuses what the Caddyfile refuses.
func TestCostConfigErrors(t *testing.T) {
	for _, h := range []*Handler{
		{Cost: "11", Rate: []Rate{rate(1, time.Second, 10)}},
		{Cost: "0", Rate: []Rate{rate(1, time.Second, 10)}},
		{Cost: "x", Rate: []Rate{rate(1, time.Second, 10)}},
		{Cost: "2", Concurrent: 1},
		{CostHeader: "X-A", Concurrent: 1},
		{CostHeader: "bad header", Rate: []Rate{rate(1, time.Second, 10)}},
		{Concurrent: -1},
		{},
	} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err == nil {
			t.Errorf("%+v provisioned", h)
			_ = h.Cleanup()
		}
		cancel()
	}
}

// benchHandler provisions h for a benchmark.
func benchHandler(b *testing.B, h *Handler) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Cleanup() })
}

// benchServe serves one request of 192.0.2.1 through h in a loop.
func benchServe(b *testing.B, h *Handler, next caddyhttp.Handler) {
	r := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "http://example.com/", nil)
	r.Header.Set("X-Cost", "3")
	repl := caddyhttp.NewTestReplacer(r)
	c := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	r = r.WithContext(context.WithValue(c, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "192.0.2.1"}))
	w := &headerOnly{h: make(http.Header)}
	b.ReportAllocs()
	defer cpuPerOp(b)()
	for b.Loop() {
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
		w.reset()
	}
}

// BenchmarkServeHTTPConcurrent: one rate and concurrent, in memory: a slot
// taken and given back per request.
func BenchmarkServeHTTPConcurrent(b *testing.B) {
	h := &Handler{Rate: []Rate{{Events: 1_000_000_000, Period: caddy.Duration(time.Second)}}, Concurrent: 4}
	benchHandler(b, h)
	benchServe(b, h, okHandler)
}

// BenchmarkServeHTTPCostPlaceholder: one rate, a cost from a request
// header.
func BenchmarkServeHTTPCostPlaceholder(b *testing.B) {
	h := &Handler{Rate: []Rate{{Events: 1_000_000_000, Period: caddy.Duration(time.Second)}}, Cost: "{http.request.header.X-Cost}"}
	benchHandler(b, h)
	benchServe(b, h, okHandler)
}

// BenchmarkServeHTTPCostHeader: one rate, a settlement from a response
// header.
func BenchmarkServeHTTPCostHeader(b *testing.B) {
	h := &Handler{Rate: []Rate{{Events: 1_000_000_000, Period: caddy.Duration(time.Second)}}, CostHeader: "X-Tokens-Used"}
	benchHandler(b, h)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		w.Header()["X-Tokens-Used"] = tokensValue
		return nil
	})
	benchServe(b, h, next)
}

var tokensValue = []string{"5"}

// TestCostJSON: cost is a JSON number or a string; unknown fields are
// refused.
func TestCostJSON(t *testing.T) {
	for in, want := range map[string]string{`{"cost":5}`: "5", `{"cost":"7"}`: "7", `{"cost":"{http.request.header.X-Cost}"}`: "{http.request.header.X-Cost}", `{}`: ""} {
		var h Handler
		if err := json.Unmarshal([]byte(in), &h); err != nil || h.Cost != want {
			t.Errorf("%s: cost %q, %v; want %q", in, h.Cost, err, want)
		}
	}
	for _, in := range []string{`{"cost":true}`, `{"cost":[1]}`, `{"bogus":1}`} {
		var h Handler
		if err := json.Unmarshal([]byte(in), &h); err == nil {
			t.Errorf("%s decoded", in)
		}
	}
	var h Handler
	if err := json.Unmarshal([]byte(`{"rate":[{"events":1,"period":1000000000}],"zone":"z","concurrent":3,"cost_header":"X-A"}`), &h); err != nil || h.Zone != "z" || h.Concurrent != 3 || len(h.Rate) != 1 || h.CostHeader != "X-A" {
		t.Fatalf("%+v %v", h, err)
	}
}
