package aggregate

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// compileURLCases are URL templates with the error they give ("" when
// valid); they also seed FuzzURLTemplate.
var compileURLCases = []struct {
	raw, err string
}{
	{raw: "http://127.0.0.1:9001/users/{http.auth.user.id}"},
	{raw: "https://svc.internal/v1/{a}/x/{b}?q={c}&lit=1"},
	{raw: "http://127.0.0.1:9001"},
	{raw: "HTTP://127.0.0.1:9001/a#static-fragment"},
	{raw: "http://[::1]:9001/a/{x}"},
	{raw: "http://u:p@127.0.0.1/a/{x}"}, //nolint:gosec // not a credential
	{raw: "{s}://127.0.0.1/a", err: "placeholder in the scheme"},
	{raw: "http{s}://127.0.0.1/a", err: "placeholder in the scheme"},
	{raw: "http://{host}/a", err: "placeholder in the host"},
	{raw: "http://api.{tenant}.internal/a", err: "placeholder in the host"},
	{raw: "http://127.0.0.1:{port}/a", err: "placeholder in the port"},
	{raw: "http://[::1]:{port}/a", err: "placeholder in the port"},
	{raw: "http://{user}@127.0.0.1/a", err: "placeholder in the userinfo"},
	{raw: "http://u:{pw}@127.0.0.1/a", err: "placeholder in the userinfo"},
	{raw: "http://127.0.0.1/a#{frag}", err: "placeholder in the fragment"},
	{raw: "http://127.0.0.1/a?x=1#{frag}", err: "placeholder in the fragment"},
	{raw: "ftp://127.0.0.1/a", err: "scheme must be http or https"},
	{raw: "/relative/{x}", err: "must be absolute"},
	{raw: "http:///a", err: "no host"},
	{raw: "http://127.0.0.1/a/{x", err: "unclosed"},
	{raw: "http://127.0.0.1/a/x}", err: "unbalanced"},
	{raw: "http://127.0.0.1/a/{}", err: "malformed placeholder"},
	{raw: "http://127.0.0.1/a?q={x", err: "unclosed"},
	{raw: "http://127.0.0.1/a b/{x}", err: "character ' ' must be percent-encoded (%20)"},
	{raw: "http://127.0.0.1/é/{x}", err: "must be percent-encoded (%C3)"},
	{raw: "http://127.0.0.1/a/{x}?q=a b", err: "query: character ' ' must be percent-encoded"},
	{raw: "http://127.0.0.1/a%zz/{x}", err: "not a valid percent-encoding"},
	{raw: "http://127.0.0.1/a%2", err: "not a valid percent-encoding"},
	{raw: "http://127.0.0.1/a%20b/{x}?q=a%20b&r=!$'()*+,;=:@/?"},
	{raw: "http://127.0.0.1/a\\b", err: "must be percent-encoded"},
}

func TestCompileURL(t *testing.T) {
	for _, tc := range compileURLCases {
		_, err := compileURL(tc.raw)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.raw, err)
		case tc.err != "" && err == nil:
			t.Errorf("%s: no error, want %q", tc.raw, tc.err)
		case tc.err != "" && !strings.Contains(err.Error(), tc.err):
			t.Errorf("%s: error %q does not contain %q", tc.raw, err, tc.err)
		}
	}
}

func TestExpandURL(t *testing.T) {
	tmpl, err := compileURL("http://127.0.0.1:9001/items/{v}/detail?id={v}&fixed=a%20b")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		value      string
		wantURL    string
		wantPath   string // decoded path the backend sees as one segment
		wantQueryV string // the id query value the backend decodes
		bad        bool
	}{
		{value: "42", wantURL: "http://127.0.0.1:9001/items/42/detail?id=42&fixed=a%20b", wantPath: "/items/42/detail", wantQueryV: "42"},
		{value: "a/b", wantURL: "http://127.0.0.1:9001/items/a%2Fb/detail?id=a%2Fb&fixed=a%20b", wantPath: "/items/a/b/detail", wantQueryV: "a/b"},
		{value: "a&user=2", wantURL: "http://127.0.0.1:9001/items/a%26user%3D2/detail?id=a%26user%3D2&fixed=a%20b", wantPath: "/items/a&user=2/detail", wantQueryV: "a&user=2"},
		{value: "..;", wantURL: "http://127.0.0.1:9001/items/..%3B/detail?id=..%3B&fixed=a%20b", wantPath: "/items/..;/detail", wantQueryV: "..;"},
		{value: "%2e%2e", wantURL: "http://127.0.0.1:9001/items/%252e%252e/detail?id=%252e%252e&fixed=a%20b", wantPath: "/items/%2e%2e/detail", wantQueryV: "%2e%2e"},
		{value: "a b#c?d", wantURL: "http://127.0.0.1:9001/items/a%20b%23c%3Fd/detail?id=a+b%23c%3Fd&fixed=a%20b", wantPath: "/items/a b#c?d/detail", wantQueryV: "a b#c?d"},
		{value: "é", wantURL: "http://127.0.0.1:9001/items/%C3%A9/detail?id=%C3%A9&fixed=a%20b", wantPath: "/items/é/detail", wantQueryV: "é"},
		{value: "", bad: true},
		{value: ".", bad: true},
		{value: "..", bad: true},
		{value: "a\x00b", bad: true},
		{value: "a\r\nX-Evil: 1", bad: true},
		{value: "\x7f", bad: true},
		{value: "a\u0085b", bad: true},
	} {
		repl := caddy.NewReplacer()
		repl.Set("v", tc.value)
		got, err := tmpl.expand(repl)
		if tc.bad {
			if !errors.Is(err, errBadValue) {
				t.Errorf("%q: got %q, %v; want errBadValue", tc.value, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.value, err)
			continue
		}
		if got != tc.wantURL {
			t.Errorf("%q: got %s, want %s", tc.value, got, tc.wantURL)
		}
		// What a backend would decode from it.
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, got, nil)
		if err != nil {
			t.Fatalf("%q: %v", tc.value, err)
		}
		if req.URL.Path != tc.wantPath {
			t.Errorf("%q: path %q, want %q", tc.value, req.URL.Path, tc.wantPath)
		}
		if segs := strings.Split(req.URL.EscapedPath(), "/"); len(segs) != 4 {
			t.Errorf("%q: escaped path %q is not 3 segments", tc.value, req.URL.EscapedPath())
		}
		q, _ := url.ParseQuery(req.URL.RawQuery)
		if len(q["id"]) != 1 || q.Get("id") != tc.wantQueryV || len(q) != 2 {
			t.Errorf("%q: query %v, want id=%q and fixed only", tc.value, q, tc.wantQueryV)
		}
	}
}

