package integration

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

const corsOrigin = "https://app.example.com"

// corsUpstream is a loopback upstream that counts its requests and answers
// JSON, with its own CORS headers and Vary (as many frameworks do), so the
// tests can see the gateway's answer replace them.
type corsUpstream struct {
	*httptest.Server
	count atomic.Int32
}

func newCORSUpstream(t *testing.T) *corsUpstream {
	t.Helper()
	u := &corsUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.count.Add(1)
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Accept-Encoding")
		h.Add("Vary", "Origin")
		h.Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"path": r.URL.Path, "user": r.Header.Get("X-User-Id"), "method": r.Method})
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *corsUpstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

// corsSite is the gateway stack: cors, throttle and jwt_auth on /api/*, in
// front of the upstream. The directives are written in the reverse order
// on purpose: the plugin's registered order puts cors first.
// Each test gets its own throttle zone: zone state outlives a config load.
func corsSite(t *testing.T, upstream, extra string) string {
	return `
	jwt_auth /api/* {
		secret ` + jwtSecret + `
		header X-User-Id sub
	}
	throttle /api/* {
		zone ` + t.Name() + `
		rate 3/1m
	}
	cors /api/* {
		origins ` + corsOrigin + ` https://*.example.net http://localhost:3000
		methods GET POST PUT
		headers Authorization Content-Type X-Request-Id
		expose RateLimit
		credentials
		max_age 10m
	}
	reverse_proxy ` + upstream + `
` + extra
}

// allowHeaderNames lists the Access-Control-Allow-* headers of a response.
func allowHeaderNames(h http.Header) []string {
	var names []string
	for k := range h {
		if strings.HasPrefix(strings.ToLower(k), "access-control-allow-") {
			names = append(names, k)
		}
	}
	return names
}

// wantCORS checks the actual-response answer for corsOrigin: one
// Access-Control-Allow-Origin, credentials, expose, and Vary listing Origin
// once.
func wantCORS(t *testing.T, resp *http.Response, origin string) {
	t.Helper()
	if got := resp.Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != origin {
		t.Errorf("status %d: Access-Control-Allow-Origin = %q, want exactly %q", resp.StatusCode, got, origin)
	}
	if got := resp.Header.Values("Access-Control-Allow-Credentials"); len(got) != 1 || got[0] != "true" {
		t.Errorf("status %d: Access-Control-Allow-Credentials = %q", resp.StatusCode, got)
	}
	if got := resp.Header.Get("Access-Control-Expose-Headers"); got != "RateLimit" {
		t.Errorf("status %d: Access-Control-Expose-Headers = %q", resp.StatusCode, got)
	}
	vary := strings.ToLower(strings.Join(resp.Header.Values("Vary"), ","))
	if n := strings.Count(vary, "origin"); n != 1 {
		t.Errorf("status %d: Vary %q lists Origin %d times", resp.StatusCode, resp.Header.Values("Vary"), n)
	}
}

