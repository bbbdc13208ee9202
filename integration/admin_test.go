package integration

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"
	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2"
)

// The admin API (admin.api.gateway) through a real Caddy: the in-process
// one, and the caddy binary for the fleet case.

// adminCall sends method to path on the in-process Caddy's admin endpoint
// and returns the status and raw body. A connection reset by an admin
// server being replaced (every config load replaces it) is retried.
func adminCall(t *testing.T, method, path string) (int, string) {
	t.Helper()
	status, body, err := adminTry(t.Context(), method, fmt.Sprintf("localhost:%d", adminPort), path, "", "")
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return status, body
}

// adminJSON calls the admin endpoint, wants status want, and decodes the
// answer into v.
func adminJSON(t *testing.T, method, path string, want int, v any) string {
	t.Helper()
	status, body := adminCall(t, method, path)
	if status != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, status, body, want)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, body)
		}
	}
	return body
}

// throttleZone, clientRate and clientState mirror the documented answers.
type throttleZone struct {
	Name  string `json:"name"`
	Named bool   `json:"named"`
	Rates []struct {
		Name   string `json:"name"`
		Events int    `json:"events"`
		Period string `json:"period"`
		Burst  int    `json:"burst"`
	} `json:"rates"`
	Concurrent int    `json:"concurrent"`
	Engine     string `json:"engine"`
	Keys       int    `json:"keys"`
	IPv4Prefix int    `json:"ipv4_prefix"`
	Handlers   int    `json:"handlers"`
}

type clientRate struct {
	Name       string  `json:"name"`
	Burst      int     `json:"burst"`
	Remaining  int     `json:"remaining"`
	RetryAfter float64 `json:"retry_after"`
	FullIn     float64 `json:"full_in"`
}

type clientState struct {
	Zone       string       `json:"zone"`
	Kind       string       `json:"kind"`
	Client     string       `json:"client"`
	ID         string       `json:"id"`
	Rates      []clientRate `json:"rates"`
	InProgress int          `json:"in_progress"`
	Engine     string       `json:"engine"`
	Source     string       `json:"source"`
}

