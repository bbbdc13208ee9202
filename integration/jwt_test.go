package integration

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const jwtSecret = "integration-secret-0123456789abcdef"

// echoUpstream is a loopback upstream that records every request it gets
// and answers with the request's headers as JSON.
type echoUpstream struct {
	*httptest.Server
	mu    sync.Mutex
	reqs  []*http.Request
	count atomic.Int32
}

func newEchoUpstream(t *testing.T) *echoUpstream {
	t.Helper()
	u := &echoUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.count.Add(1)
		u.mu.Lock()
		u.reqs = append(u.reqs, r.Clone(r.Context()))
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"headers": r.Header, "uri": r.RequestURI})
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *echoUpstream) last(t *testing.T) *http.Request {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("upstream was never reached")
	}
	return u.reqs[len(u.reqs)-1]
}

func (u *echoUpstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }

// rawToken signs raw header and payload JSON with HS256 and jwtSecret.
func rawToken(t *testing.T, payload string) string {
	t.Helper()
	signing := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(payload))
	sig, err := jwt.SigningMethodHS256.Sign(signing, []byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// token makes a valid HS256 token with the given extra claims (raw JSON
// members, e.g. `"role":"admin"`).
func token(t *testing.T, extra string) string {
	t.Helper()
	now := time.Now().Unix()
	p := `{"iat":` + itoa(now) + `,"exp":` + itoa(now+3600)
	if extra != "" {
		p += "," + extra
	}
	return rawToken(t, p+"}")
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func bearer(tok string) string { return "Bearer " + tok }

// identityHeaders returns every header of r that names the identity header
// in any casing or with `_` for `-`.
func identityHeaders(r *http.Request, name string) []string {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "-")) }
	var out []string
	for k, v := range r.Header {
		if norm(k) == norm(name) {
			out = append(out, k+"="+strings.Join(v, ","))
		}
	}
	return out
}

