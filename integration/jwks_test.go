package integration

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// jwksServer is a real JWKS (and OpenID discovery) server on loopback whose
// keys, failures and Cache-Control a test changes at will.
type jwksServer struct {
	*httptest.Server
	mu           sync.Mutex
	keys         []map[string]string
	fail         atomic.Bool
	fetches      atomic.Int32
	discoveries  atomic.Int32
	cacheControl string
}

func newJWKSServer(t *testing.T) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			s.discoveries.Add(1)
			if s.fail.Load() {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": s.URL, "jwks_uri": s.URL + "/keys"})
		case "/keys":
			s.fetches.Add(1)
			if s.fail.Load() {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			s.mu.Lock()
			body, _ := json.Marshal(map[string]any{"keys": s.keys})
			cc := s.cacheControl
			s.mu.Unlock()
			if cc != "" {
				w.Header().Set("Cache-Control", cc)
			}
			w.Header().Set("Content-Type", "application/jwk-set+json")
			_, _ = w.Write(body)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) setKeys(keys ...map[string]string) {
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
}

// signingKey is a private key with its kid and JWS algorithm.
type signingKey struct {
	kid    string
	method jwt.SigningMethod
	priv   crypto.Signer
	alg    string // JWK alg to publish; empty publishes none
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (k signingKey) jwk() map[string]string {
	m := map[string]string{"kid": k.kid}
	if k.alg != "" {
		m["alg"] = k.alg
	}
	switch pub := k.priv.Public().(type) {
	case *rsa.PublicKey:
		m["kty"], m["n"], m["e"] = "RSA", b64u(pub.N.Bytes()), b64u(big.NewInt(int64(pub.E)).Bytes())
	case *ecdsa.PublicKey:
		pt, _ := pub.Bytes()
		size := (len(pt) - 1) / 2
		m["kty"], m["crv"], m["x"], m["y"] = "EC", pub.Curve.Params().Name, b64u(pt[1:1+size]), b64u(pt[1+size:])
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", b64u(pub)
	}
	return m
}

func (k signingKey) sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, claims)
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var (
	rsaKeysOnce sync.Once
	rsaKeys     [3]*rsa.PrivateKey
)

// rsaKey returns one of a few 2048-bit keys generated once per process.
func rsaKey(t *testing.T, i int) *rsa.PrivateKey {
	t.Helper()
	rsaKeysOnce.Do(func() {
		for j := range rsaKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys[j] = k
		}
	})
	return rsaKeys[i]
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func edKey(t *testing.T) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func claims(extra jwt.MapClaims) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{"sub": "alice", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	maps.Copy(c, extra)
	return c
}

// waitStatus polls path with the token until it gets want, for up to 15s.
func waitStatus(t *testing.T, tc interface {
	Do(*http.Request) (*http.Response, error)
}, tok string, want int,
) {
	t.Helper()
	var last int
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := tc.Do(get(t, "/", "Authorization", bearer(tok)))
		if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) {
			continue // a connection to the previous config's server, reset
		}
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if last = resp.StatusCode; last == want {
			return
		}
	}
	t.Fatalf("never got %d; last %d", want, last)
}

func jwksSite(extra string) string {
	return `
	jwt_auth {
		` + extra + `
		header X-User-Id sub
	}
	respond "user={http.auth.user.id}" 200`
}

func TestJWKSAlgorithmsViaURL(t *testing.T) {
	srv := newJWKSServer(t)
	keys := []signingKey{
		{kid: "rs", method: jwt.SigningMethodRS256, priv: rsaKey(t, 0)},
		{kid: "ps", method: jwt.SigningMethodPS256, priv: rsaKey(t, 1), alg: "PS256"},
		{kid: "es", method: jwt.SigningMethodES256, priv: ecKey(t)},
		{kid: "ed", method: jwt.SigningMethodEdDSA, priv: edKey(t)},
	}
	jwks := make([]map[string]string, 0, len(keys))
	for _, k := range keys {
		jwks = append(jwks, k.jwk())
	}
	srv.setKeys(jwks...)
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	for _, k := range keys {
		waitStatus(t, tc.Client, k.sign(t, claims(nil)), 200)
		resp, body := do(t, tc, get(t, "/", "Authorization", bearer(k.sign(t, claims(jwt.MapClaims{"sub": k.kid})))))
		if resp.StatusCode != 200 || body != "user="+k.kid {
			t.Errorf("%s: %d %q", k.kid, resp.StatusCode, body)
		}
	}
	// The key published as PS256 does not verify RS256 (its JWK alg pins
	// it), and a kid-less-alg RSA key does not verify HS256.
	rs256WithPSKey := signingKey{kid: "ps", method: jwt.SigningMethodRS256, priv: rsaKey(t, 1)}
	if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(rs256WithPSKey.sign(t, claims(nil))))); resp.StatusCode != 401 {
		t.Errorf("RS256 with a key pinned to PS256: %d", resp.StatusCode)
	}
}

