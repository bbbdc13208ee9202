package apikey

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// BenchmarkServeHTTP measures the whole handler as a request sees it: a
// valid key in X-API-Key looked up among 1000 entries, two identity
// headers, a spoofed one deleted, {http.auth.user.*} set, the key removed.
// The "request" case builds the same request (the same X-API-Key header)
// and calls the next handler directly: the handler's own cost is the
// difference.
func BenchmarkServeHTTP(b *testing.B) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &Handler{Headers: map[string]string{"X-Consumer-Id": "id", "X-Plan": "plan"}}
	for i := range 1000 {
		k := Key{ID: "k" + strconv.Itoa(i), SHA256: hexDigest(demoKey + strconv.Itoa(i)), Identity: "c" + strconv.Itoa(i)}
		if i == 500 {
			k.SHA256 = hexDigest(demoKey)
			k.Claims = map[string]jsonRaw{"plan": jsonRaw(`"gold"`)}
		}
		h.Keys = append(h.Keys, k)
	}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	h.logger = zap.NewNop() // Caddy's default level is INFO: no debug line per request
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	w := httptest.NewRecorder()
	base := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "/", nil)
	newRequest := func() *http.Request {
		repl := caddy.NewReplacer()
		r := base.WithContext(context.WithValue(context.Background(), caddy.ReplacerCtxKey, repl))
		r.Header = http.Header{"X-Api-Key": {demoKey}, "X-Consumer-Id": {"spoof"}}
		return r
	}
	if err := h.ServeHTTP(w, newRequest(), next); err != nil {
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
	b.Run("api_key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := h.ServeHTTP(w, newRequest(), next); err != nil {
				b.Fatal(err)
			}
		}
	})
}
