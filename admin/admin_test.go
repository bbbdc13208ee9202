package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"
	"github.com/caddygateway/caddy-gateway/ratelimit"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provisionThrottle provisions a real throttle handler (it joins the
// registry) and cleans it up when the test ends.
func provisionThrottle(t *testing.T, h *ratelimit.Handler) *ratelimit.Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = h.Cleanup()
		cancel()
	})
	return h
}

// call serves one admin request through the module's route and returns
// the status and body as Caddy's admin endpoint would write them.
func call(t *testing.T, method, target string) (int, string) {
	t.Helper()
	routes := Gateway{}.Routes()
	if len(routes) != 1 || routes[0].Pattern != "/gateway/" {
		t.Fatalf("routes %+v", routes)
	}
	w := httptest.NewRecorder()
	err := routes[0].Handler.ServeHTTP(w, httptest.NewRequestWithContext(t.Context(), method, target, nil))
	if err != nil {
		var ae caddy.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%s %s: %v is not an APIError", method, target, err)
		}
		return ae.HTTPStatus, ae.Err.Error()
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, target, ct)
	}
	return w.Code, w.Body.String()
}

var next = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// hit sends one request from addr through h and returns its status.
func hit(t *testing.T, h *ratelimit.Handler, addr string) int {
	t.Helper()
	r := httptest.NewRequestWithContext(t.Context(), "GET", "/", nil)
	r.RemoteAddr = addr
	err := h.ServeHTTP(httptest.NewRecorder(), r, next)
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok {
		return he.StatusCode
	}
	if err != nil {
		t.Fatal(err)
	}
	return 200
}

func TestThrottleZoneLifecycle(t *testing.T) {
	before := registry.ThrottleZones.Len()
	v6 := 48
	h := provisionThrottle(t, &ratelimit.Handler{
		Zone: "unit", IPv6Prefix: &v6,
		Rate: []ratelimit.Rate{{Events: 1, Period: caddy.Duration(time.Hour)}, {Events: 10, Period: caddy.Duration(time.Hour)}},
	})
	// A second handler of the same zone: listed once.
	provisionThrottle(t, &ratelimit.Handler{
		Zone: "unit", IPv6Prefix: &v6,
		Rate: []ratelimit.Rate{{Events: 1, Period: caddy.Duration(time.Hour)}, {Events: 10, Period: caddy.Duration(time.Hour)}},
	})
	if n := registry.ThrottleZones.Len(); n != before+1 {
		t.Fatalf("zones %d, want %d", n, before+1)
	}
	status, body := call(t, "GET", "/gateway/throttle")
	var list ThrottleList
	if status != 200 || json.Unmarshal([]byte(body), &list) != nil {
		t.Fatalf("%d %s", status, body)
	}
	var z *registry.ThrottleZoneInfo
	for i := range list.Zones {
		if list.Zones[i].Name == "unit" {
			z = &list.Zones[i]
		}
	}
	if z == nil || z.Handlers != 2 || len(z.Rates) != 2 || z.Rates[1].Name != "unit-2" || z.IPv6Prefix != 48 || z.Engine != "memory" {
		t.Fatalf("zone %+v in %s", z, body)
	}

	if got := hit(t, h, "[2001:db8:1:2::1]:1000"); got != 200 {
		t.Fatalf("first request %d", got)
	}
	if got := hit(t, h, "[2001:db8:1:3::9]:1000"); got != 429 {
		t.Fatalf("same /48: %d, want 429", got)
	}
	status, body = call(t, "GET", "/gateway/throttle/unit?ip=2001:db8:1:ffff::1")
	var st registry.ThrottleClient
	if status != 200 || json.Unmarshal([]byte(body), &st) != nil {
		t.Fatalf("%d %s", status, body)
	}
	if st.Client != "2001:db8:1::/48" || st.Rates[0].Remaining != 0 || st.Rates[1].Remaining != 9 || st.Rates[0].RetryAfter <= 3590 {
		t.Fatalf("state %+v", st)
	}
	// An IPv4-mapped address is its IPv4 address.
	_, body = call(t, "GET", "/gateway/throttle/unit?ip=::ffff:192.0.2.1")
	if !strings.Contains(body, `"client":"192.0.2.1/32"`) {
		t.Fatalf("mapped address: %s", body)
	}
	if status, body = call(t, "DELETE", "/gateway/throttle/unit?ip=2001:db8:1::"); status != 200 || !strings.Contains(body, `"remaining":1,`) {
		t.Fatalf("reset: %d %s", status, body)
	}
	if got := hit(t, h, "[2001:db8:1:2::1]:1000"); got != 200 {
		t.Fatalf("after reset %d", got)
	}
}

