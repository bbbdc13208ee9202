package jwtauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

func TestParseJWKSKeyRules(t *testing.T) {
	weak, _ := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // a weak key is what this test must see refused
	strong := privateKey(t, "rsa2048.key").(*rsa.PrivateKey)
	ec := privateKey(t, "ec256.key").(*ecdsa.PrivateKey)
	pt, _ := ec.PublicKey.Bytes()
	rsaJWK := func(kid, alg string, pub *rsa.PublicKey, extra string) string {
		s := `{"kty":"RSA","kid":"` + kid + `","n":"` + enc(string(pub.N.Bytes())) + `","e":"AQAB"`
		if alg != "" {
			s += `,"alg":"` + alg + `"`
		}
		return s + extra + "}"
	}
	set := `{"keys":[` + strings.Join([]string{
		rsaJWK("no-alg", "", &strong.PublicKey, ""),
		rsaJWK("ps", "PS256", &strong.PublicKey, ""),
		rsaJWK("weak", "", &weak.PublicKey, ""),
		rsaJWK("enc", "", &strong.PublicKey, `,"use":"enc"`),
		rsaJWK("private", "", &strong.PublicKey, `,"d":"AQAB"`),
		rsaJWK("ops", "", &strong.PublicKey, `,"key_ops":["encrypt"]`),
		`{"kty":"EC","kid":"ec","crv":"P-256","x":"` + enc(string(pt[1:33])) + `","y":"` + enc(string(pt[33:])) + `"}`,
		`{"kty":"EC","kid":"off-curve","crv":"P-256","x":"` + enc(string(pt[1:33])) + `","y":"` + enc(string(pt[1:33])) + `"}`,
		`{"kty":"EC","kid":"k1","crv":"secp256k1","x":"AA","y":"AA"}`,
		`{"kty":"oct","kid":"hmac","k":"` + enc(testSecret) + `"}`,
		`{"kty":"RSA","kid":"alg-mismatch","alg":"ES256","n":"` + enc(string(strong.N.Bytes())) + `","e":"AQAB"}`,
	}, ",") + `]}`
	keys, skipped, err := parseJWKS([]byte(set), false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]algSet{}
	for _, k := range keys {
		got[k.kid] = k.algs
	}
	if got["no-alg"] != rsaAlgs {
		t.Errorf("RSA key without alg pinned to %s, want RS* and PS*", got["no-alg"])
	}
	if got["ps"] != 1<<algPS256 {
		t.Errorf("RSA key with alg PS256 pinned to %s", got["ps"])
	}
	if got["ec"] != 1<<algES256 {
		t.Errorf("P-256 key pinned to %s", got["ec"])
	}
	if len(keys) != 3 {
		t.Errorf("kept %d keys (%v), want 3", len(keys), got)
	}
	if len(skipped) != 8 {
		t.Errorf("skipped %d: %v", len(skipped), skipped)
	}
	// A local file may hold a symmetric key.
	keys, _, _ = parseJWKS([]byte(`{"keys":[{"kty":"oct","kid":"h","k":"`+enc(testSecret)+`"}]}`), true)
	if len(keys) != 1 || keys[0].algs != 1<<algHS256 {
		t.Errorf("oct key in a file: %v", keys)
	}
	if _, _, err := parseJWKS([]byte(`{"nokeys":[]}`), false); err == nil {
		t.Error("a document without keys accepted")
	}
}

func TestRefreshInterval(t *testing.T) {
	for cc, want := range map[string]time.Duration{
		"":                            jwksDefaultRefresh,
		"no-cache":                    jwksMinRefresh,
		"no-store":                    jwksMinRefresh,
		"No-Store, max-age=3600":      jwksMinRefresh,
		"max-age=3600, no-cache":      jwksMinRefresh,
		"public, max-age=3600":        time.Hour,
		"max-age=5":                   jwksMinRefresh,
		"max-age=99999999999999":      jwksMaxRefresh,
		"max-age=-1":                  jwksDefaultRefresh,
		"max-age=abc":                 jwksDefaultRefresh,
		`public, MAX-AGE="120", must`: 2 * time.Minute,
	} {
		if got := refreshInterval(cc); got != want {
			t.Errorf("refreshInterval(%q) = %v, want %v", cc, got, want)
		}
	}
}

