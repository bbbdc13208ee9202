package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// aggUpstream is a loopback backend for aggregate tests: it runs handle and
// records every request it receives.
type aggUpstream struct {
	*httptest.Server
	hits     atomic.Int32
	newConns atomic.Int32
	mu       sync.Mutex
	reqs     []*http.Request
}

func newAggUpstream(t *testing.T, handle http.HandlerFunc) *aggUpstream {
	t.Helper()
	u := &aggUpstream{}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Clone(context.Background()))
		u.mu.Unlock()
		handle(w, r)
	}))
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.newConns.Add(1)
		}
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

// aggJSON answers every request with body as JSON.
func aggJSON(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}
}

func (u *aggUpstream) last(t *testing.T) *http.Request {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("backend was never called")
	}
	return u.reqs[len(u.reqs)-1]
}

// aggClosedURL is an http URL on a loopback port nobody listens on.
func aggClosedURL() string {
	return fmt.Sprintf("http://127.0.0.1:%d", freePort())
}

type aggEnvelope struct {
	Data   map[string]json.RawMessage `json:"data"`
	Errors []struct {
		Backend string `json:"backend"`
		Code    string `json:"code"`
		Status  *int   `json:"status"`
	} `json:"errors"`
}

func aggDecode(t *testing.T, body string) aggEnvelope {
	t.Helper()
	var env aggEnvelope
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("response is not the envelope: %v\n%s", err, body)
	}
	return env
}

// aggErrors renders the errors list as "backend:code:status" items.
func (e aggEnvelope) errs() []string {
	out := make([]string, 0, len(e.Errors))
	for _, x := range e.Errors {
		s := x.Backend + ":" + x.Code
		if x.Status != nil {
			s += fmt.Sprintf(":%d", *x.Status)
		}
		out = append(out, s)
	}
	return out
}

// sent is what send returns: the status and headers of a response whose
// body was read and closed.
type sent struct {
	StatusCode int
	Header     http.Header
}

// send runs do and returns the status and headers with the body, so that
// callers hold no *http.Response.
func send(t *testing.T, tc *caddytest.Tester, req *http.Request) (sent, string) {
	t.Helper()
	resp, body := do(t, tc, req) //nolint:bodyclose // do closed it
	return sent{resp.StatusCode, resp.Header}, body
}