func TestJWTValidTokenInjectsIdentity(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		header X-User-Id sub
		header X-User-Role role
		header X-Account account
		header X-Groups groups
		header X-Org org
	}
	reverse_proxy `+up.addr()+` {
		header_up X-Placeholder-Id {http.auth.user.id}
		header_up X-Placeholder-Org {http.auth.user.org.name}
		header_up X-Placeholder-Missing "[{http.auth.user.nope}]"
	}`)
	tok := token(t, `"sub":"alice","role":"admin","account":9007199254740993,"groups":["a","b"],"org":{"name":"acme","id":7}`)
	resp, body := do(t, tc, get(t, "/", "Authorization", bearer(tok)))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	r := up.last(t)
	for name, want := range map[string]string{
		"X-User-Id":             "alice",
		"X-User-Role":           "admin",
		"X-Account":             "9007199254740993",
		"X-Groups":              "a, b",
		"X-Org":                 `{"id":7,"name":"acme"}`,
		"X-Placeholder-Id":      "alice",
		"X-Placeholder-Org":     "acme",
		"X-Placeholder-Missing": "[]",
	} {
		if got := r.Header.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	// The token goes on unless strip_token is set.
	if r.Header.Get("Authorization") != bearer(tok) {
		t.Error("Authorization was removed without strip_token")
	}
}

func TestJWTSchemeCaseInsensitive(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
	}
	reverse_proxy `+up.addr())
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		resp, body := do(t, tc, get(t, "/", "Authorization", scheme+" "+token(t, `"sub":"a"`)))
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: status %d %s", scheme, resp.StatusCode, body)
		}
	}
	resp, _ := do(t, tc, get(t, "/", "Authorization", "Basic YTpi"))
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Bearer realm="restricted"` {
		t.Errorf("Basic credentials: %d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}

// Client-sent identity headers never reach an upstream: not with a valid
// token lacking the claim, not anonymous in optional mode, not on a
// preflight, not on a refused request whose error route proxies.
func TestJWTSpoofedIdentityHeadersNeverReachUpstream(t *testing.T) {
	up := newEchoUpstream(t)
	spoof := func(req *http.Request) *http.Request {
		// Raw map keys keep their casing on the wire.
		req.Header["X-User-Id"] = []string{"mallory1"}
		req.Header["x-user-id"] = []string{"mallory2"}
		req.Header["X_User_Id"] = []string{"mallory3"}
		req.Header["x_USER-id"] = []string{"mallory4"}
		return req
	}
	check := func(t *testing.T, wantCount int32, want string) {
		t.Helper()
		if got := up.count.Load(); got != wantCount {
			t.Fatalf("upstream reached %d times, want %d", got, wantCount)
		}
		got := identityHeaders(up.last(t), "X-User-Id")
		if want == "" && len(got) != 0 {
			t.Fatalf("spoofed identity reached the upstream: %v", got)
		}
		if want != "" && (len(got) != 1 || got[0] != "X-User-Id="+want) {
			t.Fatalf("identity headers at upstream = %v, want only %s", got, want)
		}
	}

	t.Run("valid token lacking the claim", func(t *testing.T) {
		tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		header X-User-Id uid
	}
	reverse_proxy `+up.addr())
		n := up.count.Load()
		resp, body := do(t, tc, spoof(get(t, "/", "Authorization", bearer(token(t, `"sub":"alice"`)))))
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		check(t, n+1, "")
		// And with the claim, exactly the verified value arrives.
		resp, _ = do(t, tc, spoof(get(t, "/", "Authorization", bearer(token(t, `"uid":"alice"`)))))
		if resp.StatusCode != 200 {
			t.Fatal(resp.StatusCode)
		}
		check(t, n+2, "alice")
	})
	// Caddy itself drops headers with underscores unless the server
	// allowlists them; with them allowed, jwt_auth still deletes them.
	t.Run("underscore variants allowed by the server", func(t *testing.T) {
		tc := gateway(t, `servers {
		expected_underscore_headers X_User_Id x_USER-id
	}`, `
	jwt_auth {
		secret `+jwtSecret+`
		header X-User-Id sub
	}
	reverse_proxy `+up.addr())
		n := up.count.Load()
		req := get(t, "/", "Authorization", bearer(token(t, `"sub":"alice"`)))
		req.Header["X_User_Id"] = []string{"mallory3"}
		req.Header["x_USER-id"] = []string{"mallory4"}
		resp, _ := do(t, tc, req)
		if resp.StatusCode != 200 {
			t.Fatal(resp.StatusCode)
		}
		check(t, n+1, "alice")
	})
	t.Run("optional without token", func(t *testing.T) {
		tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		header X-User-Id sub
		optional
	}
	reverse_proxy `+up.addr())
		n := up.count.Load()
		resp, _ := do(t, tc, spoof(get(t, "/")))
		if resp.StatusCode != 200 {
			t.Fatal(resp.StatusCode)
		}
		check(t, n+1, "")
	})
	t.Run("preflight", func(t *testing.T) {
		tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		header X-User-Id sub
		allow_preflight
	}
	reverse_proxy `+up.addr())
		n := up.count.Load()
		req := spoof(request(t, http.MethodOptions, "/", "Origin", "https://app.example", "Access-Control-Request-Method", "POST"))
		resp, _ := do(t, tc, req)
		if resp.StatusCode != 200 {
			t.Fatal(resp.StatusCode)
		}
		check(t, n+1, "")
	})
	t.Run("refused request", func(t *testing.T) {
		tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		header X-User-Id sub
	}
	reverse_proxy `+up.addr()+`
	handle_errors {
		reverse_proxy `+up.addr()+`
	}`)
		n := up.count.Load()
		resp, _ := do(t, tc, spoof(get(t, "/", "Authorization", "Bearer not.a.token")))
		if resp.StatusCode != 200 { // the error route's proxy answered
			t.Fatal(resp.StatusCode)
		}
		check(t, n+1, "")
	})
}

// A claim holding CR, LF or NUL that maps to a header refuses the request:
// never a split header, never a 502.
func TestJWTControlCharacterClaimRefused(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		header X-User-Role role
	}
	reverse_proxy `+up.addr())
	for _, v := range []string{`admin\r\nX-Injected: 1`, `admin\nX-Injected: 1`, `admin\u0000`, `a\rb`} {
		resp, body := do(t, tc, get(t, "/", "Authorization", bearer(token(t, `"sub":"a","role":"`+v+`"`))))
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Errorf("role %s: status %d %q %s", v, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
	}
	if n := up.count.Load(); n != 0 {
		t.Fatalf("upstream reached %d times", n)
	}
}

