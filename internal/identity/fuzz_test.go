package identity

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzClaimText renders any JSON value as text. It must never panic;
// strings stay as they are, numbers keep their literal, and anything
// rendered as JSON is valid JSON.
func FuzzClaimText(f *testing.F) {
	for _, s := range []string{
		`"alice"`, `9007199254740993`, `1.5e3`, `-0`, `true`, `null`, `["a","b"]`, `[1,"x",true]`,
		`[{"a":1}]`, `{"a":{"b":[1,2]}}`, `"a\r\nb"`, `"<tag>&"`, `[]`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return
		}
		text, ok := Text(v)
		switch v := v.(type) {
		case nil:
			if ok || text != "" {
				t.Fatalf("null rendered as %q", text)
			}
		case string:
			if text != v {
				t.Fatalf("string %q rendered as %q", v, text)
			}
		case json.Number:
			if text != v.String() {
				t.Fatalf("number %s rendered as %q", v, text)
			}
		case map[string]any:
			if !json.Valid([]byte(text)) {
				t.Fatalf("object rendered as invalid JSON %q", text)
			}
		case []any:
			parts := make([]string, 0, len(v))
			for _, e := range v {
				switch e.(type) {
				case string, json.Number, bool:
					s, _ := Text(e)
					parts = append(parts, s)
				default:
					// An array holding null, an object or an array is
					// compact JSON.
					if !json.Valid([]byte(text)) {
						t.Fatalf("array rendered as invalid JSON %q", text)
					}
					return
				}
			}
			if want := strings.Join(parts, ", "); text != want {
				t.Fatalf("array of scalars rendered as %q, want %q", text, want)
			}
		}
	})
}

// FuzzLookupClaim looks any path up in any claims object. It must never
// panic, and a key holding the whole path is always found.
func FuzzLookupClaim(f *testing.F) {
	f.Add([]byte(`{"realm_access":{"roles":["admin"]},"https://example.com/roles":["x"]}`), "realm_access.roles")
	f.Add([]byte(`{"a":{"b.c":{"d":1}},"a.b":{"c":2}}`), "a.b.c")
	f.Add([]byte(`{"org":{"id":"o1"}}`), "org.id")
	f.Add([]byte(`{"a":1}`), "...")
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		var claims map[string]any
		if err := json.Unmarshal(data, &claims); err != nil || claims == nil {
			return
		}
		v, ok := Lookup(claims, path)
		if want, has := claims[path]; has && (!ok || !jsonEqual(v, want)) {
			t.Fatalf("key %q holding the whole path not found: %v", path, v)
		}
		if ok {
			_, _ = Text(v)
		}
		_, _ = Fields(claims).Placeholder(UserPrefix + path)
	})
}

func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}
