package jwtauth

import "strings"

// tokenScopes returns the scopes granted by a token: the space-separated
// `scope` claim (RFC 8693 §4.2), or `scp` as a string or an array.
func tokenScopes(claims map[string]any) []string {
	var out []string
	for _, name := range [...]string{"scope", "scp"} {
		switch v := claims[name].(type) {
		case string:
			out = append(out, strings.Fields(v)...)
		case []any:
			for _, e := range v {
				if s, ok := e.(string); ok {
					out = append(out, strings.Fields(s)...)
				}
			}
		}
	}
	return out
}