func TestJWTChallengesAndStatuses(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		realm api
		scope read write
		claim role admin editor
		from_header Authorization Bearer
		from_query access_token
	}
	reverse_proxy `+up.addr())
	ok := token(t, `"sub":"a","scope":"read write other","role":"editor"`)
	twoHeaders := get(t, "/")
	twoHeaders.Header["Authorization"] = []string{bearer(ok), bearer(ok)}
	cases := []struct {
		name      string
		req       *http.Request
		status    int
		challenge string
	}{
		{"valid", get(t, "/", "Authorization", bearer(ok)), 200, ""},
		{"valid from query", get(t, "/?access_token="+ok), 200, ""},
		{"no token", get(t, "/"), 401, `Bearer realm="api"`},
		{"garbage", get(t, "/", "Authorization", "Bearer abc"), 401, `Bearer realm="api", error="invalid_token"`},
		{"expired", get(t, "/", "Authorization", bearer(rawToken(t, `{"sub":"a","exp":1000}`))), 401, `Bearer realm="api", error="invalid_token"`},
		{"missing scope", get(t, "/", "Authorization", bearer(token(t, `"sub":"a","scope":"read","role":"admin"`))), 403, `Bearer realm="api", error="insufficient_scope", scope="read write"`},
		{"scp array", get(t, "/", "Authorization", bearer(token(t, `"sub":"a","scp":["read","write"],"role":["user","admin"]`))), 200, ""},
		{"claim mismatch", get(t, "/", "Authorization", bearer(token(t, `"sub":"a","scope":"read write","role":"user"`))), 403, `Bearer realm="api", error="insufficient_scope", scope="read write"`},
		{"two sources", get(t, "/?access_token="+ok, "Authorization", bearer(ok)), 400, `Bearer realm="api", error="invalid_request"`},
		{"two Authorization headers", twoHeaders, 400, `Bearer realm="api", error="invalid_request"`},
		{"two query params", get(t, "/?access_token="+ok+"&access_token="+ok), 400, `Bearer realm="api", error="invalid_request"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, tc, c.req)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != c.challenge {
				t.Fatalf("WWW-Authenticate = %q, want %q", got, c.challenge)
			}
			if c.status != 200 && strings.Contains(body, ok) {
				t.Fatal("token echoed in the error body")
			}
		})
	}
}

