package ratelimit

import (
	"strings"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// authWarn catches a key built from {http.auth.*} placeholders in a
// throttle that runs before the authentication directive that sets them:
// throttle is ordered before basic_auth, jwt_auth and api_key, so without a
// `route` every such request would count under the client IP. The first
// request that meets an unset {http.auth.*} placeholder logs one error
// naming the fix; the check stops after it. A placeholder that is set but
// empty (an anonymous request let through by `optional`, an absent claim)
// is no misconfiguration and logs nothing.
type authWarn struct {
	names  []string // the {http.auth.*} placeholders of the key
	key    string
	warned atomic.Bool
}

// newAuthWarn returns the check for a key, or nil when the key uses no
// {http.auth.*} placeholder.
func newAuthWarn(key string) *authWarn {
	var names []string
	for rest := key; ; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			break
		}
		if name := rest[i+1 : i+j]; strings.HasPrefix(name, "http.auth.") {
			names = append(names, name)
		}
		rest = rest[i+j+1:]
	}
	if len(names) == 0 {
		return nil
	}
	return &authWarn{names: names, key: key}
}

// check logs the error once when a placeholder of the key is not set.
func (a *authWarn) check(repl *caddy.Replacer, h *Handler) {
	if a == nil || a.warned.Load() {
		return
	}
	for _, name := range a.names {
		if _, known := repl.Get(name); known {
			continue
		}
		if a.warned.CompareAndSwap(false, true) {
			h.logger.Error("throttle key uses {http.auth.*} placeholders that are empty here: the authentication "+
				"directive has not run yet (throttle is ordered before basic_auth, jwt_auth and api_key). "+
				"Fix: put them in a `route` block with throttle after the auth directive, e.g. "+
				"route { api_key { ... } throttle { key {http.auth.user.id} ... } reverse_proxy ... } (logged once)",
				zap.String("zone", h.zoneName), zap.String("key", a.key), zap.String("placeholder", name))
		}
		return
	}
}
