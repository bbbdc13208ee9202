package aggregate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provisioned provisions and validates h for a test.
func provisioned(tb testing.TB, h *Handler) *Handler {
	tb.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		tb.Fatal(err)
	}
	h.logger = zap.NewNop()
	tb.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// serve runs one request through h.
func serve(h *Handler, req *http.Request) (*httptest.ResponseRecorder, error) {
	caddyhttp.NewTestReplacer(req)
	rec := httptest.NewRecorder()
	err := h.ServeHTTP(rec, req, nil)
	return rec, err
}

func TestBackendsCalledConcurrently(t *testing.T) {
	// Every backend waits until all three have arrived: called one after
	// the other, the first would time out.
	var arrived sync.WaitGroup
	arrived.Add(3)
	all := make(chan struct{})
	go func() { arrived.Wait(); close(all) }()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		select {
		case <-all:
			fmt.Fprintf(w, `{"path":%q}`, r.URL.Path) //nolint:gosec // a JSON test backend
		case <-time.After(2 * time.Second):
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer backend.Close()
	h := provisioned(t, &Handler{Backends: []*Backend{
		{Name: "a", URL: backend.URL + "/a"},
		{Name: "b", URL: backend.URL + "/b"},
		{Name: "c", URL: backend.URL + "/c"},
	}})
	rec, err := serve(h, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"data":{"a":{"path":"/a"},"b":{"path":"/b"},"c":{"path":"/c"}}}`
	if rec.Code != http.StatusOK || rec.Body.String() != want || rec.Header().Get("X-Aggregate-Complete") != "true" {
		t.Fatalf("got %d %s %v", rec.Code, rec.Body, rec.Header())
	}
}

// blockingTransport blocks every round trip until its context ends, then
// lingers a little before reporting, like a slow connection teardown.
type blockingTransport struct {
	started  sync.WaitGroup
	finished atomic.Int32
}

func (bt *blockingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	bt.started.Done()
	<-req.Context().Done()
	time.Sleep(30 * time.Millisecond)
	bt.finished.Add(1)
	return nil, req.Context().Err()
}

func TestClientGoneCancelsEveryCallAndNoGoroutineOutlivesTheRequest(t *testing.T) {
	h := provisioned(t, &Handler{
		Timeout: caddy.Duration(time.Minute),
		Backends: []*Backend{
			{Name: "a", URL: "http://127.0.0.1:1/a"},
			{Name: "b", URL: "http://127.0.0.1:1/b"},
			{Name: "c", URL: "http://127.0.0.1:1/c"},
		},
	})
	bt := &blockingTransport{}
	bt.started.Add(3)
	h.client.Transport = bt

	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil).WithContext(ctx)
	go func() { bt.started.Wait(); cancel() }()
	_, err := serve(h, req)

	// Every call had finished when ServeHTTP returned.
	if n := bt.finished.Load(); n != 3 {
		t.Fatalf("%d of 3 backend calls finished when ServeHTTP returned", n)
	}
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != 499 {
		t.Fatalf("got %v, want a 499 handler error", err)
	}
	// And no goroutine is left behind (a generous deadline: a loaded
	// machine may take a while to let them end).
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Fatalf("%d goroutines before, %d after", before, after)
	}
}

func TestBadPathValueRefusedBeforeAnyCall(t *testing.T) {
	var hits atomic.Int32
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, `{}`)
	}))
	defer backend.Close()
	h := provisioned(t, &Handler{Backends: []*Backend{
		{Name: "ok", URL: backend.URL + "/static"},
		{Name: "user", URL: backend.URL + "/users/{http.request.uri.query.id}"},
	}})
	for _, q := range []string{"id=..", "id=.", "id=", "", "id=%00", "id=a%0d%0ab"} {
		_, err := serve(h, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/?"+q, nil))
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) || he.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: got %v, want 400", q, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("backends were called %d times", n)
	}
}

func TestTimeouts(t *testing.T) {
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()
	fast := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `"fast"`)
	}))
	defer fast.Close()

	// A per-backend timeout fails only that backend.
	h := provisioned(t, &Handler{
		Timeout: caddy.Duration(5 * time.Second),
		Backends: []*Backend{
			{Name: "fast", URL: fast.URL},
			{Name: "slow", URL: slow.URL, Timeout: caddy.Duration(50 * time.Millisecond), Fallback: []byte(`"later"`)},
		},
	})
	start := time.Now()
	rec, err := serve(h, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("per-backend timeout not applied: took %v", time.Since(start))
	}
	want := `{"data":{"fast":"fast","slow":"later"},"errors":[{"backend":"slow","code":"timeout"}]}`
	if rec.Code != http.StatusOK || rec.Body.String() != want || rec.Header().Get("X-Aggregate-Complete") != "false" {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}

	// The total budget bounds every backend, even with a longer own timeout.
	h = provisioned(t, &Handler{
		Timeout: caddy.Duration(50 * time.Millisecond),
		Backends: []*Backend{
			{Name: "s1", URL: slow.URL, Timeout: caddy.Duration(time.Minute)},
			{Name: "s2", URL: slow.URL},
		},
	})
	rec, err = serve(h, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusGatewayTimeout {
		t.Fatalf("got %d %s, want 504", rec.Code, rec.Body)
	}
}

func TestDefaults(t *testing.T) {
	h := provisioned(t, &Handler{Backends: []*Backend{{Name: "a", URL: "http://127.0.0.1:1/"}}})
	if time.Duration(h.Timeout) != 3*time.Second || h.MaxBody != 1<<20 || h.Backends[0].Method != http.MethodGet {
		t.Fatalf("defaults: timeout %v, max_body %d, method %q", time.Duration(h.Timeout), h.MaxBody, h.Backends[0].Method)
	}
	if h.transport.MaxIdleConnsPerHost < 64 || !h.transport.DisableCompression || h.transport.Proxy != nil {
		t.Fatalf("transport not tuned: %+v", h.transport)
	}
	if h.client.CheckRedirect == nil || !errors.Is(h.client.CheckRedirect(nil, nil), http.ErrUseLastResponse) {
		t.Fatal("redirects would be followed")
	}
}

func TestValidate(t *testing.T) {
	ok := func() *Backend { return &Backend{Name: "a", URL: "http://127.0.0.1/a"} }
	for name, h := range map[string]*Handler{
		"no backend":        {},
		"duplicate names":   {Backends: []*Backend{ok(), ok()}},
		"unnamed":           {Backends: []*Backend{{URL: "http://127.0.0.1/"}}},
		"negative timeout":  {Backends: []*Backend{ok()}, Timeout: -1},
		"negative max_body": {Backends: []*Backend{ok()}, MaxBody: -1},
		"max_body 1TiB":     {Backends: []*Backend{ok()}, MaxBody: 1 << 40},
		"max_body 64MiB+1":  {Backends: []*Backend{ok()}, MaxBody: 64<<20 + 1},
		"forward Host":      {Backends: []*Backend{ok()}, ForwardHeaders: []string{"host"}},
		"bad method":        {Backends: []*Backend{{Name: "a", URL: "http://127.0.0.1/", Method: "G T"}}},
		"bad target":        {Backends: []*Backend{{Name: "a", URL: "http://127.0.0.1/", Target: "a..b"}}},
		"header CRLF":       {Backends: []*Backend{{Name: "a", URL: "http://127.0.0.1/", Header: http.Header{"X": {"a\r\nb"}}}}},
	} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := h.Provision(ctx)
		if err == nil {
			err = h.Validate()
		}
		cancel()
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for name, h := range map[string]*Handler{
		"host placeholder":   {Backends: []*Backend{{Name: "a", URL: "http://{x}/"}}},
		"bad fallback":       {Backends: []*Backend{{Name: "a", URL: "http://127.0.0.1/", Fallback: []byte("{x")}}},
		"name not UTF-8":     {Backends: []*Backend{{Name: "a\xff", URL: "http://127.0.0.1/"}}},
		"name with newline":  {Backends: []*Backend{{Name: "a\nb", URL: "http://127.0.0.1/"}}},
		"fallback not UTF-8": {Backends: []*Backend{{Name: "a", URL: "http://127.0.0.1/", Fallback: []byte("\"\xff\"")}}},
	} {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		if err := h.Provision(ctx); err == nil {
			t.Errorf("%s: provisioned", name)
		}
		cancel()
	}
}

// Caddy runs Cleanup on reload without waiting for the old config's
// requests: a request that reaches the old handler after Cleanup must not
// leave its backend connection idle in the old transport (for
// IdleConnTimeout), it is closed when the request ends.
func TestConnectionOfRequestAfterCleanupIsClosed(t *testing.T) {
	var states sync.Map // net.Conn -> http.ConnState
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{}`)
	}))
	backend.Config.ConnState = func(c net.Conn, s http.ConnState) { states.Store(c, s) }
	backend.Start()
	defer backend.Close()
	h := provisioned(t, &Handler{Backends: []*Backend{{Name: "a", URL: backend.URL}}})
	if err := h.Cleanup(); err != nil { // the reload: the config is gone, its requests are not
		t.Fatal(err)
	}
	rec, err := serve(h, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil))
	if err != nil || rec.Code != http.StatusOK {
		t.Fatalf("got %v %d", err, rec.Code)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		open := 0
		states.Range(func(_, s any) bool {
			if s.(http.ConnState) != http.StateClosed {
				open++
			}
			return true
		})
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d backend connection(s) still open after the cleaned-up handler's request", open)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
