package jwtauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func provision(t *testing.T, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		return err
	}
	defer h.Cleanup()
	return h.Validate()
}

func parse(t *testing.T, input string) (*Handler, error) {
	t.Helper()
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return &h, err
}

// A secret given as a placeholder is checked when the config loads.
func TestProvisionSecretPlaceholder(t *testing.T) {
	t.Setenv("JWT_TEST_SHORT", "short")
	t.Setenv("JWT_TEST_OK", testSecret)
	short, unset, ok := "{env.JWT_TEST_SHORT}", "{env.JWT_TEST_UNSET}", "{env.JWT_TEST_OK}"
	if err := provision(t, &Handler{Secret: short}); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("short secret from env: %v", err)
	}
	if err := provision(t, &Handler{Secret: unset}); err == nil {
		t.Fatal("empty secret from env accepted")
	}
	if err := provision(t, &Handler{Secret: ok}); err != nil {
		t.Fatalf("good secret from env: %v", err)
	}
}

// The parser refuses only what it cannot turn into fields.
func TestUnmarshalCaddyfileSyntaxErrors(t *testing.T) {
	for input, want := range map[string]string{
		"jwt_auth {\n secret " + testSecret + "\n bogus\n}":                       `unrecognized subdirective "bogus"`,
		"jwt_auth {\n secret " + testSecret + "\n leeway x\n}":                    "leeway: bad duration",
		"jwt_auth {\n secret " + testSecret + "\n from_header\n}":                 "wrong argument count",
		"jwt_auth {\n secret " + testSecret + "\n claim role\n}":                  "wrong argument count",
		"jwt_auth {\n secret " + testSecret + "\n secret " + testSecret + "\n}":   "secret: duplicate subdirective",
		"jwt_auth {\n secret " + testSecret + "\n claim a b\n claim a c\n}":       "claim a: duplicate rule",
		"jwt_auth {\n secret " + testSecret + "\n header X-A a\n header X-A b\n}": "header X-A: duplicate mapping",
		"jwt_auth {\n secret " + testSecret + "\n optional yes\n}":                "wrong argument count",
		"jwt_auth extra {\n secret " + testSecret + "\n}":                         "wrong argument count",
	} {
		if _, err := parse(t, input); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", input, err, want)
		}
	}
}

// The parser reads no file and checks no key: a config whose keys are
// absent, weak or wrong parses (so `caddy adapt` works where the keys are
// not), and Provision reports the problem naming the subdirective and the
// file.
func TestParserReadsNoFilesProvisionDoes(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{"public_key ../testdata/keys/nope.pem", "public_key: open ../testdata/keys/nope.pem: no such file"},
		{"public_key ../testdata/keys/rsa1024.pem", "public_key ../testdata/keys/rsa1024.pem: RSA key is 1024 bits"},
		{"public_key ../testdata/keys/rsa2048.key", "public_key: ../testdata/keys/rsa2048.key: holds a private key"},
		{"public_key ../testdata/keys/ec256.pem\n algorithms RS256", "public_key ../testdata/keys/ec256.pem: the key allows ES256, none of which is in algorithms"},
		{"jwks_file ../testdata/keys/none.json", "jwks_file: open ../testdata/keys/none.json: no such file"},
		{"jwks_file ../testdata/keys/rsa2048.pem", "jwks_file: ../testdata/keys/rsa2048.pem: not a JWK Set"},
		{"secret too-short", "secret: HMAC secret is 9 bytes"},
		{"secret " + testSecret + "\n algorithms HS512", "secret: HMAC secret is 32 bytes; HS512 requires at least 64"},
		{"issuer x", "no key"},
		{"jwks_url /keys.json", `jwks_url: "/keys.json" is not an absolute http(s) URL`},
		{"oidc_issuer ftp://idp.example.com", `oidc_issuer: "ftp://idp.example.com" is not an absolute http(s) URL`},
		{"secret " + testSecret + "\n algorithms none", `algorithms: unsupported algorithm "none"`},
		{"secret " + testSecret + "\n realm a\"b", "realm"},
		{"secret " + testSecret + "\n leeway 6000d", "leeway: 144000h0m0s is outside 0..1h0m0s"},
		{"secret " + testSecret + "\n leeway -1s", "leeway"},
		{"secret " + testSecret + "\n max_lifetime -1s", "max_lifetime: must not be negative"},
		{"secret " + testSecret + "\n from_header Bad:Name", `from_header: invalid header name "Bad:Name"`},
		{"secret " + testSecret + "\n header X-User-Id sub\n header x_user_id uid", "duplicate mapping"},
		{"secret " + testSecret + "\n header Authorization sub", "header Authorization: the token is read from Authorization"},
		{"secret " + testSecret + "\n header authorization sub", "the token is read from Authorization"},
		{"secret " + testSecret + "\n from_header X-Token\n header x_token sub", "header x_token: the token is read from X-Token"},
		{"secret " + testSecret + "\n from_cookie session\n header Cookie sub", "the token is read from Cookie"},
	} {
		input := "jwt_auth {\n " + tc.body + "\n}"
		h, err := parse(t, input)
		if err != nil {
			t.Errorf("%q: the parser refused it: %v", tc.body, err)
			continue
		}
		if err := provision(t, h); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: provision err = %v, want %q", tc.body, err, tc.want)
		}
	}
}

