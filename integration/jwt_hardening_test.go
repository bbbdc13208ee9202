package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Header names in the config match in any casing: `header x-user-id sub`
// sets X-User-Id (and still deletes every client-sent copy).
func TestJWTIdentityHeaderNameAnyCasing(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		header x-user-id sub
		header X-USER-ROLE role
	}
	reverse_proxy `+up.addr())
	resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(token(t, `"sub":"alice","role":"admin"`)), "X-User-Id", "mallory"))
	if resp.StatusCode != http.StatusOK {
		t.Fatal(resp.StatusCode)
	}
	r := up.last(t)
	if got := identityHeaders(r, "X-User-Id"); len(got) != 1 || got[0] != "X-User-Id=alice" {
		t.Fatalf("X-User-Id at the upstream: %v", got)
	}
	if got := identityHeaders(r, "X-User-Role"); len(got) != 1 || got[0] != "X-User-Role=admin" {
		t.Fatalf("X-User-Role at the upstream: %v", got)
	}
}

// Config errors found at load, not by the parser: a header the token is
// read from, a leeway that makes exp meaningless.
func TestJWTConfigErrorsAtLoad(t *testing.T) {
	gateway(t, "", `respond "ok" 200`)
	for _, c := range []struct{ body, want string }{
		{"header Authorization sub", "header Authorization: the token is read from Authorization"},
		{"from_header X-Token\n\t\theader X-Token sub", "header X-Token: the token is read from X-Token"},
		{"from_header X-Token\n\t\theader x_token sub", "the token is read from X-Token"},
		{"leeway 6000d", "leeway"},
		{"leeway 61m", "leeway"},
		{"algorithms Ed25519", "none of which is in algorithms"},
	} {
		cfg := caddyfile("", `
	jwt_auth {
		secret `+jwtSecret+`
		`+c.body+`
	}
	respond "ok" 200`)
		status, body := adminPost(t, "/load", "text/caddyfile", cfg)
		if status == http.StatusOK || !strings.Contains(body, c.want) {
			t.Errorf("%q: load %d %s, want an error containing %q", c.body, status, body, c.want)
		}
	}
	// At the bound it loads.
	gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		leeway 1h
	}
	respond "ok" 200`)
}

// strip_token removes the token cookie only: the other cookies reach the
// upstream byte for byte, including values Go's cookie parser rejects.
func TestJWTStripTokenCookieByteForByte(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		from_cookie session
		strip_token
	}
	reverse_proxy `+up.addr())
	tok := token(t, `"sub":"a"`)
	for _, c := range []struct{ in, want string }{
		{`pref=café; session=` + tok + `; path=a\b; theme="dark"`, `pref=café; path=a\b; theme="dark"`},
		{`session=` + tok + `; a=1;b=2`, `a=1;b=2`},
		{`x=1; session=` + tok, `x=1`},
	} {
		resp, _ := do(t, tc, get(t, "/", "Cookie", c.in))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%q: %d", c.in, resp.StatusCode)
		}
		if got := up.last(t).Header.Values("Cookie"); len(got) != 1 || got[0] != c.want {
			t.Errorf("Cookie %q reached the upstream as %q, want %q", c.in, got, c.want)
		}
	}
	resp, _ := do(t, tc, get(t, "/", "Cookie", "session="+tok))
	if resp.StatusCode != http.StatusOK || len(up.last(t).Header.Values("Cookie")) != 0 {
		t.Errorf("token-only Cookie: %d, upstream Cookie %q", resp.StatusCode, up.last(t).Header.Values("Cookie"))
	}
}

// strip_token removes the token parameter only: the other parameters keep
// their order and exact encoding.
func TestJWTStripTokenQueryByteForByte(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		from_query access_token
		strip_token
	}
	reverse_proxy `+up.addr())
	tok := token(t, `"sub":"a"`)
	for _, c := range []struct{ in, want string }{
		{"/items?z=1&access_token=" + tok + "&a=%7E&flag&b=x+y&c=%2F", "/items?z=1&a=%7E&flag&b=x+y&c=%2F"},
		{"/items?access_token=" + tok + "&z=1", "/items?z=1"},
		{"/items?x=1;y=2&access_token=" + tok + "&z=1", "/items?x=1;y=2&z=1"},
		{"/items?z=1&access_%74oken=" + tok, "/items?z=1"},
		{"/items?access_token=" + tok, "/items"},
	} {
		resp, _ := do(t, tc, get(t, c.in))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%q: %d", c.in, resp.StatusCode)
		}
		if got := up.last(t).RequestURI; got != c.want {
			t.Errorf("%q reached the upstream as %q, want %q", c.in, got, c.want)
		}
	}
}

