package jwtauth

import (
	"context"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func provision(t *testing.T, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		return err
	}
	defer h.Cleanup()
	return h.Validate()
}

// A secret given as a placeholder is checked when the config loads.
func TestProvisionSecretPlaceholder(t *testing.T) {
	t.Setenv("JWT_TEST_SHORT", "short")
	t.Setenv("JWT_TEST_OK", testSecret)
	if err := provision(t, &Handler{Secret: "{env.JWT_TEST_SHORT}"}); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("short secret from env: %v", err)
	}
	if err := provision(t, &Handler{Secret: "{env.JWT_TEST_UNSET}"}); err == nil {
		t.Fatal("empty secret from env accepted")
	}
	if err := provision(t, &Handler{Secret: "{env.JWT_TEST_OK}"}); err != nil {
		t.Fatalf("good secret from env: %v", err)
	}
	if err := provision(t, &Handler{}); err == nil || !strings.Contains(err.Error(), "no key") {
		t.Fatalf("no key: %v", err)
	}
	if err := provision(t, &Handler{Secret: testSecret, Headers: map[string]string{"Bad Header": "sub"}}); err == nil {
		t.Fatal("invalid header name accepted")
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for input, want := range map[string]string{
		"jwt_auth {\n}": "no key",
		"jwt_auth {\n secret " + testSecret + "\n bogus\n}":       `unrecognized subdirective "bogus"`,
		"jwt_auth {\n secret " + testSecret + "\n leeway x\n}":    "leeway: bad duration",
		"jwt_auth {\n secret abc\n}":                              "at least 32",
		"jwt_auth {\n public_key ../testdata/keys/rsa1024.pem\n}": "1024 bits",
		"jwt_auth {\n secret " + testSecret + "\n from_header\n}": "wrong argument count",
		"jwt_auth {\n secret " + testSecret + "\n claim role\n}":  "wrong argument count",
		"jwt_auth {\n secret " + testSecret + "\n realm a\"b\n}":  "realm",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", input, err, want)
		}
	}
}