func TestAggregateEnvelopeAllSucceeded(t *testing.T) {
	user := newAggUpstream(t, aggJSON(`{"id": 7, "name": "ann", "big": 12345678901234567891}`+"\n"))
	empty := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	accepted := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	created := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"items":[{"id":1},{"id":2}],"total":2}`)
	})
	tc := gateway(t, "", `
	aggregate /dash {
		backend zeta `+user.URL+`/u
		backend alpha `+empty.URL+`/e
		backend accepted `+accepted.URL+`/e
		backend mid `+created.URL+`/o {
			target items.1
		}
	}`)
	resp, body := send(t, tc, get(t, "/dash"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	// Keys in config order; raw bytes kept (the big number is not rounded).
	want := `{"data":{"zeta":{"id": 7, "name": "ann", "big": 12345678901234567891},"alpha":null,"accepted":null,"mid":{"id":2}}}`
	if body != want {
		t.Fatalf("body\n got %s\nwant %s", body, want)
	}
	for name, v := range map[string]string{
		"Content-Type":         "application/json",
		"X-Aggregate-Complete": "true",
		"Cache-Control":        "",
	} {
		if got := resp.Header.Get(name); got != v {
			t.Errorf("%s = %q, want %q", name, got, v)
		}
	}
}

func TestAggregateOptionalFailureGivesPartial200(t *testing.T) {
	ok := newAggUpstream(t, aggJSON(`{"ok":true}`))
	broken := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"secret":"stack trace at db.go:42"}`, http.StatusInternalServerError)
	})
	tc := gateway(t, "", `
	aggregate {
		backend main `+ok.URL+` {
			required
		}
		backend extra `+broken.URL+` {
			fallback `+"`"+`{"items": []}`+"`"+`
		}
		backend gone `+aggClosedURL()+`/x
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Aggregate-Complete") != "false" {
		t.Fatalf("status %d complete %q: %s", resp.StatusCode, resp.Header.Get("X-Aggregate-Complete"), body)
	}
	want := `{"data":{"main":{"ok":true},"extra":{"items":[]},"gone":null},"errors":[{"backend":"extra","code":"status","status":500},{"backend":"gone","code":"unreachable"}]}`
	if body != want {
		t.Fatalf("body\n got %s\nwant %s", body, want)
	}
	if strings.Contains(body, "stack trace") {
		t.Fatal("upstream error body reached the client")
	}
}

func TestAggregateRequiredFailureGives502(t *testing.T) {
	ok := newAggUpstream(t, aggJSON(`1`))
	down := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "maintenance: internal host db-7")
	})
	tc := gateway(t, "", `
	aggregate {
		backend a `+ok.URL+`
		backend b `+down.URL+` {
			required
		}
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Aggregate-Complete") != "false" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	env := aggDecode(t, body)
	if got := env.errs(); !slices.Equal(got, []string{"b:status:503"}) || string(env.Data["a"]) != "1" {
		t.Fatalf("errors %v, data %s", got, body)
	}
	if strings.Contains(body, "db-7") {
		t.Fatal("upstream error body reached the client")
	}
}

func TestAggregateAllFailedGives502(t *testing.T) {
	bad := newAggUpstream(t, aggJSON(`<html>`))
	tc := gateway(t, "", `
	aggregate {
		backend a `+bad.URL+`
		backend b `+aggClosedURL()+`
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if got := aggDecode(t, body).errs(); !slices.Equal(got, []string{"a:invalid_json:200", "b:unreachable"}) {
		t.Fatalf("errors %v", got)
	}
}

func aggSlow(w http.ResponseWriter, r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(10 * time.Second):
	}
}

func TestAggregateAllTimedOutGives504(t *testing.T) {
	slow := newAggUpstream(t, aggSlow)
	tc := gateway(t, "", `
	aggregate {
		backend a `+slow.URL+`/a
		backend b `+slow.URL+`/b {
			timeout 50ms
		}
		timeout 200ms
	}`)
	start := time.Now()
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %v with a 200ms budget", el)
	}
	if got := aggDecode(t, body).errs(); !slices.Equal(got, []string{"a:timeout", "b:timeout"}) {
		t.Fatalf("errors %v", got)
	}
	// A required backend that times out while another succeeds: still 504,
	// since every failure was a timeout.
	ok := newAggUpstream(t, aggJSON(`true`))
	tc = gateway(t, "", `
	aggregate {
		backend ok `+ok.URL+`
		backend a `+slow.URL+` {
			required
			timeout 50ms
		}
	}`)
	resp, body = send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("required timeout: status %d: %s", resp.StatusCode, body)
	}
}

func TestAggregateClientGoneCancelsBackendCalls(t *testing.T) {
	entered := make(chan struct{}, 2)
	canceled := make(chan string, 2)
	slow := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-r.Context().Done():
			canceled <- r.URL.Path
		case <-time.After(20 * time.Second):
		}
	})
	tc := gateway(t, "", `
	aggregate {
		backend a `+slow.URL+`/a
		backend b `+slow.URL+`/b
		timeout 30s
	}`)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		req := get(t, "/").WithContext(ctx)
		resp, err := tc.Client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	for range 2 {
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("backends were not called")
		}
	}
	cancel()
	<-done
	got := map[string]bool{}
	for range 2 {
		select {
		case p := <-canceled:
			got[p] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("backend calls not canceled when the client went away (saw %v)", got)
		}
	}
}

func TestAggregateTooLarge(t *testing.T) {
	big := `{"pad":"` + strings.Repeat("x", 3000) + `"}`
	withLength := newAggUpstream(t, aggJSON(big))
	chunked := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, big[:100])
		w.(http.Flusher).Flush() // no Content-Length: only the read limit can catch it
		io.WriteString(w, big[100:])
	})
	small := newAggUpstream(t, aggJSON(`{"pad":"`+strings.Repeat("y", 1000)+`"}`))
	tc := gateway(t, "", `
	aggregate {
		backend cl `+withLength.URL+`
		backend chunked `+chunked.URL+`
		backend small `+small.URL+`
		max_body 2KB
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	env := aggDecode(t, body)
	if got := env.errs(); !slices.Equal(got, []string{"cl:too_large:200", "chunked:too_large:200"}) {
		t.Fatalf("errors %v", got)
	}
	if strings.Contains(body, "xxxx") || !strings.Contains(body, "yyyy") {
		t.Fatal("wrong bodies spliced")
	}
}

func TestAggregateInvalidJSON(t *testing.T) {
	cases := map[string]string{
		"truncated": `{"a":`,
		"html":      `<html>oops</html>`,
		"two":       `{"a":1}{"b":2}`,
	}
	var site strings.Builder
	site.WriteString("aggregate {\n")
	names := make([]string, 0, len(cases))
	for name, b := range cases {
		u := newAggUpstream(t, aggJSON(b))
		fmt.Fprintf(&site, "backend %s %s\n", name, u.URL)
		names = append(names, name)
	}
	good := newAggUpstream(t, aggJSON(` [1, 2] `))
	fmt.Fprintf(&site, "backend good %s\n}", good.URL)
	tc := gateway(t, "", site.String())
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	env := aggDecode(t, body)
	want := make([]string, 0, len(names))
	for _, n := range names {
		want = append(want, n+":invalid_json:200")
		if string(env.Data[n]) != "null" {
			t.Errorf("%s: data %s, want null", n, env.Data[n])
		}
	}
	if got := env.errs(); !slices.Equal(got, want) {
		t.Fatalf("errors %v, want %v", got, want)
	}
	if string(env.Data["good"]) != "[1, 2]" {
		t.Fatalf("good: %s", env.Data["good"])
	}
}

func TestAggregateUnreachable(t *testing.T) {
	tc := gateway(t, "", `
	aggregate {
		backend a `+aggClosedURL()+`/a
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusBadGateway || body != `{"data":{"a":null},"errors":[{"backend":"a","code":"unreachable"}]}` {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
}

func TestAggregateRedirectNotFollowed(t *testing.T) {
	target := newAggUpstream(t, aggJSON(`"followed"`))
	redirect := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/internal", http.StatusFound)
	})
	tc := gateway(t, "", `
	aggregate {
		backend r `+redirect.URL+`
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusBadGateway || body != `{"data":{"r":null},"errors":[{"backend":"r","code":"status","status":302}]}` {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if target.hits.Load() != 0 {
		t.Fatal("redirect was followed")
	}
}

func TestAggregatePathValueDotDotRefused(t *testing.T) {
	up := newAggUpstream(t, aggJSON(`{}`))
	tc := gateway(t, "", `
	aggregate {
		backend static `+up.URL+`/static
		backend user `+up.URL+`/users/{query.id}/profile
		backend h `+up.URL+`/by-header/{header.X-Id}
	}
	handle_errors {
		respond "refused {err.status_code}"
	}`)
	for _, q := range []string{
		"/?id=..&x=1", "/?id=.", "/?id=", "/", "/?id=%00", "/?id=a%0d%0aX-Evil:%201", "/?id=%7f",
	} {
		resp, body := send(t, tc, get(t, q, "X-Id", "ok"))
		if resp.StatusCode != http.StatusBadRequest || body != "refused 400" {
			t.Errorf("%s: status %d %q, want 400 through handle_errors", q, resp.StatusCode, body)
		}
	}
	for _, h := range []string{"..", "."} {
		resp, _ := send(t, tc, get(t, "/?id=ok", "X-Id", h))
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("header value %q: status %d, want 400", h, resp.StatusCode)
		}
	}
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("backends were called %d times for refused requests", n)
	}
	// And a good value gets through.
	resp, body := send(t, tc, get(t, "/?id=u1", "X-Id", "h1"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
}

func TestAggregatePathValueEscaping(t *testing.T) {
	up := newAggUpstream(t, aggJSON(`{}`))
	tc := gateway(t, "", `
	aggregate {
		backend user `+up.URL+`/users/{query.id}/profile
	}`)
	for _, tt := range []struct{ query, rawPath, path string }{
		{"id=a%2Fb", "/users/a%2Fb/profile", "/users/a/b/profile"},
		{"id=..%2Fadmin", "/users/..%2Fadmin/profile", "/users/../admin/profile"},
		{"id=%2e%2e", "/users/..", ""}, // decoded to "..": refused
		{"id=a%3Fx%3D1%23f", "/users/a%3Fx%3D1%23f/profile", "/users/a?x=1#f/profile"},
		{"id=..%3B", "/users/..%3B/profile", "/users/..;/profile"},
		{"id=%252e%252e", "/users/%252e%252e/profile", "/users/%2e%2e/profile"},
	} {
		before := up.hits.Load()
		resp, body := send(t, tc, get(t, "/?"+tt.query))
		if tt.path == "" {
			if resp.StatusCode != http.StatusBadRequest || up.hits.Load() != before {
				t.Errorf("%s: status %d, hits %d; want 400 and no call", tt.query, resp.StatusCode, up.hits.Load()-before)
			}
			continue
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", tt.query, resp.StatusCode, body)
		}
		r := up.last(t)
		if r.URL.EscapedPath() != tt.rawPath || r.URL.Path != tt.path {
			t.Errorf("%s: backend saw %q (%q), want %q (%q)", tt.query, r.URL.EscapedPath(), r.URL.Path, tt.rawPath, tt.path)
		}
	}
}

func TestAggregateQueryValueEscaped(t *testing.T) {
	up := newAggUpstream(t, aggJSON(`{}`))
	tc := gateway(t, "", `
	aggregate {
		backend search `+up.URL+`/search?q={query.q}&user=1
	}`)
	resp, body := send(t, tc, get(t, "/?q=a%26user%3D2"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	r := up.last(t)
	q := r.URL.Query()
	if got := q["q"]; len(got) != 1 || got[0] != "a&user=2" {
		t.Errorf("q = %q, want one value a&user=2 (raw query %q)", got, r.URL.RawQuery)
	}
	if got := q["user"]; len(got) != 1 || got[0] != "1" {
		t.Errorf("user = %q, want only the configured 1 (raw query %q)", got, r.URL.RawQuery)
	}
	if r.URL.RawQuery != "q=a%26user%3D2&user=1" {
		t.Errorf("raw query %q", r.URL.RawQuery)
	}
}

func TestAggregateOnlyForwardedHeadersArrive(t *testing.T) {
	up := newAggUpstream(t, aggJSON(`{}`))
	tc := gateway(t, "", `
	aggregate {
		backend a `+up.URL+`/a {
			header X-Static fixed
			header X-Req-Id {header.X-Request-Id}
		}
		backend b `+up.URL+`/b
		forward_headers Authorization X-Tenant
	}`)
	resp, body := send(t, tc, get(t, "/",
		"Authorization", "Bearer abc",
		"Cookie", "session=secret",
		"X-Tenant", "t1",
		"X-Request-Id", "r-1",
		"X-Forwarded-For", "6.6.6.6",
		"X-User-Id", "mallory",
		"User-Agent", "curl/8",
		"Accept-Encoding", "gzip",
	))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "private, no-store" {
		t.Errorf("Cache-Control %q with forwarded credentials", cc)
	}
	up.mu.Lock()
	reqs := slices.Clone(up.reqs)
	up.mu.Unlock()
	for _, r := range reqs {
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		want := []string{"Authorization", "X-Tenant"}
		if r.URL.Path == "/a" {
			want = []string{"Authorization", "X-Req-Id", "X-Static", "X-Tenant"}
			if r.Header.Get("X-Req-Id") != "r-1" || r.Header.Get("X-Static") != "fixed" {
				t.Errorf("header lines: %v", r.Header)
			}
		}
		if !slices.Equal(keys, want) {
			t.Errorf("%s received headers %v, want exactly %v", r.URL.Path, keys, want)
		}
		if r.Header.Get("Authorization") != "Bearer abc" || r.Header.Get("X-Tenant") != "t1" {
			t.Errorf("%s: forwarded values %v", r.URL.Path, r.Header)
		}
	}

	// Nothing forwarded, and a header line from X-Request-Id (a client
	// header): still private. A plain request to a site without either is
	// cacheable (see TestAggregateEnvelopeAllSucceeded).
	resp, _ = send(t, tc, get(t, "/"))
	if cc := resp.Header.Get("Cache-Control"); cc != "private, no-store" {
		t.Errorf("Cache-Control %q for a response built from a client header", cc)
	}
}

func TestAggregateMethodHeaderTarget(t *testing.T) {
	up := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"method":%q,"len":%d,"deep":{"list":[{"v":"x"},{"v":%q}]}}`, r.Method, r.ContentLength, r.Header.Get("X-Q")) //nolint:gosec // a JSON test backend
	})
	tc := gateway(t, "", `
	aggregate {
		backend post `+up.URL+`/p {
			method POST
			header X-Q {query.q}
			target deep.list.1.v
		}
		backend whole `+up.URL+`/w {
			method delete
		}
		backend missing `+up.URL+`/m {
			target deep.nope
		}
	}`)
	resp, body := send(t, tc, get(t, "/?q=hello"))
	want := `{"data":{"post":"hello","whole":{"method":"DELETE","len":0,"deep":{"list":[{"v":"x"},{"v":""}]}},"missing":null}}`
	if resp.StatusCode != http.StatusOK || body != want {
		t.Fatalf("status %d\n got %s\nwant %s", resp.StatusCode, body, want)
	}
}

func TestAggregateIdentityFromJWTInURL(t *testing.T) {
	const secret = "aggregate-test-secret-0123456789abcdef" //nolint:gosec // a test key
	up := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"path":%q,"x_user_id":%q}`, r.URL.EscapedPath(), r.Header.Get("X-User-Id")) //nolint:gosec // a JSON test backend
	})
	tc := gateway(t, "", `
	jwt_auth {
		secret `+secret+`
		header X-User-Id sub
	}
	aggregate {
		backend me `+up.URL+`/users/{http.auth.user.id}
		forward_headers X-User-Id
	}`)
	tok := func(sub string) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": sub, "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		}).SignedString([]byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + s
	}
	resp, body := send(t, tc, get(t, "/", "Authorization", tok("alice")))
	if resp.StatusCode != http.StatusOK || body != `{"data":{"me":{"path":"/users/alice","x_user_id":"alice"}}}` {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "private, no-store" {
		t.Errorf("identity response Cache-Control %q", cc)
	}
	// A subject with a slash stays one segment.
	resp, body = send(t, tc, get(t, "/", "Authorization", tok("../admin")))
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"path":"/users/..%2Fadmin"`) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	before := up.hits.Load()
	for _, sub := range []string{"..", ".", "a\x00b"} {
		resp, _ = send(t, tc, get(t, "/", "Authorization", tok(sub)))
		if resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("sub %q: status %d, want 400", sub, resp.StatusCode)
		}
	}
	resp, _ = send(t, tc, get(t, "/", "Authorization", tok("..")))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("sub \"..\": status %d, want 400", resp.StatusCode)
	}
	if up.hits.Load() != before {
		t.Fatal("backend called with a dot-segment identity")
	}
}

func TestAggregateConnectionsReused(t *testing.T) {
	up := newAggUpstream(t, aggJSON(`{}`))
	tc := gateway(t, "", `
	aggregate {
		backend a `+up.URL+`/a
		backend b `+up.URL+`/b
		backend c `+up.URL+`/c
	}`)
	for range 30 {
		if resp, body := send(t, tc, get(t, "/")); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	}
	if n := up.newConns.Load(); n > 6 || up.hits.Load() != 90 {
		t.Fatalf("%d new connections for %d backend calls", n, up.hits.Load())
	}
}

// aggLoad posts a config to the admin API and returns the status and body.
func aggLoad(t *testing.T, contentType, config string) (int, string) {
	t.Helper()
	return adminPost(t, "/load", contentType, config)
}

func TestAggregatePlaceholderOutsidePathAndQueryIsConfigError(t *testing.T) {
	gateway(t, "", `respond "ok"`) // a running admin endpoint
	for where, u := range map[string]string{
		"scheme":   "{query.s}://127.0.0.1:9/a",
		"host":     "http://{query.h}:9/a",
		"port":     "http://127.0.0.1:{query.p}/a",
		"userinfo": "http://{http.auth.user.id}@127.0.0.1:9/a",
		"fragment": "http://127.0.0.1:9/a#{query.f}",
	} {
		// Caddyfile: refused at parse, naming the line.
		cf := caddyfile("", "\taggregate {\n\t\tbackend a "+u+"\n\t}")
		line := fmt.Sprintf("Caddyfile:%d", strings.Count(cf[:strings.Index(cf, "backend a")], "\n")+1)
		status, body := aggLoad(t, "text/caddyfile", cf)
		if status == http.StatusOK || !strings.Contains(body, "placeholder in the "+where) || !strings.Contains(body, line) {
			t.Errorf("%s (Caddyfile): %d %s", where, status, body)
		}
		// JSON: refused at provision.
		cfg := fmt.Sprintf(`{"admin":{"listen":"localhost:%d"},"apps":{"http":{"servers":{"s":{"listen":[":%d"],"routes":[{"handle":[{"handler":"aggregate","backends":[{"name":"a","url":%q}]}]}]}}}}}`,
			adminPort, httpPort, strings.NewReplacer("{query.", "{http.request.uri.query.").Replace(u))
		status, body = aggLoad(t, "application/json", cfg)
		if status == http.StatusOK || !strings.Contains(body, "placeholder in the "+where) {
			t.Errorf("%s (JSON): %d %s", where, status, body)
		}
	}
}

// TestAggregateLatencyThroughCaddy only measures and logs (it never asserts
// a time): the median latency of an aggregate over three loopback backends
// through the in-process Caddy, next to a reverse_proxy to one of them and
// to that backend called directly. Run with -v to see the figures.
func TestAggregateLatencyThroughCaddy(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement only")
	}
	ups := make([]*aggUpstream, 0, 3)
	for i := range 3 {
		ups = append(ups, newAggUpstream(t, aggJSON(fmt.Sprintf(`{"backend":%d,"items":[1,2,3],"name":"some text here"}`, i))))
	}
	tc := gateway(t, "", `
	handle /agg {
		aggregate {
			backend a `+ups[0].URL+`/x
			backend b `+ups[1].URL+`/x
			backend c `+ups[2].URL+`/x
		}
	}
	handle /rp {
		reverse_proxy `+strings.TrimPrefix(ups[0].URL, "http://")+`
	}`)
	const n = 400
	measure := func(url string) time.Duration {
		lat := make([]time.Duration, 0, n)
		for i := range n + 50 {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
			start := time.Now()
			resp, err := sendRetrying(tc.Client, req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if i >= 50 { // warm-up
				lat = append(lat, time.Since(start))
			}
		}
		slices.Sort(lat)
		return lat[len(lat)/2]
	}
	var direct time.Duration
	for _, u := range ups {
		direct = max(direct, measure(u.URL+"/x"))
	}
	rp := measure(siteURL("/rp"))
	agg := measure(siteURL("/agg"))
	t.Logf("p50: slowest backend direct %v, reverse_proxy to one %v, aggregate of 3 %v", direct, rp, agg)
	t.Logf("aggregate adds %v over the slowest backend, %v over reverse_proxy", agg-direct, agg-rp)
}
