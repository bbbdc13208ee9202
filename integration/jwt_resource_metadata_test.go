package integration

import (
	"net/http"
	"testing"
)

// With resource_metadata, every 401 challenge carries
// resource_metadata="<url>" (RFC 9728 §5.1); 400 and 403 do not.
func TestJWTResourceMetadataOnEvery401(t *testing.T) {
	const meta = "https://api.example.com/.well-known/oauth-protected-resource"
	tc := gateway(t, "", `
	jwt_auth {
		secret `+jwtSecret+`
		scope write
		realm api
		resource_metadata `+meta+`
	}
	respond "ok"`)
	for _, c := range []struct {
		name   string
		req    *http.Request
		status int
		want   string
	}{
		{"no token", get(t, "/"), 401, `Bearer realm="api", resource_metadata="` + meta + `"`},
		{"bad token", get(t, "/", "Authorization", "Bearer x.y.z"), 401, `Bearer realm="api", error="invalid_token", resource_metadata="` + meta + `"`},
		{"expired", get(t, "/", "Authorization", bearer(rawToken(t, `{"sub":"a","exp":1}`))), 401, `Bearer realm="api", error="invalid_token", resource_metadata="` + meta + `"`},
		{"two tokens", get(t, "/", "Authorization", bearer(token(t, `"sub":"a"`)), "Authorization", bearer(token(t, `"sub":"b"`))), 400, `Bearer realm="api", error="invalid_request"`},
		{"scope missing", get(t, "/", "Authorization", bearer(token(t, `"sub":"a","scope":"read"`))), 403, `Bearer realm="api", error="insufficient_scope", scope="write"`},
	} {
		resp, _ := do(t, tc, c.req)
		if resp.StatusCode != c.status || resp.Header.Get("WWW-Authenticate") != c.want {
			t.Errorf("%s: %d %q, want %d %q", c.name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), c.status, c.want)
		}
	}
}