// A key that appears in the set after start-up is accepted without a
// restart; tokens of a key removed from the set are refused even when they
// were cached; a failing JWKS leaves the last good set in use.
func TestJWKSRotationCacheAndOutage(t *testing.T) {
	srv := newJWKSServer(t)
	old := signingKey{kid: "k1", method: jwt.SigningMethodRS256, priv: rsaKey(t, 0)}
	next := signingKey{kid: "k2", method: jwt.SigningMethodRS256, priv: rsaKey(t, 1)}
	srv.setKeys(old.jwk())
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	oldTok := old.sign(t, claims(nil))
	waitStatus(t, tc.Client, oldTok, 200)
	// Cached now.
	if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(oldTok))); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}

	// Rotation: k2 replaces k1 at the provider.
	srv.setKeys(next.jwk())
	if resp, body := do(t, tc, get(t, "/", "Authorization", bearer(next.sign(t, claims(nil))))); resp.StatusCode != 200 {
		t.Fatalf("new kid after rotation: %d %s", resp.StatusCode, body)
	}
	// The cached k1 token is no longer accepted: the cache was dropped
	// with the old keys.
	if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(oldTok))); resp.StatusCode != 401 {
		t.Fatalf("token of a removed key still accepted (stale cache): %d", resp.StatusCode)
	}

	// Outage: the JWKS fails; k2 keeps verifying (new tokens, not cached).
	srv.fail.Store(true)
	before := srv.fetches.Load()
	unknown := signingKey{kid: "k3", method: jwt.SigningMethodRS256, priv: rsaKey(t, 2)}
	time.Sleep(5100 * time.Millisecond) // past the 5s unknown-kid refetch interval
	if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(unknown.sign(t, claims(nil))))); resp.StatusCode != 401 {
		t.Fatalf("unknown kid during outage: %d", resp.StatusCode)
	}
	if srv.fetches.Load() == before {
		t.Fatal("unknown kid triggered no refetch")
	}
	if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(next.sign(t, claims(jwt.MapClaims{"jti": "fresh"}))))); resp.StatusCode != 200 {
		t.Fatalf("last good set lost after a failed refresh: %d", resp.StatusCode)
	}
}

// 200 tokens with random unknown kids, 50 at a time, cause at most one
// refetch (one per 5s interval) besides the initial fetch.
func TestJWKSUnknownKidsBoundedFetches(t *testing.T) {
	srv := newJWKSServer(t)
	good := signingKey{kid: "good", method: jwt.SigningMethodES256, priv: ecKey(t)}
	srv.setKeys(good.jwk())
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	waitStatus(t, tc.Client, good.sign(t, claims(nil)), 200)
	start := time.Now()
	before := srv.fetches.Load()
	attacker := ecKey(t)
	var wg sync.WaitGroup
	var refused atomic.Int32
	sem := make(chan struct{}, 50)
	for i := range 200 {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			k := signingKey{kid: "random-" + strconv.Itoa(i), method: jwt.SigningMethodES256, priv: attacker}
			req := get(t, "/", "Authorization", bearer(k.sign(t, claims(nil))))
			resp, err := sendRetrying(tc.Client, req)
			if err != nil {
				t.Errorf("request %d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode == 401 {
				refused.Add(1)
			} else {
				t.Errorf("request %d: status %d, want 401", i, resp.StatusCode)
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	fetches := srv.fetches.Load() - before
	bound := int32(1 + elapsed/(5*time.Second))
	t.Logf("200 unknown kids in %v caused %d fetches (bound %d)", elapsed, fetches, bound)
	if refused.Load() != 200 {
		t.Errorf("%d of 200 refused", refused.Load())
	}
	if fetches > bound {
		t.Fatalf("%d fetches for 200 unknown kids, bound %d", fetches, bound)
	}
}

// While the key set has never loaded, requests get 503 with Retry-After;
// once the JWKS answers, tokens verify without a restart.
func TestJWKSDownAtStart(t *testing.T) {
	srv := newJWKSServer(t)
	key := signingKey{kid: "k", method: jwt.SigningMethodEdDSA, priv: edKey(t)}
	srv.setKeys(key.jwk())
	srv.fail.Store(true)
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	tok := key.sign(t, claims(nil))
	resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(tok)))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 30 {
		t.Fatalf("Retry-After = %q", resp.Header.Get("Retry-After"))
	}
	srv.fail.Store(false)
	waitStatus(t, tc.Client, tok, 200)
}

// A reload keeps the key set: no refetch, and no 503 window.
func TestJWKSReloadKeepsSet(t *testing.T) {
	srv := newJWKSServer(t)
	key := signingKey{kid: "k", method: jwt.SigningMethodES256, priv: ecKey(t)}
	srv.setKeys(key.jwk())
	site := jwksSite("jwks_url " + srv.URL + "/keys")
	tc := gateway(t, "", site)
	tok := key.sign(t, claims(nil))
	waitStatus(t, tc.Client, tok, 200)
	fetches := srv.fetches.Load()
	tc = gateway(t, "", site+"\n\theader X-Reloaded yes")
	resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(key.sign(t, claims(jwt.MapClaims{"jti": "after-reload"})))))
	if resp.StatusCode != 200 || resp.Header.Get("X-Reloaded") != "yes" {
		t.Fatalf("after reload: %d (reloaded header %q)", resp.StatusCode, resp.Header.Get("X-Reloaded"))
	}
	if got := srv.fetches.Load(); got != fetches {
		t.Fatalf("reload refetched the JWKS: %d fetches, was %d", got, fetches)
	}
}