func TestThrottleZoneLeavesAtCleanup(t *testing.T) {
	before := registry.ThrottleZones.Len()
	h := &ratelimit.Handler{Zone: "leaving", Rate: []ratelimit.Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if status, _ := call(t, "GET", "/gateway/throttle/leaving?key=a"); status != 200 {
		t.Fatalf("live zone: %d", status)
	}
	_ = h.Cleanup()
	_ = h.Cleanup() // twice is harmless
	if n := registry.ThrottleZones.Len(); n != before {
		t.Fatalf("zones %d after cleanup, want %d", n, before)
	}
	if status, _ := call(t, "GET", "/gateway/throttle/leaving?key=a"); status != 404 {
		t.Fatalf("cleaned-up zone: %d, want 404", status)
	}

	// A handler that fails to provision never shows.
	bad := &ratelimit.Handler{Zone: "bad", Rate: []ratelimit.Rate{{Events: 1, Period: caddy.Duration(time.Minute)}}, Headers: "nope"}
	if err := bad.Provision(ctx); err == nil {
		t.Fatal("bad config provisioned")
	}
	_ = bad.Cleanup()
	if n := registry.ThrottleZones.Len(); n != before {
		t.Fatalf("zones %d after a failed provision, want %d", n, before)
	}
}

func TestParseThrottleQuery(t *testing.T) {
	for raw, want := range map[string]string{
		"ip=192.0.2.1":          "192.0.2.1",
		"ip=2001:db8::1":        "2001:db8::1",
		"ip=fe80::1%25eth0":     "fe80::1",
		"key=alice":             "key alice",
		"key=a%20b":             "key a b",
		"key=%7Bx%7D":           "key {x}",
		"ip=::ffff:192.0.2.1":   "::ffff:192.0.2.1",
		"key=192.0.2.1":         "key 192.0.2.1",
		"ip=1.2.3.4&key=x":      "",
		"ip=1.2.3.4&ip=1.2.3.5": "",
		"":                      "",
		"key=":                  "",
		"ip=":                   "",
		"ip=1.2.3.0/24":         "",
		"ip=host.example":       "",
		"zone=x":                "",
		"key=%zz":               "",
		"key=a;b":               "",
	} {
		q, err := parseThrottleQuery(raw)
		var got string
		switch {
		case err != nil:
		case q.Key != "":
			got = "key " + q.Key
		default:
			got = q.IP.String()
		}
		if got != want {
			t.Errorf("%q: got %q (%v), want %q", raw, got, err, want)
		}
	}
}

func TestRoutesAndMethods(t *testing.T) {
	for _, c := range []struct {
		method, target string
		want           int
	}{
		{"GET", "/gateway/throttle", 200},
		{"GET", "/gateway/jwt", 200},
		{"GET", "/gateway/api_key", 200},
		{"GET", "/gateway/aggregate", 200},
		{"POST", "/gateway/jwt/refresh", 200},
		{"GET", "/gateway/throttle/none?ip=192.0.2.1", 404},
		{"GET", "/gateway/throttle/", 404},
		{"GET", "/gateway/other", 404},
		{"GET", "/gateway/jwt/", 404},
		{"POST", "/gateway/throttle", 405},
		{"PATCH", "/gateway/throttle/none?ip=192.0.2.1", 405},
		{"GET", "/gateway/jwt/refresh", 405},
		{"GET", "/gateway/jwt?x", 400},
	} {
		if status, body := call(t, c.method, c.target); status != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.target, status, body, c.want)
		}
	}
}

func TestModuleRegistered(t *testing.T) {
	info, err := caddy.GetModule("admin.api.gateway")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := info.New().(caddy.AdminRouter); !ok {
		t.Fatal("admin.api.gateway is not an AdminRouter")
	}
}

func TestThrottleInProgress(t *testing.T) {
	h := provisionThrottle(t, &ratelimit.Handler{Zone: "busy", Concurrent: 2})
	release := make(chan struct{})
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		r := httptest.NewRequestWithContext(t.Context(), "GET", "/", nil)
		r.RemoteAddr = "192.0.2.9:1000"
		done <- h.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			close(started)
			<-release
			return nil
		}))
	}()
	<-started
	_, body := call(t, "GET", "/gateway/throttle/busy?ip=192.0.2.9")
	var st registry.ThrottleClient
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.InProgress != 1 || st.Concurrent != 2 || len(st.Rates) != 0 {
		t.Errorf("while a request runs: %s", body)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_, body = call(t, "GET", "/gateway/throttle/busy?ip=192.0.2.9")
	if !strings.Contains(body, `"in_progress":0,`) {
		t.Errorf("after it finished: %s", body)
	}
	_, body = call(t, "GET", "/gateway/throttle")
	if !strings.Contains(body, `"name":"busy","named":true,"rates":[],"concurrent":2`) {
		t.Errorf("zone list: %s", body)
	}
}
