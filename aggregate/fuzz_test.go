package aggregate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// querySeparators counts the separators of a raw query's parameters, the
// way backends split them (on '&' and ';'): a value adding one would add a
// parameter.
func querySeparators(raw string) int {
	return strings.Count(raw, "&") + strings.Count(raw, ";")
}

// FuzzURLTemplate: whatever a placeholder holds, the expanded URL keeps the
// template's scheme, host, path segments and query parameters (a value is
// refused or stays inside its segment or parameter), and a path value
// decodes back to itself.
func FuzzURLTemplate(f *testing.F) {
	for _, tc := range compileURLCases {
		f.Add(tc.raw, "42")
	}
	for _, v := range []string{"a/b", "a&user=2", "..;", "%2e%2e", "a b#c?d", "é", "", ".", "..", "a\x00b", "a\r\nX: 1", "\xff", "?x=1#f", "a;b=c"} {
		f.Add("http://127.0.0.1:9001/items/{v}/detail?id={v}&fixed=a%20b", v)
	}
	f.Fuzz(func(t *testing.T, raw, value string) {
		tmpl, err := compileURL(raw)
		if err != nil {
			return
		}
		expand := func(v string) (*url.URL, error) {
			repl := caddy.NewReplacer()
			repl.Map(func(string) (any, bool) { return v, true })
			s, err := tmpl.expand(repl)
			if err != nil {
				return nil, err
			}
			u, err := url.Parse(s)
			if err != nil {
				t.Fatalf("template %q, value %q: expanded URL %q does not parse: %v", raw, v, s, err)
			}
			return u, nil
		}
		ref, err := expand("x")
		if err != nil {
			t.Fatalf("template %q: a plain value is refused: %v", raw, err)
		}
		got, err := expand(value)
		if err != nil {
			if !errors.Is(err, errBadValue) {
				t.Fatalf("template %q, value %q: %v is not a bad value", raw, value, err)
			}
			return
		}
		if got.Scheme != ref.Scheme || got.Host != ref.Host || got.User.String() != ref.User.String() || got.Fragment != "" {
			t.Fatalf("template %q, value %q: %s changed the scheme, host, user or fragment of %s", raw, value, got, ref)
		}
		if g, r := strings.Count(got.EscapedPath(), "/"), strings.Count(ref.EscapedPath(), "/"); g != r {
			t.Fatalf("template %q, value %q: path %q has %d segments, want %d", raw, value, got.EscapedPath(), g, r)
		}
		if g, r := querySeparators(got.RawQuery), querySeparators(ref.RawQuery); g != r {
			t.Fatalf("template %q, value %q: query %q has %d parameters, want %d", raw, value, got.RawQuery, g, r)
		}
		// A path placeholder alone in its segment decodes to the value.
		for i, p := range tmpl.path {
			if p.key == "" || i == 0 {
				continue
			}
			prev := tmpl.path[i-1]
			if prev.key != "" || !strings.HasSuffix(prev.lit, "/") {
				continue
			}
			if i+1 < len(tmpl.path) && (tmpl.path[i+1].key != "" || !strings.HasPrefix(tmpl.path[i+1].lit, "/")) {
				continue
			}
			segs := strings.Split(got.EscapedPath(), "/")
			idx := strings.Count(tmplPathUpTo(tmpl, i), "/")
			if idx < len(segs) {
				dec, err := url.PathUnescape(segs[idx])
				if err != nil || dec != value {
					t.Fatalf("template %q, value %q: segment %q decodes to %q", raw, value, segs[idx], dec)
				}
			}
		}
	})
}

// tmplPathUpTo renders the path pieces before piece i with "x" for values.
func tmplPathUpTo(t *urlTemplate, i int) string {
	var sb strings.Builder
	for _, p := range t.path[:i] {
		if p.key != "" {
			sb.WriteString("x")
		}
		sb.WriteString(p.lit)
	}
	return sb.String()
}