// These are fine: from_* replaces the Authorization default, so an
// Authorization identity header is then no token source.
func TestHeaderBesideOtherSources(t *testing.T) {
	h, err := parse(t, "jwt_auth {\n secret "+testSecret+"\n from_cookie session\n header Authorization sub\n leeway 1h\n}")
	if err != nil {
		t.Fatal(err)
	}
	if err := provision(t, h); err != nil {
		t.Fatal(err)
	}
}

// jwksCounter is a JWKS server that counts fetches.
func jwksCounter(t *testing.T, body string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// A config that fails its checks takes no remote key set: nothing is
// fetched, nothing started, nothing left in the pool.
func TestInvalidConfigStartsNoFetch(t *testing.T) {
	srv, fetches := jwksCounter(t, `{"keys":[]}`)
	url := srv.URL + "/never"
	for _, h := range []*Handler{
		{JWKSURLs: []string{url}, Algorithms: []string{"none"}},
		{JWKSURLs: []string{url, "ftp://x"}},
		{JWKSURLs: []string{url}, Headers: map[string]string{"Authorization": "sub"}},
		{JWKSURLs: []string{url}, PublicKeys: []string{"../testdata/keys/nope.pem"}},
		{JWKSURLs: []string{url}, Secret: "short"},
	} {
		if err := provision(t, h); err == nil {
			t.Fatalf("%+v: accepted", h)
		}
		if len(h.poolKeys) != 0 {
			t.Fatalf("%+v: took remote sets %v", h, h.poolKeys)
		}
	}
	if _, ok := remoteSets.References("jwks:" + url); ok {
		t.Fatal("a remote set was left in the pool")
	}
	time.Sleep(100 * time.Millisecond)
	if n := fetches.Load(); n != 0 {
		t.Fatalf("%d fetches for configs that failed", n)
	}
}

// A pooled set logs with the logger of the config that last took it, and
// a set full of junk keys logs one summary line per fetch.
func TestRemoteSetLoggingPerConfig(t *testing.T) {
	junk := `{"keys":[` + strings.Repeat(`{"kty":"oct","k":"c2VjcmV0"},`, 50) + `{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`
	srv, fetches := jwksCounter(t, junk)
	coreA, logsA := observer.New(zapcore.WarnLevel)
	coreB, logsB := observer.New(zapcore.WarnLevel)
	a := &Handler{logger: zap.New(coreA)}
	b := &Handler{logger: zap.New(coreB)}
	rs := a.loadRemote("jwks:"+srv.URL, "", srv.URL)
	defer a.Cleanup()
	b.loadRemote("jwks:"+srv.URL, "", srv.URL)
	defer b.Cleanup()
	if rs.logger.Load() != b.logger {
		t.Fatal("the pooled set kept the first config's logger")
	}
	before := fetches.Load()
	for deadline := time.Now().Add(5 * time.Second); fetches.Load() == before && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	rs.refreshForMiss(context.Background()) // a second fetch, coalesced or not
	time.Sleep(100 * time.Millisecond)
	// The first fetch's line is logged after the server counted it: wait
	// for it with a generous deadline.
	for deadline := time.Now().Add(5 * time.Second); logsB.FilterMessage("JWKS keys skipped").Len() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	lines := logsB.FilterMessage("JWKS keys skipped").All()
	n := int(fetches.Load()) // after: each line follows a counted fetch
	if len(lines) == 0 || len(lines) > n {
		t.Fatalf("%d skip lines for %d fetches", len(lines), n)
	}
	if got := lines[0].ContextMap()["skipped"]; got != int64(51) {
		t.Fatalf("skipped = %v, want 51", got)
	}
	if logsA.Len() != 0 {
		t.Fatalf("the first config's logger got %d lines", logsA.Len())
	}
}