func TestCORSActualRequestThroughStack(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	resp, body := do(t, tc, get(t, "/api/me", "Origin", corsOrigin, "Authorization", "Bearer "+token(t, `"sub":"alice"`)))
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"user":"alice"`) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	wantCORS(t, resp, corsOrigin)
	// the upstream's own answer is gone, its other Vary kept
	if got := resp.Header.Get("Access-Control-Allow-Methods"); got != "" {
		t.Errorf("upstream's Access-Control-Allow-Methods %q leaked", got)
	}
	if vary := strings.Join(resp.Header.Values("Vary"), ","); !strings.Contains(vary, "Accept-Encoding") {
		t.Errorf("Vary %q lost the upstream's Accept-Encoding", vary)
	}
	// throttle's headers are there too, for the page to read (expose)
	if resp.Header.Get("RateLimit") == "" {
		t.Error("no RateLimit header: throttle did not run")
	}
}

// A wildcard entry matches subdomains; the origin is echoed as sent. (Past
// the third request these are throttle's 429s, which carry the answer too.)
func TestCORSWildcardOrigin(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	for origin, allowed := range map[string]bool{
		"https://app.example.net":          true,
		"https://a.b.example.net":          true,
		"https://example.net":              false,
		"https://evil-example.net":         false,
		"https://example.net.evil.com":     false,
		"http://app.example.net":           false,
		"HTTPS://App.Example.COM":          true,
		"https://app.example.com:443":      true,
		"https://app.example.com:8443":     false,
		"https://app.example.com.evil":     false,
		"https://app.example.com/":         false,
		"null":                             false,
		"http://localhost:3000":            true,
		"http://localhost:3001":            false,
		"https://app.example.com@evil":     false,
		"https://evil.com#app.example.com": false,
	} {
		resp, _ := do(t, tc, get(t, "/api/x", "Origin", origin, "Authorization", "Bearer "+token(t, `"sub":"a"`)))
		got := resp.Header.Values("Access-Control-Allow-Origin")
		if allowed && (len(got) != 1 || got[0] != origin) || !allowed && len(got) != 0 {
			t.Errorf("Origin %q: Access-Control-Allow-Origin = %q, allowed %v", origin, got, allowed)
		}
	}
}

// A preflight is answered by cors: it never reaches jwt_auth (no token, yet
// no 401), throttle (rate 3/1m, yet many preflights pass and a request
// still does) or the upstream.
func TestCORSPreflightNeverReachesAuthThrottleOrUpstream(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	for range 10 {
		resp, body := do(t, tc, request(t, http.MethodOptions, "/api/orders",
			"Origin", corsOrigin,
			"Access-Control-Request-Method", "PUT",
			"Access-Control-Request-Headers", "authorization,content-type,x-request-id"))
		if resp.StatusCode != http.StatusNoContent || body != "" {
			t.Fatalf("preflight status %d: %q", resp.StatusCode, body)
		}
		for k, want := range map[string]string{
			"Access-Control-Allow-Origin":      corsOrigin,
			"Access-Control-Allow-Credentials": "true",
			"Access-Control-Allow-Methods":     "GET, POST, PUT",
			"Access-Control-Allow-Headers":     "Authorization, Content-Type, X-Request-Id",
			"Access-Control-Max-Age":           "600",
		} {
			if got := resp.Header.Values(k); len(got) != 1 || got[0] != want {
				t.Fatalf("%s = %q, want %q", k, got, want)
			}
		}
		vary := strings.Join(resp.Header.Values("Vary"), ", ")
		for _, want := range []string{"Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"} {
			if !strings.Contains(vary, want) {
				t.Fatalf("Vary %q lacks %s", vary, want)
			}
		}
		for _, k := range []string{"Www-Authenticate", "Ratelimit", "Ratelimit-Policy"} {
			if v := resp.Header.Get(k); v != "" {
				t.Fatalf("preflight carries %s %q: it reached a later handler", k, v)
			}
		}
	}
	if n := up.count.Load(); n != 0 {
		t.Fatalf("upstream saw %d preflights", n)
	}
	resp, body := do(t, tc, get(t, "/api/x", "Origin", corsOrigin, "Authorization", "Bearer "+token(t, `"sub":"a"`)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("request after 10 preflights: status %d (preflights were counted by throttle?): %s", resp.StatusCode, body)
	}
}

func TestCORSPreflightRefused(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	for name, hdr := range map[string][]string{
		"origin":     {"Origin", "https://evil.example", "Access-Control-Request-Method", "GET"},
		"look-alike": {"Origin", "https://app.example.com.evil.net", "Access-Control-Request-Method", "GET"},
		"bare":       {"Origin", "https://example.net", "Access-Control-Request-Method", "GET"},
		"null":       {"Origin", "null", "Access-Control-Request-Method", "GET"},
		"method":     {"Origin", corsOrigin, "Access-Control-Request-Method", "DELETE"},
		"header":     {"Origin", corsOrigin, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization,x-secret"},
	} {
		resp, _ := do(t, tc, request(t, http.MethodOptions, "/api/orders", hdr...))
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", name, resp.StatusCode)
		}
		if names := allowHeaderNames(resp.Header); len(names) != 0 {
			t.Errorf("%s: refusal carries %v", name, names)
		}
	}
	if n := up.count.Load(); n != 0 {
		t.Fatalf("upstream saw %d refused preflights", n)
	}
}

// An OPTIONS request that is not a preflight passes on (here to jwt_auth,
// which wants a token).
func TestCORSPlainOptionsPassesOn(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	resp, _ := do(t, tc, request(t, http.MethodOptions, "/api/x", "Origin", corsOrigin))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want jwt_auth's 401", resp.StatusCode)
	}
	wantCORS(t, resp, corsOrigin)
	resp, _ = do(t, tc, request(t, http.MethodOptions, "/api/x", "Authorization", "Bearer "+token(t, `"sub":"a"`)))
	if resp.StatusCode != http.StatusOK || up.count.Load() != 1 {
		t.Fatalf("status %d, upstream count %d", resp.StatusCode, up.count.Load())
	}
}

// jwt_auth's 401 carries the CORS answer, so the page can read the status
// (and WWW-Authenticate stays).
func TestCORSHeadersOnJWT401(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	for _, auth := range []string{"", "Bearer not-a-token"} {
		req := get(t, "/api/x", "Origin", corsOrigin)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, _ := do(t, tc, req)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Fatalf("status %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
		wantCORS(t, resp, corsOrigin)
	}
}

// throttle's 429 carries the CORS answer.
func TestCORSHeadersOnThrottle429(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	var resp *http.Response
	for range 4 {
		resp, _ = do(t, tc, get(t, "/api/x", "Origin", corsOrigin, "Authorization", "Bearer "+token(t, `"sub":"a"`)))
	}
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("4th request: status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	wantCORS(t, resp, corsOrigin)
}

// aggregate's 502 (a required backend down) and reverse_proxy's 502 (the
// upstream down) carry the CORS answer.
func TestCORSHeadersOnBadGateway(t *testing.T) {
	down := closedAddr(t)
	tc := gateway(t, "", corsSite(t, down, `
	handle /api/dashboard {
		aggregate {
			backend user http://`+down+`/users {
				required
			}
		}
	}`))
	tok := "Bearer " + token(t, `"sub":"a"`)
	for _, path := range []string{"/api/dashboard", "/api/other"} {
		resp, body := do(t, tc, get(t, path, "Origin", corsOrigin, "Authorization", tok))
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s: status %d, want 502: %s", path, resp.StatusCode, body)
		}
		wantCORS(t, resp, corsOrigin)
	}
}

// Errors shaped by handle_errors carry the CORS answer too: the error route
// writes on the same response.
func TestCORSHeadersOnHandleErrors(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), `
	handle_errors {
		header Content-Type application/json
		respond `+"`"+`{"error":{err.status_code}}`+"`"+`
	}`))
	resp, body := do(t, tc, get(t, "/api/x", "Origin", corsOrigin))
	if resp.StatusCode != http.StatusUnauthorized || body != `{"error":401}` {
		t.Fatalf("status %d: %q", resp.StatusCode, body)
	}
	wantCORS(t, resp, corsOrigin)
	for range 4 {
		resp, body = do(t, tc, get(t, "/api/x", "Origin", corsOrigin, "Authorization", "Bearer "+token(t, `"sub":"a"`)))
	}
	if resp.StatusCode != http.StatusTooManyRequests || body != `{"error":429}` {
		t.Fatalf("status %d: %q", resp.StatusCode, body)
	}
	wantCORS(t, resp, corsOrigin)
}

// A disallowed origin passes on (CORS is not authorisation) and gets no CORS
// header, not even the upstream's own.
func TestCORSDisallowedOriginPassesWithoutCORS(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), ""))
	resp, body := do(t, tc, get(t, "/api/x", "Origin", "https://evil.example", "Authorization", "Bearer "+token(t, `"sub":"a"`)))
	if resp.StatusCode != http.StatusOK || up.count.Load() != 1 {
		t.Fatalf("status %d, upstream count %d: %s", resp.StatusCode, up.count.Load(), body)
	}
	if names := allowHeaderNames(resp.Header); len(names) != 0 {
		t.Fatalf("disallowed origin got %v", names)
	}
	if vary := strings.ToLower(strings.Join(resp.Header.Values("Vary"), ",")); strings.Count(vary, "origin") != 1 {
		t.Fatalf("Vary %q", resp.Header.Values("Vary"))
	}
}

// origins * (a public API) answers * without credentials, on every
// response, and replaces the upstream's answer.
func TestCORSAnyOriginPublicAPI(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", `
	cors {
		origins *
		headers *
	}
	reverse_proxy `+up.addr())
	for _, hdr := range [][]string{{"Origin", "https://anyone.example"}, {"Origin", "null"}, nil} {
		resp, _ := do(t, tc, get(t, "/data", hdr...))
		if got := resp.Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != "*" {
			t.Errorf("%v: Access-Control-Allow-Origin = %q", hdr, got)
		}
		if got := resp.Header.Get("Access-Control-Allow-Credentials"); got != "" {
			t.Errorf("%v: Access-Control-Allow-Credentials = %q", hdr, got)
		}
	}
	resp, _ := do(t, tc, request(t, http.MethodOptions, "/data",
		"Origin", "https://anyone.example", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "authorization,x-custom"))
	if resp.StatusCode != http.StatusNoContent ||
		resp.Header.Get("Access-Control-Allow-Origin") != "*" ||
		resp.Header.Get("Access-Control-Allow-Headers") != "authorization,x-custom" {
		t.Fatalf("preflight: status %d, headers %v", resp.StatusCode, resp.Header)
	}
}

// Private Network Access preflights are answered only when enabled.
func TestCORSPrivateNetwork(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		extra := ""
		if enabled {
			extra = "private_network"
		}
		tc := gateway(t, "", `
	cors {
		origins `+corsOrigin+`
		`+extra+`
	}
	respond ok`)
		resp, _ := do(t, tc, request(t, http.MethodOptions, "/",
			"Origin", corsOrigin, "Access-Control-Request-Method", "GET",
			"Access-Control-Request-Private-Network", "true"))
		got := resp.Header.Get("Access-Control-Allow-Private-Network")
		if resp.StatusCode != http.StatusNoContent || enabled != (got == "true") {
			t.Errorf("private_network %v: status %d, Access-Control-Allow-Private-Network %q", enabled, resp.StatusCode, got)
		}
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	var lc net.ListenConfig
	l, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// corsErrorService is an error-page service, as handle_errors may proxy to:
// it answers every request with a JSON error, the status asked for in
// X-Error-Status, and its own CORS headers (an
// ACAO of its own, credentials, Vary: Origin), as frameworks do. It records
// the path it was asked for.
func corsErrorService(t *testing.T, acao string) (addr string, paths chan string) {
	t.Helper()
	paths = make(chan string, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case paths <- r.URL.Path:
		default:
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", acao)
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Set("Access-Control-Expose-Headers", "X-Error-Page")
		h.Add("Vary", "Origin")
		h.Add("Vary", "Accept-Language")
		h.Set("Content-Type", "application/json")
		status, err := strconv.Atoi(r.Header.Get("X-Error-Status"))
		if err != nil {
			status = http.StatusInternalServerError
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"error":"error page"}`))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), paths
}