// FuzzSplice: whatever bytes a backend sends (and whatever target is
// configured), the envelope is valid UTF-8 JSON with every backend in data.
func FuzzSplice(f *testing.F) {
	for _, body := range []string{
		` {"user": {"name": "ann", "ids": [10, 20, {"big": 12345678901234567890}]}, "n": null} `,
		`{"user":`, `{"a":1} {"b":2}`, ``, `nope`, `<html>oops</html>`, ` [1, 2] `,
		"{\"name\":\"caf\xe9\"}", "[\"\xed\xa0\x80\"]", "\xef\xbb\xbf{}", `{"s":"\ud800"}`, `"\u0000"`,
	} {
		f.Add([]byte(body), "")
		f.Add([]byte(body), "user.ids.2")
	}
	backends := []*Backend{{Name: "fuzzed"}, {Name: "other", Fallback: json.RawMessage(`{"f":1}`)}}
	for _, b := range backends {
		b.nameJSON, _ = json.Marshal(b.Name)
		b.fallback = b.Fallback
	}
	f.Fuzz(func(t *testing.T, body []byte, target string) {
		var path []string
		if target != "" {
			path = strings.Split(target, ".")
		}
		results := []result{{status: 200}, {code: codeStatus, status: 500}}
		if v, ok := backendValue(body, path); ok {
			if !utf8.Valid(v) || !json.Valid(v) {
				t.Fatalf("body %q, target %q: value %q is not valid UTF-8 JSON", body, target, v)
			}
			results[0].value = v
		} else {
			results[0].code = codeInvalidJSON
		}
		var buf bytes.Buffer
		writeEnvelope(&buf, backends, results)
		if !utf8.Valid(buf.Bytes()) || !json.Valid(buf.Bytes()) {
			t.Fatalf("body %q, target %q: envelope %q is not valid UTF-8 JSON", body, target, buf.Bytes())
		}
		var env struct {
			Data map[string]json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(buf.Bytes(), &env); err != nil || len(env.Data) != 2 {
			t.Fatalf("envelope %s: %v", buf.Bytes(), err)
		}
	})
}

// FuzzUnmarshalCaddyfile: any token stream gives an error or a config,
// never a panic; a config survives a JSON round trip, and provisioning it
// gives an error or a handler, never a panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, tc := range caddyfileErrors {
		f.Add(tc.input)
	}
	f.Add("aggregate {\n backend user http://127.0.0.1:9001/users/{http.auth.user.id} {\n method post\n header X-A one\n timeout 250ms\n required\n target data.user\n fallback `{\"name\": \"?\"}`\n }\n backend orders http://127.0.0.1:9002/orders?u={query.u}\n forward_headers Authorization\n timeout 2s\n max_body 2KiB\n}")
	f.Add("aggregate {\n backend user http://127.0.0.1:9001/u {\n breaker 3 10s\n }\n backend orders http://127.0.0.1:9002/o/{backends.user.id}?x={backends.user.a.0} {\n header X-Org {backends.user.org}\n cache 20\n }\n}")
	f.Add("aggregate {\n backend a http://127.0.0.1:9/a/{backends.b.id}\n backend b http://127.0.0.1:9/b/{backends.a.id}\n}")
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Fuzzfile")
		if err != nil {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			return
		}
		js, err := json.Marshal(&h)
		if err != nil {
			t.Fatalf("%q: %v", input, err)
		}
		var back Handler
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatalf("%q: config %s does not load back: %v", input, js, err)
		}
		if js2, _ := json.Marshal(&back); !bytes.Equal(js, js2) {
			t.Fatalf("%q: JSON round trip changed the config:\n%s\n%s", input, js, js2)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		if err := back.Provision(ctx); err == nil {
			_ = back.Validate()
		}
		_ = back.Cleanup()
	})
}

