package cors

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`cors {
		origins https://app.example.com https://*.example.net null
		methods GET post DELETE
		headers Authorization X-Request-Id
		expose RateLimit
		credentials
		max_age 1h
		private_network
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := Handler{
		Origins:        []string{"https://app.example.com", "https://*.example.net", "null"},
		Methods:        []string{"GET", "post", "DELETE"},
		Headers:        []string{"Authorization", "X-Request-Id"},
		Expose:         []string{"RateLimit"},
		Credentials:    true,
		MaxAge:         new(caddy.Duration(time.Hour)),
		PrivateNetwork: true,
	}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got %+v\nwant %+v", h, want)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"cors", "origins is required"},
		{"cors {\n}", "origins is required"},
		{"cors https://a.example {\n}", "wrong argument count"},
		{"cors {\norigins\n}", "wrong argument count"},
		{"cors {\norigins https://a.example\nbogus 1\n}", `unrecognized subdirective "bogus", at Testfile:3`},
		{"cors {\norigins https://a.example\norigins https://b.example\n}", `duplicate subdirective "origins", at Testfile:3`},
		{"cors {\norigins https://a.example/\n}", "must not end with a slash"},
		{"cors {\norigins https://a.example/x\n}", "must not contain a path"},
		{"cors {\norigins https://a.example?q\n}", "must not contain a query"},
		{"cors {\norigins https://a.example#f\n}", "must not contain a fragment"},
		{"cors {\norigins https://u@a.example\n}", "must not contain userinfo"},
		{"cors {\norigins *\ncredentials\n}", "list the origins, at Testfile:3"},
		{"cors {\ncredentials\norigins *\n}", "list the origins, at Testfile:3"},
		{"cors {\ncredentials x\norigins https://a.example\n}", "wrong argument count"},
		{"cors {\norigins https://a.example\nmethods GET FETCH\n}", "unknown method"},
		{"cors {\norigins https://a.example\nmethods\n}", "wrong argument count"},
		{"cors {\norigins https://a.example\nheaders X(bad)\n}", "invalid header name"},
		{"cors {\norigins https://a.example\nexpose Bad:Name\n}", "invalid header name"},
		{"cors {\norigins https://a.example\ncredentials\nexpose *\n}", "expose * cannot be used with credentials"},
		{"cors {\norigins https://a.example\nmax_age\n}", "wrong argument count"},
		{"cors {\norigins https://a.example\nmax_age 1m 2m\n}", "wrong argument count"},
		{"cors {\norigins https://a.example\nmax_age soon\n}", "max_age"},
		{"cors {\norigins https://a.example\nmax_age -1s\n}", "negative"},
		{"cors {\norigins https://a.example\nprivate_network yes\n}", "wrong argument count"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
}

// FuzzUnmarshalCaddyfile feeds arbitrary Caddyfile text to the parser:
// it never panics, and whatever it accepts also passes Validate and
// Provision.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, s := range []string{
		"cors {\norigins https://app.example.com\n}",
		"cors {\norigins * \nheaders *\nexpose *\nmax_age 0\n}",
		"cors {\norigins https://*.example.com:8443 null\nmethods get put\ncredentials\nprivate_network\n}",
		"cors {\norigins https://a.example/\n}",
		"cors {\norigins https://a.example\nmax_age 1h30m\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tokens, err := caddyfile.Tokenize([]byte(in), "Caddyfile")
		if err != nil || len(tokens) == 0 || tokens[0].Text != "cors" {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("parser accepted %q, Validate refuses: %v", in, err)
		}
		provision(t, &h)
	})
}
