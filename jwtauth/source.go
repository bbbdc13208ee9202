package jwtauth

import (
	"errors"
	"net/http"

	"github.com/caddygateway/caddy-gateway/internal/identity"
)

var errManyTokens = errors.New("tokens in more than one place")

// tokenSources compiles the from_* lines; without any, the token is read
// from `Authorization: Bearer` only.
func (h *Handler) tokenSources() []identity.Source {
	sources := make([]identity.Source, 0, len(h.FromHeader)+len(h.FromCookie)+len(h.FromQuery))
	for _, s := range h.FromHeader {
		sources = append(sources, identity.Source{Kind: identity.FromHeader, Name: http.CanonicalHeaderKey(s.Name), Prefix: s.Prefix})
	}
	for _, c := range h.FromCookie {
		sources = append(sources, identity.Source{Kind: identity.FromCookie, Name: c})
	}
	for _, q := range h.FromQuery {
		sources = append(sources, identity.Source{Kind: identity.FromQuery, Name: q})
	}
	if len(sources) == 0 {
		sources = []identity.Source{{Kind: identity.FromHeader, Name: "Authorization", Prefix: "Bearer"}}
	}
	return sources
}

// extract returns the token and the source it came from. A token present
// in more than one place (or twice in one), or a header holding the scheme
// and no token, is an invalid request (RFC 6750 §2). A header of another
// scheme is no token.
func (h *Handler) extract(r *http.Request) (string, *identity.Source, error) {
	token, src, err := identity.Extract(r, h.sources, false)
	switch {
	case errors.Is(err, identity.ErrMany):
		return "", nil, errManyTokens
	case errors.Is(err, identity.ErrEmpty):
		return "", nil, errEmptyToken
	}
	return token, src, err
}
