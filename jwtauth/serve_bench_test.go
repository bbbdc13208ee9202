package jwtauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// BenchmarkServeHTTP measures the whole handler for a repeated (cached)
// HS256 token with two identity headers, as a request sees it.
func BenchmarkServeHTTP(b *testing.B) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &Handler{Secret: testSecret, Headers: map[string]string{"X-User-Id": "sub", "X-User-Role": "role"}}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	h.now = time.Now
	h.logger = zap.NewNop()
	h.verifier.now = time.Now
	now := time.Now().Unix()
	tok := hs256(b, `{"sub":"alice","role":"admin","iat":`+itoa(int(now))+`,"exp":`+itoa(int(now+3600))+`}`)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { return nil })
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		r.Header.Set("X-User-Id", "spoof")
		repl := caddy.NewReplacer()
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		if err := h.ServeHTTP(w, r, next); err != nil {
			b.Fatal(err)
		}
	}
}