// Issue 18 item 5: handle_errors proxying to an error-page service that sets
// its own CORS headers. The response still carries one answer, the
// gateway's: one Access-Control-Allow-Origin (the request's origin, not the
// service's), one -Allow-Credentials, the configured expose, Vary listing
// Origin once and keeping the service's Accept-Language; the error route
// sees the original URI. A disallowed origin gets no CORS header at all,
// not even the service's.
func TestCORSOneAnswerOnErrorRouteProxy(t *testing.T) {
	up := newCORSUpstream(t)
	for _, acao := range []string{"*", "https://other.example", corsOrigin} {
		t.Run("service ACAO "+acao, func(t *testing.T) {
			errSvc, paths := corsErrorService(t, acao)
			tc := gateway(t, "", corsSite(t, up.addr(), `
	handle_errors {
		reverse_proxy `+errSvc+` {
			header_up X-Error-Status {err.status_code}
		}
	}`))
			check := func(resp *http.Response, body string, status int) {
				t.Helper()
				if resp.StatusCode != status || body != `{"error":"error page"}` {
					t.Fatalf("status %d, want %d from the error page: %q", resp.StatusCode, status, body)
				}
				wantCORS(t, resp, corsOrigin)
				if got := resp.Header.Values("Access-Control-Expose-Headers"); len(got) != 1 {
					t.Errorf("Access-Control-Expose-Headers %q: the service's is kept beside the gateway's", got)
				}
				if vary := strings.Join(resp.Header.Values("Vary"), ","); !strings.Contains(vary, "Accept-Language") {
					t.Errorf("Vary %q lost the service's Accept-Language", vary)
				}
				select {
				case p := <-paths:
					if p != "/api/x" {
						t.Errorf("error service asked for %q, want the original /api/x", p)
					}
				default:
					t.Error("the error route did not reach the error service")
				}
			}
			// jwt_auth's 401
			resp, body := do(t, tc, get(t, "/api/x", "Origin", corsOrigin))
			check(resp, body, http.StatusUnauthorized)
			if resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("jwt_auth's WWW-Authenticate lost on the error page")
			}
			// throttle's 429 (rate 3/1m)
			for range 4 {
				resp, body = do(t, tc, get(t, "/api/x", "Origin", corsOrigin, "Authorization", "Bearer "+token(t, `"sub":"a"`)))
			}
			check(resp, body, http.StatusTooManyRequests)
			// a disallowed origin: no answer at all, not the service's
			resp, _ = do(t, tc, get(t, "/api/x", "Origin", "https://evil.example"))
			if names := allowHeaderNames(resp.Header); len(names) != 0 || resp.Header.Get("Access-Control-Expose-Headers") != "" {
				t.Errorf("disallowed origin: error page carries %v", resp.Header)
			}
			if resp.StatusCode != http.StatusTooManyRequests { // the same client, still over its rate
				t.Errorf("disallowed origin: status %d, want 429", resp.StatusCode)
			}
		})
	}
}

