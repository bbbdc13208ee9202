package jwtauth

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// The admin view of a remote set: kids, algorithms and key types only; a
// refresh fetches once per minimum interval and reports the last fetch
// inside it.
func TestAdminRemoteSetAndRefresh(t *testing.T) {
	jwks, err := os.ReadFile("../testdata/keys/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		_, _ = w.Write(jwks)
	}))
	defer srv.Close()
	s := &remoteKeySet{url: srv.URL, client: srv.Client(), ctx: context.Background()}
	s.logger.Store(zap.NewNop())

	sets := s.AdminKeySets()
	if len(sets) != 1 || sets[0].Loaded || sets[0].FetchedAt != nil || len(sets[0].Keys) != 0 {
		t.Fatalf("before any fetch: %+v", sets)
	}
	res := s.AdminRefresh(t.Context())
	if res.Fetched != refreshFetched || res.Keys != 3 || res.FetchedAt == nil || res.LastError != "" || fetches.Load() != 1 {
		t.Fatalf("first refresh %+v (%d fetches)", res, fetches.Load())
	}
	res = s.AdminRefresh(t.Context())
	if res.Fetched != refreshRecent || fetches.Load() != 1 {
		t.Fatalf("second refresh %+v (%d fetches), want recent without a fetch", res, fetches.Load())
	}
	sets = s.AdminKeySets()
	b, _ := json.Marshal(sets)
	body := string(b)
	for _, want := range []string{`"kid":"rsa-1","alg":["RS256","RS384","RS512","PS256","PS384","PS512"],"kty":"RSA"`, `"kid":"ec-1","alg":["ES256"],"kty":"EC","crv":"P-256"`, `"source":"jwks_url"`, `"loaded":true`} {
		if !strings.Contains(body, want) {
			t.Errorf("%s lacks %s", body, want)
		}
	}
	// The remote set skips the symmetric key; no member holds material.
	for _, bad := range []string{"hmac-1", `"n":`, `"x":`, `"k":`, "tyB2jEdSSXys"} {
		if strings.Contains(body, bad) {
			t.Errorf("%s holds %s", body, bad)
		}
	}
}

// Local sets: the secret and the jwks_file's keys (an HMAC one included)
// are described, never their material.
func TestAdminLocalSets(t *testing.T) {
	h := &Handler{ //nolint:gosec // a test secret, searched for in the answers
		Secret:    "admin-unit-secret-0123456789abcdef-xyz",
		JWKSFiles: []string{"../testdata/keys/jwks.json"},
		Realm:     "unit",
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.Cleanup() }()
	b, _ := json.Marshal(h.adminLocal.AdminKeySets())
	body := string(b)
	for _, want := range []string{`"source":"static"`, `"source":"jwks_file"`, `"file":["../testdata/keys/jwks.json"]`, `"kid":"hmac-1","alg":["HS256"],"kty":"oct"`, `"realm":"unit"`} {
		if !strings.Contains(body, want) {
			t.Errorf("%s lacks %s", body, want)
		}
	}
	for _, bad := range []string{h.Secret, "andrcy1maWxl", "jwks-file-secret", `"k":`} {
		if strings.Contains(body, bad) {
			t.Errorf("%s holds %s", body, bad)
		}
	}
}
