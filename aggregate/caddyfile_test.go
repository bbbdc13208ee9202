package aggregate

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`aggregate {
		backend user http://127.0.0.1:9001/users/{http.auth.user.id} {
			method post
			header X-A one
			header x-a two
			timeout 250ms
			required
			target data.user
			fallback ` + "`{\"name\": \"?\"}`" + `
		}
		backend orders http://127.0.0.1:9002/orders?u={http.request.uri.query.u}
		forward_headers Authorization cookie
		timeout 2s
		max_body 2KiB
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	want := Handler{
		Backends: []*Backend{
			{
				Name:     "user",
				URL:      "http://127.0.0.1:9001/users/{http.auth.user.id}",
				Method:   "POST",
				Header:   http.Header{"X-A": {"one", "two"}},
				Timeout:  caddy.Duration(250 * time.Millisecond),
				Required: true,
				Target:   "data.user",
				Fallback: json.RawMessage(`{"name": "?"}`),
			},
			{Name: "orders", URL: "http://127.0.0.1:9002/orders?u={http.request.uri.query.u}"},
		},
		ForwardHeaders: []string{"Authorization", "cookie"},
		Timeout:        caddy.Duration(2 * time.Second),
		MaxBody:        2048,
	}
	got, _ := json.Marshal(h)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Errorf("got  %s\nwant %s", got, exp)
	}
}

// caddyfileErrors are Caddyfile inputs the parser refuses, with a part of
// the error; they also seed FuzzUnmarshalCaddyfile.
var caddyfileErrors = []struct {
	input, err string
}{
	{"aggregate", "at least one backend"},
	{"aggregate extra {\n backend a http://h/a\n}", "wrong argument count"},
	{"aggregate {\n backend a\n}", "wrong argument count"},
	{"aggregate {\n backend \"a\tb\" http://h/a\n}", "without control characters"},
	{"aggregate {\n backend a http://h/a extra\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a\n backend a http://h/b\n}", `duplicate backend name "a"`},
	{"aggregate {\n backend a http://h/a\n timeout 1s\n timeout 2s\n}", `duplicate subdirective "timeout"`},
	{"aggregate {\n backend a http://h/a\n max_body 1KB\n max_body 2KB\n}", `duplicate subdirective "max_body"`},
	{"aggregate {\n backend a http://h/a\n timeout\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a\n timeout 0s\n}", "timeout must be positive"},
	{"aggregate {\n backend a http://h/a\n max_body\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a\n max_body 0\n}", "max_body 0: must be between 1 byte and 64MiB"},
	{"aggregate {\n backend a http://h/a\n max_body 65MiB\n}", "max_body 65MiB: must be between 1 byte and 64MiB"},
	{"aggregate {\n backend a http://h/a {\n fallback \"\xff\"\n }\n}", "fallback is not valid JSON"},
	{"aggregate {\n backend a http://h/a\n forward_headers\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a\n forward_headers X-A x-a\n}", "listed twice"},
	{"aggregate {\n backend a http://h/a\n forward_headers Connection\n}", "cannot be forwarded"},
	{"aggregate {\n backend a http://h/a\n forward_headers Accept-Encoding\n}", "cannot be forwarded"},
	{"aggregate {\n backend a http://h/a\n bogus\n}", `unrecognized subdirective "bogus"`},
	{"aggregate {\n backend a http://h/a {\n bogus\n }\n}", `unrecognized subdirective "bogus"`},
	{"aggregate {\n backend a http://h/a {\n method\n }\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a {\n method GET POST\n }\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a {\n method G(T\n }\n}", "invalid method"},
	{"aggregate {\n backend a http://h/a {\n method GET\n method POST\n }\n}", `duplicate subdirective "method"`},
	{"aggregate {\n backend a http://h/a {\n header X-A\n }\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a {\n header Host h\n }\n}", "cannot be set"},
	{"aggregate {\n backend a http://h/a {\n timeout soon\n }\n}", "parsing timeout"},
	{"aggregate {\n backend a http://h/a {\n required please\n }\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a {\n required\n required\n }\n}", `duplicate subdirective "required"`}, //nolint:dupword // the duplicate is the test
	{"aggregate {\n backend a http://h/a {\n target\n }\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a {\n target a..b\n }\n}", "empty segment"},
	{"aggregate {\n backend a http://h/a {\n fallback\n }\n}", "wrong argument count"},
	{"aggregate {\n backend a http://h/a {\n fallback {nope}\n }\n}", "fallback is not valid JSON"},
	{"aggregate {\n backend a http://{x}/a\n}", "placeholder in the host"},
	{"aggregate {\n backend a http://h:{x}/a\n}", "placeholder in the port"},
	{"aggregate {\n backend a {x}://h/a\n}", "placeholder in the scheme"},
	{"aggregate {\n backend a http://{x}@h/a\n}", "placeholder in the userinfo"},
	{"aggregate {\n backend a http://h/a#{x}\n}", "placeholder in the fragment"},
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range caddyfileErrors {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: got %v, want error containing %q", tc.input, err, tc.err)
		}
	}
}

func TestUnmarshalCaddyfileErrorLine(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("aggregate {\n\tbackend a http://h/a\n\tbackend b http://h:{x}/b\n}"))
	if err == nil || !strings.Contains(err.Error(), "Testfile:3") {
		t.Fatalf("error %v does not name line 3", err)
	}
}
