package jwtauth

import (
	"context"
	"net/http"

	"github.com/caddygateway/caddy-gateway/internal/identity"
	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2"
)

// verify checks a token through the verified-token cache: a token verified
// before under the same keys only has its time claims checked again.
func (h *Handler) verify(ctx context.Context, token string) (*grant, error) {
	key := tokenKey(token)
	gen := h.verifier.generation()
	now := h.now()
	if g, ok := h.cache.get(&key, gen, now); ok {
		h.counters.cacheHit.Inc()
		if err := h.verifier.checkTimes(&g.times, now); err != nil {
			return nil, err
		}
		return g, nil
	}
	h.counters.cacheMiss.Inc()
	claims, err := h.verifier.verify(ctx, token)
	if err != nil {
		return nil, err
	}
	g := h.newGrant(claims)
	expires := now.Add(tokenCacheMaxTTL)
	if g.times.hasExp && g.times.exp.Before(expires) {
		expires = g.times.exp
	}
	h.cache.put(&key, g, gen, expires, now)
	return g, nil
}

// grant is what a verified token gives a request under this handler's
// rules. It depends only on the token and the config, so it is computed
// once per token and kept in the verified-token cache; only the time
// claims are checked again per request. A grant is never modified once
// made.
type grant struct {
	claims jwt.MapClaims
	times  tokenTimes

	// refusal, when set, is why this handler refuses the (valid) token:
	// scope or claim rules (403), or a control character in an identity
	// value (401).
	refusal error
	status  int
	code    string

	userID       string
	userIDValue  any      // userID, boxed once for the replacer
	headerValues []string // parallel to Handler.identity; "" is not set
	placeholder  caddy.ReplacerFunc
}

// newGrant applies the authorization rules to verified claims and renders
// the identity values. Every value is computed before any is used, so a
// refusal leaves the request untouched.
func (h *Handler) newGrant(claims jwt.MapClaims) *grant {
	g := &grant{claims: claims, times: timesOf(claims)}
	if err := h.authorize(claims); err != nil {
		g.refusal, g.status, g.code = err, http.StatusForbidden, "insufficient_scope"
		return g
	}
	if v, ok := identity.Lookup(claims, h.UserID); ok {
		g.userID, _ = identity.Text(v)
	}
	refuse := identity.HasControl(g.userID)
	if len(h.identity) > 0 {
		g.headerValues = make([]string, len(h.identity))
		for i, ih := range h.identity {
			if v, ok := identity.Lookup(claims, ih.Path); ok {
				g.headerValues[i], _ = identity.Text(v)
				refuse = refuse || identity.HasControl(g.headerValues[i])
			}
		}
	}
	if refuse {
		return &grant{claims: claims, times: g.times, refusal: errClaimControl, status: http.StatusUnauthorized, code: "invalid_token"}
	}
	g.userIDValue = g.userID
	g.placeholder = identity.Fields(claims).Placeholder
	return g
}

// authorize applies the scope and claim rules to verified claims.
func (h *Handler) authorize(claims jwt.MapClaims) error {
	if len(h.Scopes) > 0 {
		granted := tokenScopes(claims)
		for _, want := range h.Scopes {
			if !contains(granted, want) {
				return errScope
			}
		}
	}
	for path, accepted := range h.Claims {
		v, ok := identity.Lookup(claims, path)
		if !ok {
			return errClaimMismatch
		}
		found := false
		for _, got := range identity.Values(v) {
			if contains(accepted, got) {
				found = true
				break
			}
		}
		if !found {
			return errClaimMismatch
		}
	}
	return nil
}
