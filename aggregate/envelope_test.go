package aggregate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"unicode/utf8"
)

func backendsFor(t *testing.T, specs ...Backend) []*Backend {
	t.Helper()
	out := make([]*Backend, len(specs))
	for i := range specs {
		b := specs[i]
		b.nameJSON, _ = json.Marshal(b.Name)
		if len(b.Fallback) > 0 {
			b.fallback = b.Fallback
		}
		out[i] = &b
	}
	return out
}

func TestWriteEnvelope(t *testing.T) {
	backends := backendsFor(t,
		Backend{Name: "user", Required: true},
		Backend{Name: "orders", Fallback: json.RawMessage(`[]`)},
		Backend{Name: "a\"b<c>"},
	)
	for _, tc := range []struct {
		name     string
		results  []result
		want     string
		status   int
		complete bool
	}{
		{
			name:     "all ok, raw bytes spliced in config order",
			results:  []result{{status: 200, value: []byte(`{"id": 1}`)}, {status: 200, value: []byte(`[1,2]`)}, {status: 204, value: jsonNull}},
			want:     `{"data":{"user":{"id": 1},"orders":[1,2],"a\"b\u003cc\u003e":null}}`,
			status:   http.StatusOK,
			complete: true,
		},
		{
			name:    "optional failures: partial 200, fallback used, status only when answered",
			results: []result{{status: 200, value: []byte(`1`)}, {status: 503, code: codeStatus}, {code: codeUnreachable}},
			want:    `{"data":{"user":1,"orders":[],"a\"b\u003cc\u003e":null},"errors":[{"backend":"orders","code":"status","status":503},{"backend":"a\"b\u003cc\u003e","code":"unreachable"}]}`,
			status:  http.StatusOK,
		},
		{
			name:    "required failure: 502",
			results: []result{{status: 200, code: codeInvalidJSON}, {status: 200, value: []byte(`[]`)}, {status: 200, value: []byte(`2`)}},
			want:    `{"data":{"user":null,"orders":[],"a\"b\u003cc\u003e":2},"errors":[{"backend":"user","code":"invalid_json","status":200}]}`,
			status:  http.StatusBadGateway,
		},
		{
			name:    "required timeout alone: 504",
			results: []result{{code: codeTimeout}, {status: 200, value: []byte(`[]`)}, {status: 200, value: []byte(`2`)}},
			want:    `{"data":{"user":null,"orders":[],"a\"b\u003cc\u003e":2},"errors":[{"backend":"user","code":"timeout"}]}`,
			status:  http.StatusGatewayTimeout,
		},
		{
			name:    "all failed, mixed: 502",
			results: []result{{code: codeTimeout}, {code: codeTimeout}, {status: 200, code: codeTooLarge}},
			want:    `{"data":{"user":null,"orders":[],"a\"b\u003cc\u003e":null},"errors":[{"backend":"user","code":"timeout"},{"backend":"orders","code":"timeout"},{"backend":"a\"b\u003cc\u003e","code":"too_large","status":200}]}`,
			status:  http.StatusBadGateway,
		},
		{
			name:    "all timed out: 504",
			results: []result{{code: codeTimeout}, {code: codeTimeout}, {code: codeTimeout}},
			want:    `{"data":{"user":null,"orders":[],"a\"b\u003cc\u003e":null},"errors":[{"backend":"user","code":"timeout"},{"backend":"orders","code":"timeout"},{"backend":"a\"b\u003cc\u003e","code":"timeout"}]}`,
			status:  http.StatusGatewayTimeout,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			sum := writeEnvelope(&buf, backends, tc.results)
			if got := buf.String(); got != tc.want {
				t.Errorf("envelope\n got %s\nwant %s", got, tc.want)
			}
			if !json.Valid(buf.Bytes()) {
				t.Errorf("envelope is not valid JSON: %s", buf.String())
			}
			status, complete := sum.status(len(backends))
			if status != tc.status || complete != tc.complete {
				t.Errorf("status %d complete %v, want %d %v", status, complete, tc.status, tc.complete)
			}
		})
	}
}

func TestExtractTarget(t *testing.T) {
	doc := []byte(` {"user": {"name": "ann", "ids": [10, 20, {"big": 12345678901234567890}]}, "n": null} `)
	for _, tc := range []struct {
		path string
		want string
	}{
		{"user.name", `"ann"`},
		{"user.ids", `[10, 20, {"big": 12345678901234567890}]`},
		{"user.ids.1", `20`},
		{"user.ids.2.big", `12345678901234567890`}, // exact, not rounded through float64
		{"user.ids.9", `null`},
		{"user.ids.x", `null`},
		{"user.missing", `null`},
		{"n.deeper", `null`},
		{"user.name.deeper", `null`},
	} {
		got, ok := extractTarget(doc, splitPath(tc.path))
		if !ok || string(got) != tc.want {
			t.Errorf("%s: got %s %v, want %s", tc.path, got, ok, tc.want)
		}
	}
	for _, bad := range []string{`{"user":`, `{"a":1} {"b":2}`, ``, `nope`} {
		if _, ok := extractTarget([]byte(bad), []string{"user"}); ok {
			t.Errorf("%q accepted as JSON", bad)
		}
	}
}

func splitPath(p string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '.' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

func TestBackendValueRefusesInvalidUTF8(t *testing.T) {
	for _, tc := range []struct {
		body   string
		target []string
		ok     bool
	}{
		{`{"name":"café"}`, nil, true},
		{" \n", nil, true},                                                  // empty: null
		{"{\"name\":\"caf\xe9\"}", nil, false},                              // Latin-1 byte inside a string
		{"{\"name\":\"\xed\xa0\x80\"}", nil, false},                         // UTF-8-encoded surrogate
		{"{\"n\xff\":1}", nil, false},                                       // in a key
		{"{\"a\":{\"b\":\"ok\"},\"c\":\"\xc0\xaf\"}", []string{"a"}, false}, // outside the target too
		{"\xef\xbb\xbf{}", nil, false},                                      // a byte order mark is not JSON text
		{`{"s":"\ud800"}`, nil, true},                                       // an escaped lone surrogate is valid JSON text
	} {
		v, ok := backendValue([]byte(tc.body), tc.target)
		if ok != tc.ok {
			t.Errorf("%q: ok %v, want %v", tc.body, ok, tc.ok)
			continue
		}
		if ok && !utf8.Valid(v) {
			t.Errorf("%q: value %q is not UTF-8", tc.body, v)
		}
	}
	// Through the envelope: one bad backend, the others intact, valid UTF-8.
	backends := backendsFor(t, Backend{Name: "good"}, Backend{Name: "bad"})
	good, _ := backendValue([]byte(`{"x":"ü"}`), nil)
	_, ok := backendValue([]byte("{\"x\":\"\xfc\"}"), nil)
	results := []result{{status: 200, value: good}, {status: 200}}
	if !ok {
		results[1].code = codeInvalidJSON
	}
	var buf bytes.Buffer
	writeEnvelope(&buf, backends, results)
	if !utf8.Valid(buf.Bytes()) || !json.Valid(buf.Bytes()) ||
		buf.String() != `{"data":{"good":{"x":"ü"},"bad":null},"errors":[{"backend":"bad","code":"invalid_json","status":200}]}` {
		t.Fatalf("envelope %s", buf.Bytes())
	}
}
