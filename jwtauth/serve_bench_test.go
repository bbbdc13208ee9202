package jwtauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkServeHTTP measures the whole handler as a request sees it: an
// RS256 token seen before (so served by the verified-token cache), two
// identity headers, a spoofed one deleted, {http.auth.user.*} set. The
// "request" case builds the same request and calls the next handler
// directly: the handler's own cost is the difference. What a request then
// costs behind it (reverse_proxy copying and logging the two headers) is
// measured by `make load`.
func BenchmarkServeHTTP(b *testing.B) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &Handler{
		PublicKeys: []string{"../testdata/keys/rsa2048.pem"},
		Headers:    map[string]string{"X-User-Id": "sub", "X-User-Role": "role"},
	}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	h.logger = zap.NewNop() // Caddy's default level is INFO: no debug line per request
	now := time.Now().Unix()
	tok := signRaw(b, jwt.SigningMethodRS256, privateKey(b, "rsa2048.key"), `{"alg":"RS256","typ":"JWT"}`,
		`{"sub":"alice","role":"admin","iat":`+strconv.FormatInt(now, 10)+`,"exp":`+strconv.FormatInt(now+3600, 10)+`}`)
	authz := "Bearer " + tok
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	base := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "/", nil)
	newRequest := func() *http.Request {
		// The replacer as Caddy's server makes it for every request: with
		// its HTTP placeholders mapped, so that the handler's own
		// placeholders meet the replacer a real request has.
		r := base.WithContext(context.Background())
		r.Header = http.Header{"Authorization": {authz}, "X-User-Id": {"spoof"}}
		caddyhttp.NewTestReplacer(r)
		return r
	}
	if err := h.ServeHTTP(w, newRequest(), next); err != nil { // warm the cache
		b.Fatal(err)
	}
	b.Run("request", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := next.ServeHTTP(w, newRequest()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jwt_auth", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := h.ServeHTTP(w, newRequest(), next); err != nil {
				b.Fatal(err)
			}
		}
	})
}