func TestExpandQueryValuesNotRefused(t *testing.T) {
	// Query values are escaped, never refused: an empty or dot value is
	// harmless there.
	tmpl, err := compileURL("http://127.0.0.1/a?x={v}")
	if err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]string{"": "x=", "..": "x=..", "\r\n": "x=%0D%0A"} {
		repl := caddy.NewReplacer()
		repl.Set("v", v)
		got, err := tmpl.expand(repl)
		if err != nil || !strings.HasSuffix(got, "?"+want) {
			t.Errorf("%q: got %q, %v; want suffix ?%s", v, got, err, want)
		}
	}
}

func TestUnknownPathPlaceholderIsEmpty(t *testing.T) {
	tmpl, err := compileURL("http://127.0.0.1/users/{http.auth.user.id}")
	if err != nil {
		t.Fatal(err)
	}
	if !tmpl.private {
		t.Error("an http.auth placeholder must make the template private")
	}
	if _, err := tmpl.expand(caddy.NewReplacer()); !errors.Is(err, errBadValue) {
		t.Errorf("unset identity placeholder: %v, want errBadValue", err)
	}
}

func TestHeaderTemplate(t *testing.T) {
	repl := caddy.NewReplacer()
	repl.Set("http.request.header.X-Id", "abc")
	repl.Set("evil", "a\r\nb")
	repl.Set("tab", "a\tb")
	h := compileHeader("id={http.request.header.X-Id}")
	if !h.private {
		t.Error("header placeholder must be private")
	}
	if v, err := h.expand(repl); err != nil || v != "id=abc" {
		t.Errorf("got %q, %v", v, err)
	}
	if compileHeader("static").private || compileHeader("{http.request.uuid}").private {
		t.Error("static or non-credential value marked private")
	}
	if _, err := compileHeader("{evil}").expand(repl); !errors.Is(err, errBadValue) {
		t.Errorf("CRLF in header value: %v", err)
	}
	if v, err := compileHeader("{tab}").expand(repl); err != nil || v != "a\tb" {
		t.Errorf("tab in header value: %q, %v", v, err)
	}
}

func TestPrivatePlaceholders(t *testing.T) {
	for key, private := range map[string]bool{
		"http.request.uri":                false,
		"http.request.uri.path":           false,
		"http.request.uri.path.0":         false,
		"http.request.uri.query.id":       false,
		"http.request.orig_uri.query":     false,
		"http.request.method":             false,
		"http.request.host":               false,
		"http.request.uuid":               false,
		"env.API_VERSION":                 false,
		"time.now.unix":                   false,
		"http.auth.user.id":               true,
		"http.auth.user.email":            true,
		"http.request.remote":             true,
		"http.request.remote.host":        true,
		"http.request.remote.port":        true,
		"http.vars.client_ip":             true, // {client_ip}
		"http.request.header.X-Tenant":    true,
		"http.request.cookie.session":     true,
		"http.request.tls.client.subject": true,
		"http.request.tls.cipher_suite":   true,
		"http.vars.anything":              true,
		"http.regexp.name.1":              true,
		"http.matchers.header.x":          true,
		"http.request.hostnameX":          true, // unknown: private
		"something.else":                  true,
	} {
		if got := isPrivateKey(key); got != private {
			t.Errorf("{%s}: private %v, want %v", key, got, private)
		}
	}
	for raw, private := range map[string]bool{
		"http://127.0.0.1/u/{http.request.uri.query.id}":   false,
		"http://127.0.0.1/u/{http.request.remote.host}":    true,
		"http://127.0.0.1/u?ip={http.vars.client_ip}":      true,
		"http://127.0.0.1/u?c={http.request.cookie.c}":     true,
		"http://127.0.0.1/{http.request.uri.path.0}/x":     false,
		"http://127.0.0.1/u/{http.auth.user.id}?q={env.X}": true,
	} {
		u, err := compileURL(raw)
		if err != nil {
			t.Fatal(err)
		}
		if u.private != private {
			t.Errorf("%s: private %v, want %v", raw, u.private, private)
		}
	}
	// A header value whose braces the splitter refuses may still hold a
	// placeholder the replacer expands.
	if !compileHeader("}{http.request.remote.host}").private {
		t.Error("malformed header template with a client placeholder not private")
	}
}
