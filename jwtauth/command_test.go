package jwtauth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"
)

// runJWT runs `caddy jwt <args>` through the cobra command the plugin
// registers, returning stdout and the error.
func runJWT(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := &cobra.Command{Use: "jwt", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(signCommand(), inspectCommand())
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// parseSigned checks a token's signature with golang-jwt (independently of
// this package's verifier) and returns its header and claims.
func parseSigned(t *testing.T, token string, key any, alg string) (map[string]any, jwt.MapClaims) {
	t.Helper()
	claims := jwt.MapClaims{}
	tok, err := jwt.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return key, nil },
		jwt.WithValidMethods([]string{alg}), jwt.WithJSONNumber(), jwt.WithoutClaimsValidation())
	if err != nil {
		t.Fatalf("token %s does not verify with the key: %v", token, err)
	}
	return tok.Header, claims
}

func TestSignKeysAndDefaultAlgorithms(t *testing.T) {
	rsaKey := privateKey(t, "rsa2048.key").(*rsa.PrivateKey)
	ecKey := privateKey(t, "ec256.key").(*ecdsa.PrivateKey)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(testSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		wantAlg string
		verify  any
	}{
		{"secret", []string{"--secret", testSecret}, "HS256", []byte(testSecret)},
		{"secret file, trailing newline removed", []string{"--secret-file", secretFile}, "HS256", []byte(testSecret)},
		{"secret HS512", []string{"--secret", strings.Repeat("s", 64), "--alg", "HS512"}, "HS512", []byte(strings.Repeat("s", 64))},
		{"RSA PKCS#8", []string{"--key", "../testdata/keys/rsa2048.key"}, "RS256", &rsaKey.PublicKey},
		{"RSA PKCS#1", []string{"--key", writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))}, "RS256", &rsaKey.PublicKey},
		{"RSA PS384", []string{"--key", "../testdata/keys/rsa2048.key", "--alg", "PS384"}, "PS384", &rsaKey.PublicKey},
		{"EC P-256 PKCS#8", []string{"--key", "../testdata/keys/ec256.key"}, "ES256", &ecKey.PublicKey},
		{"EC P-384 SEC1", []string{"--key", writePEM(t, "EC PRIVATE KEY", sec1)}, "ES384", &p384.PublicKey},
		{"Ed25519", []string{"--key", "../testdata/keys/ed25519.key"}, "EdDSA", privateKey(t, "ed25519.key").(ed25519.PrivateKey).Public()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runJWT(t, "", append([]string{"sign", "--sub", "alice"}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
				t.Fatalf("stdout is not the token alone on one line: %q", out)
			}
			hdr, claims := parseSigned(t, strings.TrimSpace(out), tc.verify, tc.wantAlg)
			if hdr["alg"] != tc.wantAlg || hdr["typ"] != "JWT" {
				t.Errorf("header = %v, want alg %s typ JWT", hdr, tc.wantAlg)
			}
			if claims["sub"] != "alice" {
				t.Errorf("sub = %v", claims["sub"])
			}
		})
	}
}

