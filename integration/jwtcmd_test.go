package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// caddyCmd runs the real caddy binary with args and stdin, returning stdout,
// stderr and the exit status.
func caddyCmd(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBinary(t), args...)
	cmd.Dir = ".."
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if exitErr := (*exec.ExitError)(nil); errors.As(err, &exitErr) {
		return out.String(), errOut.String(), exitErr.ExitCode()
	} else if err != nil {
		t.Fatalf("caddy %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), 0
}

// signWithBinary mints a token with `caddy jwt sign` and checks that stdout
// holds the token alone.
func signWithBinary(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := caddyCmd(t, "", append([]string{"jwt", "sign"}, args...)...)
	if code != 0 {
		t.Fatalf("caddy jwt sign %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$`).MatchString(out) {
		t.Fatalf("caddy jwt sign printed more than the token: %q", out)
	}
	return strings.TrimSpace(out)
}

func keyFile(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "testdata", "keys", name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestJWTCommandTokensVerifyThroughJWTAuth mints tokens with the binary's
// `caddy jwt sign` (HS256, RS256, ES256, EdDSA) and sends them through
// jwt_auth in a real Caddy.
func TestJWTCommandTokensVerifyThroughJWTAuth(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", fmt.Sprintf(`
	jwt_auth {
		secret %s
		public_key %s
		public_key %s
		public_key %s
		issuer https://issuer.example
		audience api
		header X-User-Id sub
		header X-Role role
		header X-N n
	}
	reverse_proxy %s`, jwtSecret, keyFile(t, "rsa2048.pem"), keyFile(t, "ec256.pem"), keyFile(t, "ed25519.pem"), up.addr()))

	common := []string{
		"--sub", "alice", "--iss", "https://issuer.example", "--aud", "api", "--aud", "other",
		"--claim", "role=admin", "--claim", "n=9007199254740993", "--ttl", "5m",
	}
	for _, k := range []struct {
		alg  string
		args []string
	}{
		{"HS256", []string{"--secret", jwtSecret}},
		{"RS256", []string{"--key", keyFile(t, "rsa2048.key")}},
		{"PS256", []string{"--key", keyFile(t, "rsa2048.key"), "--alg", "PS256"}},
		{"ES256", []string{"--key", keyFile(t, "ec256.key")}},
		{"EdDSA", []string{"--key", keyFile(t, "ed25519.key")}},
		{"Ed25519", []string{"--key", keyFile(t, "ed25519.key"), "--alg", "Ed25519"}},
	} {
		t.Run(k.alg, func(t *testing.T) {
			tok := signWithBinary(t, append(append([]string{}, k.args...), common...)...)
			hdr, _ := decodeSegment(t, tok, 0)
			if hdr["alg"] != k.alg {
				t.Fatalf("alg = %v, want %s", hdr["alg"], k.alg)
			}
			resp, body := do(t, tc, get(t, "/", "Authorization", "Bearer "+tok))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
			}
			r := up.last(t)
			if r.Header.Get("X-User-Id") != "alice" || r.Header.Get("X-Role") != "admin" || r.Header.Get("X-N") != "9007199254740993" {
				t.Errorf("identity at the upstream: %v", r.Header)
			}
			// The same token with its signature's last byte changed is refused.
			bad := tok[:len(tok)-2] + flip(tok[len(tok)-2:len(tok)-1]) + tok[len(tok)-1:]
			if resp, body := do(t, tc, get(t, "/", "Authorization", "Bearer "+bad)); resp.StatusCode != 401 {
				t.Errorf("tampered token: status %d, want 401; body %s", resp.StatusCode, body)
			}
		})
	}

	// An expired token minted with a negative --ttl is refused, as inspect says.
	tok := signWithBinary(t, "--secret", jwtSecret, "--sub", "alice", "--iss", "https://issuer.example", "--aud", "api", "--ttl", "-2h")
	if resp, _ := do(t, tc, get(t, "/", "Authorization", "Bearer "+tok)); resp.StatusCode != 401 ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("expired token: status %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
	out, errOut, code := caddyCmd(t, tok+"\n", "jwt", "inspect", "-")
	if code != 0 || !strings.Contains(out, "(expired 2h ago)") {
		t.Errorf("inspect of the expired token: exit %d\n%s%s", code, out, errOut)
	}
}

func flip(c string) string {
	if c == "A" {
		return "B"
	}
	return "A"
}

// decodeSegment decodes one JSON segment of a compact token.
func decodeSegment(t *testing.T, tok string, i int) (map[string]any, string) {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[i])
	if err != nil {
		t.Fatalf("segment %d of %q: %v", i, tok, err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("segment %d: %v", i, err)
	}
	return m, string(raw)
}

// TestJWTCommandInspect checks `caddy jwt inspect` of the binary on a token
// the binary signed, from an argument and from stdin.
func TestJWTCommandInspect(t *testing.T) {
	tok := signWithBinary(t, "--key", keyFile(t, "ec256.key"), "--kid", "k1", "--sub", "alice", "--ttl", "10m",
		"--claim", `roles=["a","b"]`)
	for _, args := range [][]string{{"jwt", "inspect", tok}, {"jwt", "inspect", "-"}} {
		out, errOut, code := caddyCmd(t, "Bearer "+tok+"\n", args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`(?s)^Header:\n\{\n  "alg": "ES256",\n  "kid": "k1",\n  "typ": "JWT"\n\}\nClaims:\n\{\n`),
			regexp.MustCompile(`\n  "roles": \[\n    "a",\n    "b"\n  \],\n`),
			regexp.MustCompile(`\n  "sub": "alice"\n\}\n`),
			regexp.MustCompile(`\n  exp  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  \(expires in (10m|9m[0-5]\ds)\)\n`),
			regexp.MustCompile(`\n  iat  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  \(issued \d+s ago\)\n`),
			regexp.MustCompile(`\nSignature: NOT checked`),
		} {
			if !want.MatchString(out) {
				t.Errorf("%v: output does not match %s:\n%s", args, want, out)
			}
		}
	}
}

// TestJWTCommandRefusals checks that the binary refuses, with exit status 1,
// a clear message and nothing on stdout, what jwt_auth would refuse to
// verify, and a malformed token to inspect.
func TestJWTCommandRefusals(t *testing.T) {
	weak, err := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // weak on purpose: its refusal is under test
	if err != nil {
		t.Fatal(err)
	}
	weakFile := filepath.Join(t.TempDir(), "rsa1024.key")
	if err := os.WriteFile(weakFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(weak)}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sign", "--secret", "short-secret"}, "HMAC secret is 12 bytes; at least 32 are required"},
		{[]string{"sign", "--secret", jwtSecret, "--alg", "HS512"}, "HS512 requires at least 64"},
		{[]string{"sign", "--secret", jwtSecret, "--alg", "none"}, "unsigned tokens are never accepted"},
		{[]string{"sign", "--key", keyFile(t, "ec256.key"), "--alg", "RS256"}, "does not fit a P-256 EC key"},
		{[]string{"sign", "--key", keyFile(t, "rsa2048.key"), "--alg", "ES256"}, "does not fit an RSA key"},
		{[]string{"sign", "--key", weakFile}, "RSA key is 1024 bits; at least 2048 are required"},
		{[]string{"sign", "--key", keyFile(t, "rsa1024.pem")}, "not a private key"},
		{[]string{"sign"}, "exactly one of --secret, --secret-file, --key"},
		{[]string{"inspect", "abc.def"}, "malformed token"},
		{[]string{"inspect", "a.b.c.d.e"}, "encrypted token (JWE)"},
		{[]string{"inspect", "e30.e30.%%%"}, "malformed token"},
	} {
		out, errOut, code := caddyCmd(t, "", append([]string{"jwt"}, tc.args...)...)
		if code != 1 || !strings.Contains(errOut, tc.want) || out != "" {
			t.Errorf("caddy jwt %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", strings.Join(tc.args, " "), code, out, errOut, tc.want)
		}
		if strings.Contains(errOut, jwtSecret) {
			t.Errorf("caddy jwt %s: the secret is in the error", strings.Join(tc.args, " "))
		}
	}
}
