package identity

import (
	"bytes"
	"encoding/json"
	"strings"
)

// Lookup finds the value at a dot-separated path. At each level a key
// holding the whole remaining path wins (so "https://example.com/roles" and
// other namespaced claims with dots stay reachable), then the path is split
// at each dot from the left.
func Lookup(claims map[string]any, path string) (any, bool) {
	if v, ok := claims[path]; ok {
		return v, true
	}
	for i := 0; i < len(path); i++ {
		if path[i] != '.' {
			continue
		}
		sub, ok := claims[path[:i]].(map[string]any)
		if !ok {
			continue
		}
		if v, ok := Lookup(sub, path[i+1:]); ok {
			return v, true
		}
	}
	return nil, false
}

// Text renders a value decoded from JSON (numbers as json.Number) as text:
// strings as they are, numbers as their exact JSON literal, booleans as
// true/false, arrays of scalars joined with ", ", anything else as compact
// JSON. null renders as absent.
func Text(v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	case bool:
		if v {
			return "true", true
		}
		return "false", true
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			switch e.(type) {
			case string, json.Number, bool:
				s, _ := Text(e)
				parts = append(parts, s)
			default:
				return compactJSON(v), true
			}
		}
		return strings.Join(parts, ", "), true
	default:
		return compactJSON(v), true
	}
}

func compactJSON(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// Values returns the text of each element of an array value, or the one
// text of a scalar.
func Values(v any) []string {
	if arr, ok := v.([]any); ok {
		out := make([]string, 0, len(arr))
		for _, e := range arr {
			if s, ok := Text(e); ok {
				out = append(out, s)
			}
		}
		return out
	}
	if s, ok := Text(v); ok {
		return []string{s}
	}
	return nil
}

// HasControl reports whether s holds a control character (C0 other than
// horizontal tab, or DEL): such a value never goes into a header.
func HasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}