// TestAdminThrottleResetLetsClientThrough: a client refused 429 is seen in
// the admin API (its address grouped by the zone's prefix, its configured
// key kept apart), reset with DELETE, and passes again.
func TestAdminThrottleResetLetsClientThrough(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone api
		rate 2/1h
		ipv4_prefix 24
	}
	respond "ok"`)
	for i, want := range []int{200, 200, 429} {
		if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != want {
			t.Fatalf("request %d: %d, want %d", i, resp.StatusCode, want)
		}
	}

	var list struct {
		Zones []throttleZone `json:"zones"`
	}
	adminJSON(t, http.MethodGet, "/gateway/throttle", 200, &list)
	if len(list.Zones) != 1 {
		t.Fatalf("zones %+v, want one", list.Zones)
	}
	z := list.Zones[0]
	if z.Name != "api" || !z.Named || z.Engine != "memory" || z.Keys != 1 || z.IPv4Prefix != 24 || z.Handlers != 1 ||
		len(z.Rates) != 1 || z.Rates[0].Events != 2 || z.Rates[0].Burst != 2 || z.Rates[0].Period != "1h0m0s" {
		t.Fatalf("zone %+v", z)
	}

	// Another address of the same /24 is the same client.
	var st clientState
	adminJSON(t, http.MethodGet, "/gateway/throttle/api?ip=127.0.0.77", 200, &st)
	if st.Kind != "ip" || st.Client != "127.0.0.0/24" || st.ID != "c:127.0.0.0/24" || st.Source != "memory" ||
		len(st.Rates) != 1 || st.Rates[0].Remaining != 0 || st.Rates[0].RetryAfter < 1700 || st.Rates[0].FullIn < 3500 {
		t.Fatalf("refused client: %+v", st)
	}
	// The same text as a configured key is another namespace: untouched,
	// and resetting it does not reset the address.
	adminJSON(t, http.MethodGet, "/gateway/throttle/api?key=127.0.0.1", 200, &st)
	if st.Kind != "key" || st.ID != "a:127.0.0.0/24" || st.Rates[0].Remaining != 2 {
		t.Fatalf("key namespace: %+v", st)
	}
	adminJSON(t, http.MethodDelete, "/gateway/throttle/api?key=127.0.0.1", 200, nil)
	if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != 429 {
		t.Fatalf("after resetting the key namespace: %d, want still 429", resp.StatusCode)
	}

	adminJSON(t, http.MethodDelete, "/gateway/throttle/api?ip=127.0.0.200", 200, &st)
	if st.Rates[0].Remaining != 2 || st.Rates[0].RetryAfter != 0 || st.Rates[0].FullIn != 0 {
		t.Fatalf("after reset: %+v", st)
	}
	for i, want := range []int{200, 200, 429} {
		if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != want {
			t.Fatalf("after reset, request %d: %d, want %d", i, resp.StatusCode, want)
		}
	}
}

// TestAdminErrors: unknown zones and routes are 404, bad queries 400, other
// methods 405, all as Caddy's admin errors ({"error": ...}).
func TestAdminErrors(t *testing.T) {
	gateway(t, "", `
	throttle {
		zone api
		rate 2/1h
	}
	respond "ok"`)
	cases := []struct {
		method, path string
		want         int
	}{
		{"GET", "/gateway/throttle/nope?ip=127.0.0.1", 404},
		{"DELETE", "/gateway/throttle/nope?ip=127.0.0.1", 404},
		{"GET", "/gateway/nope", 404},
		{"GET", "/gateway/", 404},
		{"GET", "/gateway/throttle/api", 400},
		{"GET", "/gateway/throttle/api?ip=not-an-ip", 400},
		{"GET", "/gateway/throttle/api?ip=10.0.0.0/8", 400},
		{"GET", "/gateway/throttle/api?key=", 400},
		{"GET", "/gateway/throttle/api?ip=127.0.0.1&key=a", 400},
		{"GET", "/gateway/throttle/api?ip=127.0.0.1&ip=127.0.0.2", 400},
		{"GET", "/gateway/throttle/api?user=a", 400},
		{"GET", "/gateway/throttle/api?key=%zz", 400},
		{"GET", "/gateway/throttle?x=1", 400},
		{"POST", "/gateway/throttle", 405},
		{"PUT", "/gateway/throttle/api?ip=127.0.0.1", 405},
		{"GET", "/gateway/jwt/refresh", 405},
		{"DELETE", "/gateway/jwt", 405},
		{"POST", "/gateway/api_key", 405},
		{"POST", "/gateway/aggregate", 405},
	}
	for _, c := range cases {
		status, body := adminCall(t, c.method, c.path)
		var e struct {
			Error string `json:"error"`
		}
		if status != c.want || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s %s: %d %q, want %d with an error message", c.method, c.path, status, body, c.want)
		}
	}
	for _, path := range []string{"/gateway/throttle", "/gateway/jwt", "/gateway/api_key", "/gateway/aggregate"} {
		if status, body := adminCall(t, "GET", path); status != 200 || !json.Valid([]byte(body)) {
			t.Errorf("GET %s: %d %s", path, status, body)
		}
	}
}

// TestAdminJWKSRefresh: a key added to the JWKS after start is listed and
// usable right after POST /gateway/jwt/refresh, without the token having to
// trigger an unknown-kid fetch; a second refresh inside the minimum
// interval fetches nothing.
func TestAdminJWKSRefresh(t *testing.T) {
	srv := newJWKSServer(t)
	srv.cacheControl = "max-age=3600"
	old := signingKey{kid: "old", method: jwt.SigningMethodES256, priv: ecKey(t)}
	srv.setKeys(old.jwk())
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	waitStatus(t, tc.Client, old.sign(t, claims(nil)), 200)

	type keySet struct {
		Source      string     `json:"source"`
		URL         string     `json:"url"`
		Loaded      bool       `json:"loaded"`
		FetchedAt   *time.Time `json:"fetched_at"`
		NextRefresh *time.Time `json:"next_refresh"`
		LastError   string     `json:"last_error"`
		Keys        []struct {
			Kid string   `json:"kid"`
			Alg []string `json:"alg"`
			Kty string   `json:"kty"`
			Crv string   `json:"crv"`
		} `json:"keys"`
	}
	var sets struct {
		KeySets []keySet `json:"key_sets"`
	}
	adminJSON(t, "GET", "/gateway/jwt", 200, &sets)
	if len(sets.KeySets) != 1 {
		t.Fatalf("key sets %+v, want one", sets.KeySets)
	}
	ks := sets.KeySets[0]
	if ks.Source != "jwks_url" || ks.URL != srv.URL+"/keys" || !ks.Loaded || ks.FetchedAt == nil ||
		ks.NextRefresh == nil || ks.NextRefresh.Sub(*ks.FetchedAt) < 50*time.Minute || ks.LastError != "" ||
		len(ks.Keys) != 1 || ks.Keys[0].Kid != "old" || ks.Keys[0].Kty != "EC" || ks.Keys[0].Crv != "P-256" ||
		strings.Join(ks.Keys[0].Alg, " ") != "ES256" {
		t.Fatalf("key set %+v", ks)
	}

	added := signingKey{kid: "added", method: jwt.SigningMethodES256, priv: ecKey(t)}
	srv.setKeys(old.jwk(), added.jwk())
	before := srv.fetches.Load()
	var refresh struct {
		KeySets []struct {
			Source  string `json:"source"`
			Fetched string `json:"fetched"`
			Keys    int    `json:"keys"`
		} `json:"key_sets"`
	}
	adminJSON(t, "POST", "/gateway/jwt/refresh", 200, &refresh)
	if len(refresh.KeySets) != 1 || refresh.KeySets[0].Fetched != "fetched" || refresh.KeySets[0].Keys != 2 {
		t.Fatalf("refresh %+v", refresh)
	}
	if n := srv.fetches.Load() - before; n != 1 {
		t.Fatalf("refresh made %d fetches, want 1", n)
	}
	adminJSON(t, "GET", "/gateway/jwt", 200, &sets)
	if len(sets.KeySets[0].Keys) != 2 {
		t.Fatalf("after refresh: %+v", sets.KeySets[0])
	}
	resp, _ := do(t, tc, get(t, "/", "Authorization", bearer(added.sign(t, claims(nil)))))
	if resp.StatusCode != 200 {
		t.Fatalf("token of the added key: %d, want 200", resp.StatusCode)
	}
	if n := srv.fetches.Load() - before; n != 1 {
		t.Fatalf("the added key's token caused a fetch (%d in all): the refresh did not make it usable", n)
	}

	// Inside the minimum interval: reported, not fetched.
	adminJSON(t, "POST", "/gateway/jwt/refresh", 200, &refresh)
	if refresh.KeySets[0].Fetched != "recent" {
		t.Fatalf("second refresh %+v, want recent", refresh)
	}
	if n := srv.fetches.Load() - before; n != 1 {
		t.Fatalf("second refresh fetched (%d fetches)", n)
	}
}

// TestAdminRedisResetReachesFleet: two instances (the in-process Caddy and
// the caddy binary) on one real Redis. The client is refused by instance B,
// which then answers it from its local refusal cache without asking Redis;
// a reset through instance A's admin API lets it through B again (the
// reset is published to every instance).
func TestAdminRedisResetReachesFleet(t *testing.T) {
	srv := redistest.Start(t)
	site := fmt.Sprintf(`
	throttle {
		zone fleetreset
		key {http.request.header.X-Client}
		rate 2/1h
		redis %s {
			timeout 2s
		}
	}
	respond "ok"`, srv.URL())
	gateway(t, "", site)
	b, _ := binaryCaddy(t, site)
	client := newHTTPClient(t)
	for i, want := range []int{200, 200, 429} {
		if r := sendTo(t, client, b+"/", "X-Client", "victim"); r.status != want {
			t.Fatalf("B, request %d: %d, want %d", i, r.status, want)
		}
	}
	// B now refuses the victim from its refusal cache: no script call.
	srv.ResetStats()
	if r := sendTo(t, client, b+"/", "X-Client", "victim"); r.status != 429 {
		t.Fatalf("B, refused again: %d", r.status)
	}
	if n := srv.CommandCalls("evalsha") + srv.CommandCalls("eval"); n != 0 {
		t.Fatalf("B asked Redis %d times for a cached refusal", n)
	}

	// A sees the state B wrote, in Redis.
	var st clientState
	adminJSON(t, "GET", "/gateway/throttle/fleetreset?key=victim", 200, &st)
	if st.Source != "redis" || st.Engine != "redis" || st.ID != "t:victim" || st.Rates[0].Remaining != 0 || st.Rates[0].RetryAfter < 1700 {
		t.Fatalf("A's view of the victim: %+v", st)
	}
	adminJSON(t, "DELETE", "/gateway/throttle/fleetreset?key=victim", 200, &st)
	if st.Source != "redis" || st.Rates[0].Remaining != 2 {
		t.Fatalf("after reset: %+v", st)
	}
	if keys := srv.MustCli("KEYS", "throttle:fleetreset*"); strings.TrimSpace(keys) != "" {
		t.Fatalf("keys left in Redis after the reset: %q", keys)
	}
	// The reset reaches B over pub/sub (asynchronously: allow it a moment;
	// a B that never heard of it refuses for the next half hour).
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := sendTo(t, client, b+"/", "X-Client", "victim")
		if r.status == 200 {
			break
		}
		if r.status != 429 || time.Now().After(deadline) {
			t.Fatalf("B after the reset through A: %d, want 200", r.status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := sendTo(t, client, b+"/", "X-Client", "victim"); r.status != 200 {
		t.Fatalf("B, second request after the reset: %d, want 200 (burst 2)", r.status)
	}
	if r := sendTo(t, client, b+"/", "X-Client", "victim"); r.status != 429 {
		t.Fatalf("B, third request after the reset: %d, want 429", r.status)
	}
}

// TestAdminAnswersHoldNoSecrets: with an HMAC secret, PEM and JWK Set
// files (one holding an HMAC key), a remote JWKS, API key digests, and a
// Redis URL with a password, no admin answer holds key material, a secret,
// a digest or the password: the raw bodies are searched.
func TestAdminAnswersHoldNoSecrets(t *testing.T) {
	const (
		hmacSecret = "admin-test-hmac-secret-0123456789abcdef"
		redisPass  = "redis-pass-f00dfeed"
		jwksFileK  = "andrcy1maWxlLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm" // testdata/keys/jwks.json
		jwksFileN  = "tyB2jEdSSXysL6a7XIx7uO2D7fQGpi0nc9hdGAbJfJYhIyxBz2RsUYoQdtsoGMLSrEpU"
		jwksFileX  = "cFt6Aax2bO0UlWZrW7qlTAgXs2SJgOf4z4SYJA2mYLU"
		apiKey     = "cgw_admin-test-api-key-0123456789" //nolint:gosec // a test key, searched for in the answers
	)
	digest := fmt.Sprintf("%x", sha256.Sum256([]byte(apiKey)))
	srv := newJWKSServer(t)
	remote := signingKey{kid: "remote", method: jwt.SigningMethodRS256, priv: rsaKey(t, 1)}
	srv.setKeys(remote.jwk())
	remoteN := b64u(rsaKey(t, 1).N.Bytes())
	pemN := b64u(pemModulus(t, "../testdata/keys/rsa2048.pem"))
	rds := redistest.Start(t, "--requirepass", redisPass)
	redisURL := strings.Replace(rds.URL(), "redis://", "redis://:"+redisPass+"@", 1)

	apiKeyBlock := ""
	if _, err := caddy.GetModule("http.handlers.api_key"); err == nil {
		apiKeyBlock = fmt.Sprintf("api_key /k* {\n\t\tkey ci %s ci-bot\n\t}", digest)
	}
	tc := gateway(t, "", fmt.Sprintf(`
	%s
	throttle {
		zone secretzone
		rate 100/1h
		redis %s
	}
	jwt_auth {
		secret %s
		public_key ../testdata/keys/rsa2048.pem
		jwks_file ../testdata/keys/jwks.json
		jwks_url %s/keys
	}
	respond "ok"`, apiKeyBlock, redisURL, hmacSecret, srv.URL))
	waitStatus(t, tc.Client, remote.sign(t, claims(nil)), 200)
	do(t, tc, get(t, "/"))

	bodies := make([]string, 0, 7)
	for _, c := range []struct{ method, path string }{
		{"GET", "/gateway/throttle"},
		{"GET", "/gateway/throttle/secretzone?ip=127.0.0.1"},
		{"DELETE", "/gateway/throttle/secretzone?ip=127.0.0.1"},
		{"GET", "/gateway/jwt"},
		{"POST", "/gateway/jwt/refresh"},
		{"GET", "/gateway/api_key"},
		{"GET", "/gateway/aggregate"},
	} {
		status, body := adminCall(t, c.method, c.path)
		if status != 200 {
			t.Fatalf("%s %s: %d %s", c.method, c.path, status, body)
		}
		bodies = append(bodies, body)
	}
	all := strings.Join(bodies, "\n")
	if !strings.Contains(all, `"kid":"hmac-1"`) || !strings.Contains(all, `"kty":"oct"`) || !strings.Contains(all, `"kid":"remote"`) {
		t.Fatalf("the key sets are not listed:\n%s", all)
	}
	if apiKeyBlock != "" && !strings.Contains(all, `"id":"ci"`) {
		t.Fatalf("the api_key entry is not listed:\n%s", all)
	}
	secrets := map[string]string{
		"HMAC secret":                 hmacSecret,
		"HMAC secret, base64url":      b64u([]byte(hmacSecret)),
		"HMAC secret, hex":            fmt.Sprintf("%x", hmacSecret),
		"jwks_file oct key":           jwksFileK,
		"jwks_file oct key, decoded":  "jwks-file-secret-0123456789abcdef",
		"jwks_file RSA modulus":       jwksFileN,
		"jwks_file EC point":          jwksFileX,
		"remote RSA modulus":          remoteN[:40],
		"public_key RSA modulus":      pemN[:40],
		"API key":                     apiKey,
		"API key digest":              digest,
		"API key digest, upper case":  strings.ToUpper(digest),
		"Redis password":              redisPass,
		"a JWK member holding a key":  `"n":`,
		"a JWK member holding a key ": `"k":`,
	}
	for what, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("%s in an admin answer", what)
		}
	}
	if t.Failed() {
		t.Logf("answers:\n%s", all)
	}
}

// pemModulus reads the RSA modulus of an SPKI PEM file.
func pemModulus(t *testing.T, file string) []byte {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", file)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*rsa.PublicKey).N.Bytes()
}