func TestSignClaims(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok, err := signToken(signOptions{
		secret: testSecret, sub: "alice", iss: "https://issuer.example", aud: []string{"api", "web"}, kid: "k1",
		ttl: 10 * time.Minute,
		claims: []string{
			"role=admin", `n=9007199254740993`, `ok=true`, `roles=["a","b"]`, `obj={"x":{"y":1}}`,
			`quoted="123"`, "eq=a=b", "empty=", "nbf=1799999990",
		},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	hdr, claims := parseSigned(t, tok, []byte(testSecret), "HS256")
	if hdr["kid"] != "k1" {
		t.Errorf("kid = %v", hdr["kid"])
	}
	got, _ := json.Marshal(claims)
	want := `{"aud":["api","web"],"empty":"","eq":"a=b","exp":1800000600,"iat":1800000000,"iss":"https://issuer.example",` +
		`"n":9007199254740993,"nbf":1799999990,"obj":{"x":{"y":1}},"ok":true,"quoted":"123","role":"admin","roles":["a","b"],"sub":"alice"}`
	if string(got) != want {
		t.Errorf("claims\n got %s\nwant %s", got, want)
	}

	// One --aud is a string; --ttl 0 leaves exp out; --claim sets exp exactly.
	tok, err = signToken(signOptions{secret: testSecret, aud: []string{"api"}, claims: []string{"exp=1800000042"}}, now)
	if err != nil {
		t.Fatal(err)
	}
	_, claims = parseSigned(t, tok, []byte(testSecret), "HS256")
	if claims["aud"] != "api" || claims["exp"] != json.Number("1800000042") {
		t.Errorf("claims = %v", claims)
	}
	tok, err = signToken(signOptions{secret: testSecret}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, claims = parseSigned(t, tok, []byte(testSecret), "HS256"); claims["exp"] != nil {
		t.Errorf("--ttl 0 still set exp: %v", claims)
	}
}

func TestSignRefusals(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // weak on purpose: its refusal is under test
	if err != nil {
		t.Fatal(err)
	}
	small8, err := x509.MarshalPKCS8PrivateKey(small)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224der, err := x509.MarshalECPrivateKey(p224)
	if err != nil {
		t.Fatal(err)
	}
	hs384 := strings.Repeat("x", 40)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no key", nil, "exactly one of --secret, --secret-file, --key"},
		{"two keys", []string{"--secret", testSecret, "--key", "../testdata/keys/ec256.key"}, "exactly one of"},
		{"short secret", []string{"--secret", "too-short-secret"}, "HMAC secret is 16 bytes; at least 32"},
		{"secret too short for HS384", []string{"--secret", hs384, "--alg", "HS384"}, "HMAC secret is 40 bytes; HS384 requires at least 48"},
		{"RSA 1024", []string{"--key", writePEM(t, "PRIVATE KEY", small8)}, "RSA key is 1024 bits; at least 2048"},
		{"P-224", []string{"--key", writePEM(t, "EC PRIVATE KEY", p224der)}, "unsupported"},
		{"none", []string{"--secret", testSecret, "--alg", "none"}, "never accepted"},
		{"NONE", []string{"--secret", testSecret, "--alg", "NONE"}, "never accepted"},
		{"lower-case alg", []string{"--secret", testSecret, "--alg", "hs256"}, "unsupported algorithm"},
		{"HS256 with an RSA key", []string{"--key", "../testdata/keys/rsa2048.key", "--alg", "HS256"}, "does not fit an RSA key"},
		{"ES384 with a P-256 key", []string{"--key", "../testdata/keys/ec256.key", "--alg", "ES384"}, "does not fit a P-256 EC key"},
		{"RS256 with a secret", []string{"--secret", testSecret, "--alg", "RS256"}, "does not fit a secret"},
		{"public key", []string{"--key", "../testdata/keys/rsa2048.pem"}, "not a private key"},
		{"no PEM", []string{"--key", "../testdata/keys/README.md"}, "no PEM private key"},
		{"missing file", []string{"--key", "../testdata/keys/nope.key"}, "no such file"},
		{"encrypted", []string{"--key", writePEM(t, "ENCRYPTED PRIVATE KEY", []byte{1})}, "encrypted"},
		{"claim without =", []string{"--secret", testSecret, "--claim", "role"}, "want name=value"},
		{"claim twice", []string{"--secret", testSecret, "--claim", "a=1", "--claim", "a=2"}, "given twice"},
		{"claim and flag", []string{"--secret", testSecret, "--sub", "a", "--claim", "sub=b"}, "both set sub"},
		{"exp and ttl", []string{"--secret", testSecret, "--ttl", "1m", "--claim", "exp=1"}, "both set exp"},
		{"string exp", []string{"--secret", testSecret, "--claim", "exp=tomorrow"}, "must be a JSON number"},
		{"argument", []string{"--secret", testSecret, "extra"}, "unknown command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runJWT(t, "", append([]string{"sign"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if out != "" {
				t.Errorf("a refusal printed %q on stdout", out)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}
}

func TestInspect(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok, err := signToken(signOptions{
		secret: testSecret, sub: "alice", kid: "k1", ttl: 10 * time.Minute,
		claims: []string{"n=9007199254740993", "nbf=1799992800", `note="\u001b[31mred"`},
	}, now.Add(-2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	out, err := inspectToken("Bearer "+tok+"\n", now)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Header:\n{\n  \"alg\": \"HS256\",\n  \"kid\": \"k1\",\n  \"typ\": \"JWT\"\n}\n",
		`  "n": 9007199254740993,`,
		`  "note": "\u001b[31mred",`,
		"  exp  2027-01-15T08:09:58Z  (expires in 9m58s)",
		"  nbf  2027-01-15T06:00:00Z  (valid since 2h ago)",
		"  iat  2027-01-15T07:59:58Z  (issued 2s ago)",
		"Signature: NOT checked",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if strings.ContainsRune(out, 0x1b) {
		t.Errorf("inspect output holds a raw escape character")
	}

	out, err = inspectToken(tok, now.Add(2*time.Hour))
	if err != nil || !strings.Contains(out, "(expired 1h50m ago)") {
		t.Errorf("later: err %v, output:\n%s", err, out)
	}

	// A character a terminal could act on (here C1 CSI, valid JSON when
	// raw) is printed escaped.
	enc := func(s string) string { return b64.EncodeToString([]byte(s)) }
	out, err = inspectToken(enc(`{"alg":"HS256"}`)+"."+enc("{\"x\":\"a\u009b31m\"}")+".c2ln", now)
	if err != nil || !strings.Contains(out, `"x": "a\u009b31m"`) || strings.ContainsRune(out, 0x9b) {
		t.Errorf("C1 control: err %v, output:\n%s", err, out)
	}

	// Through the command: stdin with "-".
	out, err = runJWT(t, tok+"\n", "inspect", "-")
	if err != nil || !strings.Contains(out, `"sub": "alice"`) || !strings.Contains(out, "NOT checked") {
		t.Errorf("inspect -: err %v, output:\n%s", err, out)
	}
}

func TestInspectMalformed(t *testing.T) {
	enc := func(s string) string { return b64.EncodeToString([]byte(s)) }
	good := enc(`{"alg":"HS256"}`) + "." + enc(`{"sub":"a"}`) + ".c2ln"
	for _, tc := range []struct {
		name, token, want string
	}{
		{"empty", "  \n", "empty input"},
		{"two segments", "abc.def", "2 segment(s)"},
		{"JWE", "a.b.c.d.e", "encrypted token (JWE)"},
		{"JSON serialisation", `{"payload":"x"}`, "JSON serialisation"},
		{"padding", good + "=", "without padding"},
		{"header not base64", "a!b." + enc("{}") + ".c2ln", "malformed token"},
		{"header not JSON", enc("hello") + "." + enc("{}") + ".c2ln", "the header is not a JSON object"},
		{"claims an array", enc(`{"alg":"HS256"}`) + "." + enc(`[1]`) + ".c2ln", "the claims set is not a JSON object"},
		{"claims trailing data", enc(`{"alg":"HS256"}`) + "." + enc(`{"a":1}x`) + ".c2ln", "the claims set is not a JSON object"},
		{"empty signature", enc(`{"alg":"HS256"}`) + "." + enc(`{}`) + ".", "malformed token"},
		{"too large", strings.Repeat("a", maxTokenLen+1), "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runJWT(t, "", "inspect", tc.token)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "malformed token") &&
				!strings.Contains(err.Error(), "too large") {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if out != "" {
				t.Errorf("printed %q", out)
			}
		})
	}
	if _, err := runJWT(t, "", "inspect", good); err != nil {
		t.Fatalf("a well-formed token was refused: %v", err)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                     "0s",
		400 * time.Millisecond:                "0s",
		58 * time.Second:                      "58s",
		9*time.Minute + 58*time.Second:        "9m58s",
		2 * time.Hour:                         "2h",
		2*time.Hour + 30*time.Second:          "2h",
		2*time.Hour + 5*time.Minute:           "2h5m",
		3*24*time.Hour + 4*time.Hour + 1:      "3d4h",
		10*time.Minute + 500*time.Millisecond: "10m1s",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
