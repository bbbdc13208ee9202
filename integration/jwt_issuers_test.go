package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// Cognito's kids are base64 text ("/", "+", "="): a rotation to such a kid
// is found by the unknown-kid refetch at once, not at the next scheduled
// refresh.
func TestJWKSBase64KidRotation(t *testing.T) {
	srv := newJWKSServer(t)
	old := signingKey{kid: "abc/DEF+ghi=", method: jwt.SigningMethodRS256, priv: rsaKey(t, 0)}
	next := signingKey{kid: "Zm9v/YmFy+YmF6==", method: jwt.SigningMethodRS256, priv: rsaKey(t, 1)}
	srv.setKeys(old.jwk())
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	waitStatus(t, tc.Client, old.sign(t, claims(nil)), 200)
	before := srv.fetches.Load()
	srv.setKeys(old.jwk(), next.jwk())
	resp, body := do(t, tc, get(t, "/", "Authorization", bearer(next.sign(t, claims(nil)))))
	if resp.StatusCode != http.StatusOK || body != "user=alice" {
		t.Fatalf("rotated base64 kid: %d %q", resp.StatusCode, body)
	}
	if srv.fetches.Load() == before {
		t.Fatal("no refetch for the new kid")
	}
}

// signAlg signs claims with k under the given JWS alg name.
func (k signingKey) signAlg(t *testing.T, alg string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, c)
	tok.Header["kid"] = k.kid
	tok.Header["alg"] = alg
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// RFC 9864's fully-specified "Ed25519": in a JWK (remote and local), in a
// token header and in `algorithms`, for Ed25519 keys only. On an Ed25519
// key, EdDSA and Ed25519 are one algorithm.
func TestJWTEd25519FullySpecified(t *testing.T) {
	srv := newJWKSServer(t)
	ed := signingKey{kid: "ed", method: jwt.SigningMethodEdDSA, priv: edKey(t), alg: "Ed25519"}
	legacy := signingKey{kid: "legacy", method: jwt.SigningMethodEdDSA, priv: edKey(t)}
	srv.setKeys(ed.jwk(), legacy.jwk())
	tc := gateway(t, "", jwksSite("jwks_url "+srv.URL+"/keys"))
	waitStatus(t, tc.Client, ed.signAlg(t, "Ed25519", claims(nil)), 200)
	for _, c := range []struct {
		name string
		tok  string
		want int
	}{
		{"Ed25519 token, Ed25519 JWK", ed.signAlg(t, "Ed25519", claims(nil)), 200},
		{"EdDSA token, JWK labelled Ed25519 (the same algorithm)", ed.signAlg(t, "EdDSA", claims(nil)), 200},
		{"Ed25519 token, JWK without alg", legacy.signAlg(t, "Ed25519", claims(nil)), 200},
		{"EdDSA token, JWK without alg", legacy.signAlg(t, "EdDSA", claims(nil)), 200},
	} {
		if resp, body := do(t, tc, get(t, "/", "Authorization", bearer(c.tok))); resp.StatusCode != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, resp.StatusCode, body, c.want)
		}
	}

	// A local JWK Set with "alg":"Ed25519", and `algorithms Ed25519`.
	data, _ := json.Marshal(map[string]any{"keys": []map[string]string{ed.jwk()}})
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	tc = gateway(t, "", jwksSite("jwks_file "+file+"\n\t\talgorithms Ed25519"))
	if resp, body := do(t, tc, get(t, "/", "Authorization", bearer(ed.signAlg(t, "Ed25519", claims(nil))))); resp.StatusCode != 200 {
		t.Fatalf("jwks_file with an Ed25519 JWK: %d %s", resp.StatusCode, body)
	}
	// Ed25519 is for Ed25519 keys only.
	rs := signingKey{kid: "rs", method: jwt.SigningMethodRS256, priv: rsaKey(t, 0), alg: "Ed25519"}
	data, _ = json.Marshal(map[string]any{"keys": []map[string]string{rs.jwk()}})
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	status, body := adminPost(t, "/load", "text/caddyfile", caddyfile("", jwksSite("jwks_file "+file)))
	if status == http.StatusOK {
		t.Fatalf("an RSA JWK with alg Ed25519 loaded: %s", body)
	}
}
