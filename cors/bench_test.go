package cors

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// benchWriter is a ResponseWriter that keeps nothing between requests but
// its header map (cleared, capacity kept), so the benchmarks measure the
// handler rather than the recorder.
type benchWriter struct {
	hdr    http.Header
	status int
}

func (w *benchWriter) Header() http.Header         { return w.hdr }
func (w *benchWriter) WriteHeader(status int)      { w.status = status }
func (w *benchWriter) Write(b []byte) (int, error) { return len(b), nil }

var okBody = []byte(`{"ok":true}`)

// upstream writes a small JSON answer, as the next handler of the route.
var upstream = caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
	w.Header()["Content-Type"] = []string{"application/json"}
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(okBody)
	return err
})

// BenchmarkServeHTTP measures the handler on an allowed actual request
// and on a preflight, against the next handler called directly (the
// baseline: what the route costs without cors).
func BenchmarkServeHTTP(b *testing.B) {
	h := provision(b, &Handler{
		Origins:     []string{"https://app.example.com", "https://*.example.net", "http://localhost:3000"},
		Credentials: true,
		Expose:      []string{"RateLimit"},
	})
	actual := httptest.NewRequestWithContext(b.Context(), http.MethodGet, "http://gateway.example/api/users/me", nil)
	actual.Header.Set("Origin", "https://app.example.com")
	actual.Header.Set("Authorization", "Bearer x")
	wildcard := actual.Clone(actual.Context())
	wildcard.Header.Set("Origin", "https://app.example.net")
	disallowed := actual.Clone(actual.Context())
	disallowed.Header.Set("Origin", "https://evil.example")
	preflight := httptest.NewRequestWithContext(b.Context(), http.MethodOptions, "http://gateway.example/api/users/me", nil)
	preflight.Header.Set("Origin", "https://app.example.com")
	preflight.Header.Set("Access-Control-Request-Method", "POST")
	preflight.Header.Set("Access-Control-Request-Headers", "authorization,content-type")

	w := &benchWriter{hdr: make(http.Header)}
	run := func(b *testing.B, r *http.Request, serve func(http.ResponseWriter, *http.Request) error) {
		b.ReportAllocs()
		for b.Loop() {
			clear(w.hdr)
			if err := serve(w, r); err != nil {
				b.Fatal(err)
			}
		}
	}
	withCORS := func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, upstream) }

	b.Run("baseline_next_only", func(b *testing.B) { run(b, actual, upstream.ServeHTTP) })
	b.Run("actual_allowed", func(b *testing.B) { run(b, actual, withCORS) })
	b.Run("actual_allowed_wildcard", func(b *testing.B) { run(b, wildcard, withCORS) })
	b.Run("actual_disallowed", func(b *testing.B) { run(b, disallowed, withCORS) })
	b.Run("preflight", func(b *testing.B) {
		run(b, preflight, withCORS)
		if w.status != http.StatusNoContent {
			b.Fatalf("preflight status %d", w.status)
		}
	})
}