// FuzzDependencyTemplate: whatever JSON a backend answers, a
// {backends.*} value taken from it never changes the dependent URL's
// scheme, host, path segments or query parameters, and never puts a
// control character into a header: it is refused (code dependency) or
// stays inside its segment, parameter or header value.
func FuzzDependencyTemplate(f *testing.F) {
	for _, v := range []string{
		`"a/b"`, `"a&user=2"`, `".."`, `"."`, `""`, `"%2e%2e"`, `"a b#c?d"`, `"\u0000"`, `"a\r\nX: 1"`,
		`12345678901234567890`, `-1.5e3`, `true`, `null`, `{"a":1}`, `[1]`, `"é"`, `"?x=1#f"`, `"a;b=c"`,
	} {
		f.Add(`{"id":`+v+`}`, "http://127.0.0.1:9001/items/{backends.src.id}/detail?id={backends.src.id}&fixed=a%20b")
	}
	f.Add(`{"a":{"b":["x/y"]}}`, "http://127.0.0.1:9001/{backends.src.a.b.0}?q={backends.src.a.b.0}")
	f.Fuzz(func(t *testing.T, body, raw string) {
		tmpl, err := compileURL(raw)
		if err != nil || !tmpl.hasDeps {
			return
		}
		names := []string{"src"}
		if _, err := dependencies(names, [][]string{{}}); err != nil {
			return
		}
		keys, err := depKeys(raw)
		if err != nil {
			return
		}
		for _, k := range keys {
			if d, _, _ := resolveDep(k, names); d < 0 {
				return
			}
		}
		bindDeps(tmpl.path, names)
		bindDeps(tmpl.query, names)
		value, ok := backendValue([]byte(body), nil)
		if !ok {
			return
		}
		parts, err := tmpl.prepare(caddy.NewReplacer())
		if err != nil {
			return
		}
		render := func(lookup depLookup) (*url.URL, error) {
			s, err := tmpl.fill(parts, lookup)
			if err != nil {
				return nil, err
			}
			u, err := url.Parse(s)
			if err != nil {
				t.Fatalf("template %q, body %q: URL %q does not parse: %v", raw, body, s, err)
			}
			return u, nil
		}
		ref, err := render(func(*depRef) (string, error) { return "x", nil })
		if err != nil {
			t.Fatalf("template %q: a plain value is refused: %v", raw, err)
		}
		got, err := render(func(r *depRef) (string, error) { return depValue(value, r.field) })
		if err != nil {
			if !errors.Is(err, errDependency) {
				t.Fatalf("template %q, body %q: %v is not a dependency error", raw, body, err)
			}
			return
		}
		if got.Scheme != ref.Scheme || got.Host != ref.Host || got.User.String() != ref.User.String() || got.Fragment != "" {
			t.Fatalf("template %q, body %q: %s changed the scheme, host, user or fragment of %s", raw, body, got, ref)
		}
		if g, r := strings.Count(got.EscapedPath(), "/"), strings.Count(ref.EscapedPath(), "/"); g != r {
			t.Fatalf("template %q, body %q: path %q has %d segments, want %d", raw, body, got.EscapedPath(), g, r)
		}
		if g, r := querySeparators(got.RawQuery), querySeparators(ref.RawQuery); g != r {
			t.Fatalf("template %q, body %q: query %q has %d parameters, want %d", raw, body, got.RawQuery, g, r)
		}
		// The same value in a header: a control character is refused.
		h := compileHeader("v={backends.src.id}")
		bindDeps(h.pieces, names)
		hp, _ := h.prepare(caddy.NewReplacer())
		if v, err := h.fill(hp, func(r *depRef) (string, error) { return depValue(value, r.field) }); err == nil &&
			strings.ContainsFunc(v, badHeaderRune) {
			t.Fatalf("body %q: header value %q holds a control character", body, v)
		}
	})
}

// FuzzCacheControl: any Cache-Control, Age, Vary and Set-Cookie values give
// a lifetime without a panic; a positive one only when a max-age or
// s-maxage is there and none of no-store, no-cache, private, Set-Cookie or
// Vary: * is, and never longer than the larger of them.
func FuzzCacheControl(f *testing.F) {
	for _, cc := range []string{
		"max-age=60", "s-maxage=10, max-age=60", "no-store", `private="x", max-age=5`, `max-age="7"`,
		"MAX-AGE=3", "max-age=1, max-age=2", `foo="a,no-cache", max-age=9`, `max-age="9`, "max-age=99999999999999999999", ",,, ,max-age=1,",
	} {
		f.Add(cc, "", "", false)
		f.Add(cc, "10", "Accept", false)
		f.Add(cc, "", "*", true)
	}
	f.Fuzz(func(t *testing.T, cc, age, vary string, cookie bool) {
		h := http.Header{"Cache-Control": {cc}}
		if age != "" {
			h["Age"] = []string{age}
		}
		if vary != "" {
			h["Vary"] = []string{vary}
		}
		if cookie {
			h["Set-Cookie"] = []string{"a=b"}
		}
		got := freshness(h)
		if got < 0 || got > maxDeltaSeconds*time.Second {
			t.Fatalf("%q: lifetime %v", cc, got)
		}
		if got == 0 {
			return
		}
		lower := strings.ToLower(cc)
		if cookie || !strings.Contains(lower, "max-age") && !strings.Contains(lower, "s-maxage") {
			t.Fatalf("%q (cookie %v): stored for %v", cc, cookie, got)
		}
		for v := range strings.SplitSeq(vary, ",") {
			if strings.TrimSpace(v) == "*" {
				t.Fatalf("Vary %q: stored", vary)
			}
		}
		// A directive standing alone between commas (outside quotes, which
		// this check ignores only when there are none) forbids storing.
		if !strings.Contains(cc, `"`) {
			for d := range strings.SplitSeq(lower, ",") {
				name, _, _ := strings.Cut(strings.TrimSpace(d), "=")
				switch strings.TrimSpace(name) {
				case "no-store", "no-cache", "private":
					t.Fatalf("%q: stored for %v", cc, got)
				}
			}
		}
	})
}