// A token read with from_query lands in Caddy's access log, which records
// the original URI; the README's filter keeps it out.
func TestJWTQueryTokenKeptOutOfAccessLog(t *testing.T) {
	tok := token(t, `"sub":"a"`)
	run := func(t *testing.T, format string) string {
		logFile := filepath.Join(t.TempDir(), "access.log")
		tc := gateway(t, "", `
	log {
		output file `+logFile+`
		`+format+`
	}
	jwt_auth {
		secret `+jwtSecret+`
		from_query access_token
		strip_token
	}
	respond "ok" 200`)
		resp, _ := do(t, tc, get(t, "/items?page=2&access_token="+tok))
		if resp.StatusCode != http.StatusOK {
			t.Fatal(resp.StatusCode)
		}
		var data []byte
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if data, _ = os.ReadFile(logFile); strings.Contains(string(data), `"uri"`) {
				break
			}
		}
		var entry struct {
			Request struct {
				URI string `json:"uri"`
			} `json:"request"`
		}
		line, _, _ := strings.Cut(string(data), "\n")
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("access log: %v\n%s", err, data)
		}
		if !strings.Contains(string(data), "page=2") {
			t.Fatalf("access log lacks the request:\n%s", data)
		}
		return string(data)
	}
	t.Run("without the filter the token is logged", func(t *testing.T) {
		if log := run(t, ""); !strings.Contains(log, tok) {
			t.Fatalf("expected the token in the unfiltered log (else this test proves nothing):\n%s", log)
		}
	})
	t.Run("with the documented filter it is not", func(t *testing.T) {
		log := run(t, `format filter {
			request>uri query {
				delete access_token
			}
		}`)
		if strings.Contains(log, tok) || strings.Contains(log, strings.Split(tok, ".")[2]) {
			t.Fatalf("token in the filtered access log:\n%s", log)
		}
	})
}

// A token read from a custom header is logged with the request headers
// (Caddy redacts only Authorization and Cookie); the documented filter
// removes it.
func TestJWTHeaderTokenKeptOutOfAccessLog(t *testing.T) {
	tok := token(t, `"sub":"a"`)
	run := func(t *testing.T, format string) string {
		logFile := filepath.Join(t.TempDir(), "access.log")
		tc := gateway(t, "", `
	log {
		output file `+logFile+`
		`+format+`
	}
	jwt_auth {
		secret `+jwtSecret+`
		from_header X-Token
	}
	respond "ok" 200`)
		resp, _ := do(t, tc, get(t, "/marker", "X-Token", tok))
		if resp.StatusCode != http.StatusOK {
			t.Fatal(resp.StatusCode)
		}
		var data []byte
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if data, _ = os.ReadFile(logFile); strings.Contains(string(data), "/marker") {
				break
			}
		}
		if !strings.Contains(string(data), "/marker") {
			t.Fatalf("access log lacks the request:\n%s", data)
		}
		return string(data)
	}
	if log := run(t, ""); !strings.Contains(log, tok) {
		t.Fatalf("expected the token in the unfiltered log (else this test proves nothing):\n%s", log)
	}
	if log := run(t, `format filter {
			request>headers>X-Token delete
		}`); strings.Contains(log, tok) {
		t.Fatalf("token in the filtered access log:\n%s", log)
	}
}

// A header with a duplicate member name, or a member name in another
// casing, is refused through the whole stack.
func TestJWTStrictHeaderThroughCaddy(t *testing.T) {
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
	}
	handle_errors {
		respond "{http.auth.jwt.error}" {err.status_code}
	}
	respond "ok" 200`)
	now := time.Now().Unix()
	payload := `{"sub":"a","exp":` + itoa(now+60) + `}`
	for hdr, want := range map[string]string{
		`{"alg":"HS256"}`:                     "",
		`{"ALG":"HS256"}`:                     "algorithm not allowed",
		`{"alg":"HS256","alg":"HS256"}`:       "malformed token",
		`{"alg":"HS256","typ":"JWT","typ":1}`: "malformed token",
	} {
		resp, body := do(t, tc, get(t, "/", "Authorization", bearer(signedHS256(t, hdr, payload))))
		if want == "" {
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: %d %s", hdr, resp.StatusCode, body)
			}
			continue
		}
		if resp.StatusCode != http.StatusUnauthorized || body != want {
			t.Errorf("%s: %d %q, want 401 %q", hdr, resp.StatusCode, body, want)
		}
	}
}

func signedHS256(t *testing.T, header, payload string) string {
	t.Helper()
	signing := b64u([]byte(header)) + "." + b64u([]byte(payload))
	sig, err := jwt.SigningMethodHS256.Sign(signing, []byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + b64u(sig)
}

// "aud": [] (as Hydra issues it) is refused as an audience problem.
func TestJWTEmptyAudienceArray(t *testing.T) {
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		audience api
	}
	handle_errors {
		respond "{http.auth.jwt.error}" {err.status_code}
	}
	respond "ok" 200`)
	resp, body := do(t, tc, get(t, "/", "Authorization", bearer(token(t, `"sub":"a","aud":[]`))))
	if resp.StatusCode != http.StatusUnauthorized || body != "audience not accepted" {
		t.Fatalf("aud []: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, tc, get(t, "/", "Authorization", bearer(token(t, `"sub":"a","aud":["web","api"]`))))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("aud [web api]: %d %q", resp.StatusCode, body)
	}
}

// A handler after jwt_auth that rewrites an identity header in place
// changes that request only: the next request with the same (cached)
// token gets the value from the claims again.
func TestJWTCachedIdentityNotShared(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	route {
		jwt_auth {
			secret `+jwtSecret+`
			header X-User-Id sub
		}
		request_header X-User-Id a aa
		reverse_proxy `+up.addr()+`
	}`)
	tok := token(t, `"sub":"alice"`)
	for i := range 3 {
		resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(tok)))
		if resp.StatusCode != http.StatusOK {
			t.Fatal(resp.StatusCode)
		}
		if got := up.last(t).Header.Get("X-User-Id"); got != "aalice" {
			t.Fatalf("request %d: X-User-Id %q, want aalice", i+1, got)
		}
	}
}