func TestJWTHandleErrorsAndExpression(t *testing.T) {
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
	}
	@admin expression {http.auth.user.role} == "admin"
	respond @admin "hello admin {http.auth.user.id}" 200
	respond "hello user {http.auth.user.id}" 200
	handle_errors {
		respond "refused: {http.auth.jwt.error} ({err.status_code})"
	}`)
	resp, body := do(t, tc, get(t, "/", "Authorization", bearer(token(t, `"sub":"alice","role":"admin"`))))
	if resp.StatusCode != 200 || body != "hello admin alice" {
		t.Errorf("admin: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, tc, get(t, "/", "Authorization", bearer(token(t, `"sub":"bob","role":"user"`))))
	if resp.StatusCode != 200 || body != "hello user bob" {
		t.Errorf("user: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, tc, get(t, "/", "Authorization", bearer(rawToken(t, `{"sub":"a","exp":1000}`))))
	if resp.StatusCode != 401 || body != "refused: token expired (401)" {
		t.Errorf("expired: %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("WWW-Authenticate") == "" {
		t.Error("handle_errors lost the challenge")
	}
}

func TestJWTStripToken(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		from_header Authorization Bearer
		from_cookie session
		from_query access_token
		strip_token
	}
	reverse_proxy `+up.addr())
	tok := token(t, `"sub":"a"`)

	resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(tok)))
	if resp.StatusCode != 200 || up.last(t).Header.Get("Authorization") != "" {
		t.Errorf("header: %d, upstream Authorization %q", resp.StatusCode, up.last(t).Header.Get("Authorization"))
	}
	resp, _ = do(t, tc, get(t, "/", "Cookie", "theme=dark; session="+tok+"; lang=en"))
	if c := up.last(t).Header.Get("Cookie"); resp.StatusCode != 200 || strings.Contains(c, tok) || !strings.Contains(c, "theme=dark") || !strings.Contains(c, "lang=en") {
		t.Errorf("cookie: %d, upstream Cookie %q", resp.StatusCode, c)
	}
	resp, _ = do(t, tc, get(t, "/items?page=2&access_token="+tok))
	if uri := up.last(t).RequestURI; resp.StatusCode != 200 || uri != "/items?page=2" {
		t.Errorf("query: %d, upstream URI %q", resp.StatusCode, uri)
	}
}

func TestJWTOptionalAndPreflight(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		optional
	}
	reverse_proxy `+up.addr()+` {
		header_up X-Seen-User "[{http.auth.user.id}]"
	}`)
	resp, _ := do(t, tc, get(t, "/"))
	if resp.StatusCode != 200 || up.last(t).Header.Get("X-Seen-User") != "[]" {
		t.Errorf("anonymous: %d %q", resp.StatusCode, up.last(t).Header.Get("X-Seen-User"))
	}
	resp, _ = do(t, tc, get(t, "/", "Authorization", "Bearer bad.token.here"))
	if resp.StatusCode != 401 {
		t.Errorf("bad token in optional mode: %d", resp.StatusCode)
	}

	tc = gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		allow_preflight
	}
	reverse_proxy `+up.addr())
	resp, _ = do(t, tc, request(t, http.MethodOptions, "/", "Origin", "https://app.example", "Access-Control-Request-Method", "PUT"))
	if resp.StatusCode != 200 {
		t.Errorf("preflight: %d", resp.StatusCode)
	}
	resp, _ = do(t, tc, request(t, http.MethodOptions, "/"))
	if resp.StatusCode != 401 {
		t.Errorf("OPTIONS that is no preflight: %d", resp.StatusCode)
	}
}

// The access log carries the verified user id.
func TestJWTAccessLogUserID(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "access.log")
	tc := gateway(t, "", `
	log {
		output file `+logFile+`
	}
	jwt_auth {
		secret `+jwtSecret+`
		user_id profile.login
	}
	respond "ok" 200`)
	resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(token(t, `"sub":"x","profile":{"login":"carol"}`))))
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	var data []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		data, _ = os.ReadFile(logFile)
		if strings.Contains(string(data), `"user_id"`) {
			break
		}
	}
	if !strings.Contains(string(data), `"user_id":"carol"`) {
		t.Fatalf("access log has no user_id carol:\n%s", data)
	}
}

// A hostile 16 KB token is refused at once with 401, not a 5xx.
func TestJWTHugeGarbageToken(t *testing.T) {
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
	}
	respond "ok" 200`)
	resp, _ := do(t, tc, get(t, "/", "Authorization", "Bearer "+strings.Repeat("A.", 8<<10)))
	if resp.StatusCode != 401 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}
