package identity

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// UserPrefix starts every identity placeholder: {http.auth.user.id} and
// {http.auth.user.<path>}.
const UserPrefix = "http.auth.user."

// Fields serves {http.auth.user.<path>} from verified values (a token's
// claims, a key's entry), looked up lazily by Lookup and rendered by Text.
type Fields map[string]any

// Placeholder is a caddy.ReplacerFunc. Every {http.auth.user.*} is known:
// a path that is absent, null or holds a control character resolves to
// the empty string, so no literal placeholder text ever reaches an
// upstream.
func (f Fields) Placeholder(key string) (any, bool) {
	if !strings.HasPrefix(key, UserPrefix) {
		return nil, false
	}
	v, ok := Lookup(f, key[len(UserPrefix):])
	if !ok {
		return "", true
	}
	text, ok := Text(v)
	if !ok || HasControl(text) {
		return "", true
	}
	return text, true
}

// Anonymous serves every {http.auth.user.*} of an anonymous request (let
// through by `optional`) as known and empty.
var Anonymous caddy.ReplacerFunc = Fields(nil).Placeholder