// GET, HEAD and POST are always allowed in a preflight, whatever `methods`
// lists; another method must be listed. Refusals carry no
// Access-Control-Allow-* header; nothing reaches jwt_auth or the upstream.
func TestCORSPreflightSafelistedMethods(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", `
	cors /api/* {
		origins `+corsOrigin+`
		methods DELETE
	}
	jwt_auth /api/* {
		secret `+jwtSecret+`
	}
	reverse_proxy `+up.addr())
	for method, want := range map[string]int{
		"GET": http.StatusNoContent, "HEAD": http.StatusNoContent, "POST": http.StatusNoContent,
		"DELETE": http.StatusNoContent, "PUT": http.StatusForbidden, "PATCH": http.StatusForbidden,
	} {
		resp, _ := do(t, tc, request(t, http.MethodOptions, "/api/orders",
			"Origin", corsOrigin, "Access-Control-Request-Method", method,
			"Access-Control-Request-Headers", "authorization"))
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", method, resp.StatusCode, want)
			continue
		}
		if want == http.StatusForbidden {
			if names := allowHeaderNames(resp.Header); len(names) != 0 {
				t.Errorf("%s: refusal carries %v", method, names)
			}
			continue
		}
		for k, v := range map[string]string{
			"Access-Control-Allow-Origin":  corsOrigin,
			"Access-Control-Allow-Methods": "DELETE",
			"Access-Control-Allow-Headers": "Authorization, Content-Type",
			"Access-Control-Max-Age":       "300",
		} {
			if got := resp.Header.Values(k); len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s = %q, want %q", method, k, got, v)
			}
		}
	}
	// an origin not allowed is refused for a safelisted method too
	resp, _ := do(t, tc, request(t, http.MethodOptions, "/api/orders",
		"Origin", "https://evil.example", "Access-Control-Request-Method", "GET"))
	if resp.StatusCode != http.StatusForbidden || len(allowHeaderNames(resp.Header)) != 0 {
		t.Errorf("disallowed origin, GET: status %d, headers %v", resp.StatusCode, resp.Header)
	}
	if n := up.count.Load(); n != 0 {
		t.Fatalf("upstream saw %d preflights", n)
	}
}

// An error route that itself fails: the response keeps the first error's
// status (as Caddy answers it) and the CORS answer, and cors placed inside
// handle_errors too does not run the error routes again.
func TestCORSErrorRouteFails(t *testing.T) {
	up := newCORSUpstream(t)
	tc := gateway(t, "", corsSite(t, up.addr(), `
	handle_errors {
		cors {
			origins `+corsOrigin+`
		}
		error "error page broke" 500
	}`))
	resp, _ := do(t, tc, get(t, "/api/x", "Origin", corsOrigin))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want the first error's 401", resp.StatusCode)
	}
	wantCORS(t, resp, corsOrigin)
}
