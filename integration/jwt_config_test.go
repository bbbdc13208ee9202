package integration

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// `caddy adapt` reads no key file: a config naming absent keys adapts, and
// loading it (validate, run, reload) fails with an error naming the
// subdirective and the file.
func TestJWTKeysReadAtProvisionNotAdapt(t *testing.T) {
	gateway(t, "", `respond "ok" 200`)
	for _, c := range []struct{ sub, want string }{
		{"public_key /nonexistent/keys/signing.pem", "public_key: open /nonexistent/keys/signing.pem: no such file or directory"},
		{"jwks_file /nonexistent/keys/jwks.json", "jwks_file: open /nonexistent/keys/jwks.json: no such file or directory"},
		{"public_key ../testdata/keys/rsa1024.pem", "public_key ../testdata/keys/rsa1024.pem: RSA key is 1024 bits"},
	} {
		cfg := caddyfile("", `
	jwt_auth {
		`+c.sub+`
	}
	respond "ok" 200`)
		if status, body := adminPost(t, "/adapt", "text/caddyfile", cfg); status != http.StatusOK {
			t.Errorf("%s: adapt failed: %d %s", c.sub, status, body)
		}
		status, body := adminPost(t, "/load", "text/caddyfile", cfg)
		if status == http.StatusOK || !strings.Contains(body, c.want) {
			t.Errorf("%s: load: %d %s, want an error containing %q", c.sub, status, body, c.want)
		}
	}
}

// A reload whose later handler fails to provision leaves nothing running:
// the JWKS refresh loop its first handler started stops with the failed
// config (the JWKS server sees no more fetches).
func TestJWTFailedReloadStopsJWKSRefresh(t *testing.T) {
	gateway(t, "", `respond "ok" 200`)
	srv := newJWKSServer(t)
	srv.fail.Store(true) // failing fetches are retried within seconds
	cfg := caddyfile("", `
	route {
		jwt_auth {
			jwks_url `+srv.URL+`/keys
		}
		jwt_auth {
			public_key /nonexistent/keys/signing.pem
		}
	}
	respond "ok" 200`)
	status, body := adminPost(t, "/load", "text/caddyfile", cfg)
	if status == http.StatusOK {
		t.Fatal("the config loaded")
	}
	if !strings.Contains(body, "/nonexistent/keys/signing.pem") {
		t.Fatalf("load error does not name the file: %s", body)
	}
	time.Sleep(300 * time.Millisecond) // a fetch already sent may still land
	after := srv.fetches.Load()
	time.Sleep(3500 * time.Millisecond) // retries would come at 1s, 3s
	if n := srv.fetches.Load(); n != after {
		t.Fatalf("the failed config's JWKS set kept fetching: %d fetches after the failed load, then %d", after, n)
	}
}
