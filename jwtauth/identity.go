package jwtauth

import (
	"net/http"
	"strings"
)

// identityHeader is one `header` line: a request header set from a claim.
type identityHeader struct {
	name string // canonical form, e.g. X-User-Id for x-user-id
	path string // claim dot-path
}

// deleteIdentityHeaders removes every client-sent copy of the identity
// headers: any casing, and with `_` in place of `-` (which some servers
// behind the gateway treat as the same header).
func (h *Handler) deleteIdentityHeaders(hdr http.Header) {
	if len(h.identity) == 0 {
		return
	}
	for key := range hdr {
		for _, ih := range h.identity {
			if sameHeaderName(key, ih.name) {
				delete(hdr, key)
				break
			}
		}
	}
}

// sameHeaderName compares header names case-insensitively, treating `_` and
// `-` as equal.
func sameHeaderName(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// validHeaderName reports whether name is an HTTP field name (RFC 9110
// §5.1 token).
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (c < '0' || c > '9') && strings.IndexByte("!#$%&'*+-.^_`|~", c) < 0 {
			return false
		}
	}
	return true
}

// userClaims serves {http.auth.user.<path>} from verified claims, lazily.
type userClaims map[string]any

const userPlaceholderPrefix = "http.auth.user."

func (c userClaims) placeholder(key string) (any, bool) {
	if !strings.HasPrefix(key, userPlaceholderPrefix) {
		return nil, false
	}
	// Known but empty when the claim is absent, null or unfit for a header,
	// so that no literal placeholder text ever reaches an upstream.
	v, ok := lookupClaim(c, key[len(userPlaceholderPrefix):])
	if !ok {
		return "", true
	}
	text, ok := claimText(v)
	if !ok || hasControl(text) {
		return "", true
	}
	return text, true
}