// OIDC discovery end to end, and keys bound to their issuer: a token
// naming issuer A but signed with issuer B's key is refused.
func TestOIDCDiscoveryAndIssuerBinding(t *testing.T) {
	a, b := newJWKSServer(t), newJWKSServer(t)
	keyA := signingKey{kid: "a", method: jwt.SigningMethodRS256, priv: rsaKey(t, 0)}
	keyB := signingKey{kid: "b", method: jwt.SigningMethodRS256, priv: rsaKey(t, 1)}
	a.setKeys(keyA.jwk())
	b.setKeys(keyB.jwk())
	tc := gateway(t, "", jwksSite("oidc_issuer "+a.URL+"\n\t\toidc_issuer "+b.URL))
	waitStatus(t, tc.Client, keyA.sign(t, claims(jwt.MapClaims{"iss": a.URL})), 200)
	waitStatus(t, tc.Client, keyB.sign(t, claims(jwt.MapClaims{"iss": b.URL})), 200)
	if a.discoveries.Load() == 0 || a.fetches.Load() == 0 {
		t.Fatal("discovery not used")
	}
	for name, tok := range map[string]string{
		"iss A signed by B":   keyB.sign(t, claims(jwt.MapClaims{"iss": a.URL})),
		"iss B signed by A":   keyA.sign(t, claims(jwt.MapClaims{"iss": b.URL})),
		"no iss":              keyA.sign(t, claims(nil)),
		"other iss signed A":  keyA.sign(t, claims(jwt.MapClaims{"iss": "https://evil.example"})),
		"iss A, kid B, key B": signingKey{kid: "b", method: jwt.SigningMethodRS256, priv: rsaKey(t, 1)}.sign(t, claims(jwt.MapClaims{"iss": a.URL})),
	} {
		if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(tok))); resp.StatusCode != 401 {
			t.Errorf("%s: status %d, want 401", name, resp.StatusCode)
		}
	}
}

// A token that expires while cached is refused at its exp.
func TestJWTCachedTokenExpires(t *testing.T) {
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		leeway 0s
	}
	respond "ok" 200`)
	exp := time.Now().Add(1500*time.Millisecond).Unix() + 1
	tok := rawToken(t, fmt.Sprintf(`{"sub":"a","exp":%d}`, exp))
	for range 3 {
		if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(tok))); resp.StatusCode != 200 {
			t.Fatalf("before exp: %d", resp.StatusCode)
		}
	}
	time.Sleep(time.Until(time.Unix(exp, 0)) + 100*time.Millisecond)
	if resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(tok))); resp.StatusCode != 401 {
		t.Fatalf("after exp: %d", resp.StatusCode)
	}
}

// Metrics land on Caddy's registry with fixed labels only.
func TestJWTMetrics(t *testing.T) {
	srv := newJWKSServer(t)
	key := signingKey{kid: "k", method: jwt.SigningMethodES256, priv: ecKey(t)}
	srv.setKeys(key.jwk())
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	tok := key.sign(t, claims(jwt.MapClaims{"sub": "metrics-user-secret-id"}))
	waitStatus(t, tc.Client, tok, 200)
	do(t, tc, get(t, "/", "Authorization", bearer(tok)))
	do(t, tc, get(t, "/"))
	text := metricsText(t)
	for _, want := range []string{
		`caddy_jwt_auth_verifications_total{result="ok"}`,
		`caddy_jwt_auth_verifications_total{result="no_token"}`,
		`caddy_jwt_auth_jwks_fetches_total{outcome="ok"}`,
		`caddy_jwt_auth_cache_lookups_total{result="hit"}`,
		`caddy_jwt_auth_cache_lookups_total{result="miss"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(text, "metrics-user-secret-id") || strings.Contains(text, srv.URL) {
		t.Error("metrics carry token content or URLs")
	}
}