func TestTokenCache(t *testing.T) {
	c := newTokenCache()
	now := time.Unix(1000, 0)
	k := tokenKey("token-a")
	claims := &grant{claims: jwt.MapClaims{"sub": "a"}}
	c.put(&k, claims, 1, now.Add(time.Minute), now)
	if _, ok := c.get(&k, 1, now); !ok {
		t.Fatal("miss right after put")
	}
	if _, ok := c.get(&k, 1, now.Add(time.Minute)); ok {
		t.Fatal("hit at expiry")
	}
	c.put(&k, claims, 1, now.Add(time.Minute), now)
	if _, ok := c.get(&k, 2, now); ok {
		t.Fatal("hit after the keys changed")
	}
	if _, ok := c.get(&k, 1, now); ok {
		t.Fatal("entry survived a key change")
	}
	// A put verified under older keys is not stored.
	c.put(&k, claims, 1, now.Add(time.Minute), now)
	if _, ok := c.get(&k, 2, now); ok {
		t.Fatal("stale put stored")
	}
	// Bounded.
	for i := range 3 * tokenCacheSize {
		key := tokenKey("t" + string(rune(i)) + itoa(i))
		c.put(&key, claims, 2, now.Add(time.Minute), now)
	}
	if n := c.len(); n > tokenCacheSize {
		t.Fatalf("cache holds %d entries, bound %d", n, tokenCacheSize)
	}
}

func testCounters(t testing.TB) *counters {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	c, err := newCounters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

// A token verified once is served from the cache, with its time claims
// checked on every hit.
func TestHandlerCacheRechecksTime(t *testing.T) {
	now := testNow
	h := &Handler{now: func() time.Time { return now }, counters: testCounters(t)}
	keys, _ := staticKeys(testSecret, nil, allAlgSet)
	h.verifier = newVerifier(verifierConfig{keys: staticKeySet(keys), allowed: keys[0].algs, now: h.now})
	h.cache = newTokenCache()
	tok := hs256(t, `{"sub":"a","exp":1800000010}`)
	if _, err := h.verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if h.cache.len() != 1 {
		t.Fatal("not cached")
	}
	if _, err := h.verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	now = now.Add(9 * time.Second)
	if _, err := h.verify(context.Background(), tok); err != nil {
		t.Fatalf("before exp: %v", err)
	}
	now = now.Add(2 * time.Second)
	if _, err := h.verify(context.Background(), tok); !errors.Is(err, errExpired) {
		t.Fatalf("after exp: %v", err)
	}
}

// BenchmarkVerifyCached is a repeated token through the handler's cache:
// hash, lookup, claims re-checked. Compare with BenchmarkVerify.
func BenchmarkVerifyCached(b *testing.B) {
	for i, tc := range benchAlgs {
		b.Run(tc.name, func(b *testing.B) {
			v, token := benchSetup(b, i)
			h := &Handler{now: frozen, verifier: v, cache: newTokenCache(), counters: testCounters(b)}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := h.verify(context.Background(), token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// An unchanged set keeps its generation (and the cache); a changed one
// does not.
func TestSameKeys(t *testing.T) {
	data := []byte(`{"keys":[` + func() string {
		b, _ := json.Marshal(map[string]string{"kty": "OKP", "crv": "Ed25519", "kid": "a", "x": enc(string(privateKey(t, "ed25519.key").(interface{ Public() crypto.PublicKey }).Public().(ed25519.PublicKey)))})
		return string(b)
	}() + `]}`)
	a, _, _ := parseJWKS(data, false)
	b, _, _ := parseJWKS(data, false)
	if !sameKeys(a, b) {
		t.Fatal("identical sets differ")
	}
	rsaA, _, _ := parseJWKS([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"`+enc(string(privateKey(t, "rsa2048.key").(*rsa.PrivateKey).N.Bytes()))+`","e":"AQAB"}]}`), false)
	rsaB, _, _ := parseJWKS([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"`+enc(string(privateKey(t, "rsa2048.key").(*rsa.PrivateKey).N.Bytes()))+`","e":"AQAB"}]}`), false)
	if !sameKeys(rsaA, rsaB) {
		t.Fatal("identical RSA sets differ")
	}
	if sameKeys(a, rsaA) {
		t.Fatal("different sets equal")
	}
}

// len counts the cached entries (tests only).
func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.Lock()
		n += len(c.shards[i].entries)
		c.shards[i].mu.Unlock()
	}
	return n
}

// A key set served with no-store or no-cache (as Hydra does) is refreshed
// at the minimum interval, so a key deleted at the issuer is dropped soon.
func TestFetchNoStoreRefreshesAtMinimum(t *testing.T) {
	for cc, want := range map[string]time.Duration{
		"no-store":             jwksMinRefresh,
		"no-cache":             jwksMinRefresh,
		"private, max-age=600": 10 * time.Minute,
		"":                     jwksDefaultRefresh,
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if cc != "" {
				w.Header().Set("Cache-Control", cc)
			}
			_, _ = w.Write([]byte(`{"keys":[]}`))
		}))
		s := &remoteKeySet{url: srv.URL, client: srv.Client(), ctx: context.Background()}
		s.logger.Store(zap.NewNop())
		next, err := s.fetch()
		srv.Close()
		if err != nil || next != want {
			t.Errorf("Cache-Control %q: next refresh in %v (%v), want %v", cc, next, err, want)
		}
	}
}
