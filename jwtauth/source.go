package jwtauth

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
)

// source is one place a token is read from.
type source struct {
	kind   sourceKind
	name   string // canonical header name, cookie name or query parameter
	prefix string // header scheme, e.g. "Bearer"; empty: the whole value
}

type sourceKind uint8

const (
	sourceHeader sourceKind = iota
	sourceCookie
	sourceQuery
)

var errManyTokens = errors.New("tokens in more than one place")

// extract returns the token and the source it came from. A token present in
// more than one place (or twice in one) is an invalid request (RFC 6750
// §2). A header of another scheme is no token.
func (h *Handler) extract(r *http.Request) (string, *source, error) {
	var token string
	var from *source
	found := func(t string, s *source) error {
		if from != nil {
			return errManyTokens
		}
		token, from = t, s
		return nil
	}
	var query url.Values
	for i := range h.sources {
		s := &h.sources[i]
		switch s.kind {
		case sourceHeader:
			for _, v := range r.Header[s.name] {
				t, ok := headerToken(v, s.prefix)
				if !ok {
					continue
				}
				if t == "" {
					return "", nil, errEmptyToken
				}
				if err := found(t, s); err != nil {
					return "", nil, err
				}
			}
		case sourceCookie:
			for _, c := range r.CookiesNamed(s.name) {
				if c.Value == "" {
					continue
				}
				if err := found(c.Value, s); err != nil {
					return "", nil, err
				}
			}
		case sourceQuery:
			if query == nil {
				query = r.URL.Query()
			}
			for _, v := range query[s.name] {
				if v == "" {
					continue
				}
				if err := found(v, s); err != nil {
					return "", nil, err
				}
			}
		}
	}
	return token, from, nil
}

// headerToken takes the token out of a header value: after "<prefix> "
// (prefix case-insensitive) or, without prefix, the whole value.
func headerToken(v, prefix string) (string, bool) {
	if prefix == "" {
		return strings.TrimSpace(v), true
	}
	if len(v) < len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return "", false
	}
	rest := v[len(prefix):]
	if rest == "" {
		return "", true
	}
	if rest[0] != ' ' {
		return "", false
	}
	return strings.TrimLeft(rest, " "), true
}

// stripToken removes the token's source from the request, and nothing
// else: the other cookies and query parameters go on byte for byte.
func stripToken(r *http.Request, s *source) {
	switch s.kind {
	case sourceHeader:
		r.Header.Del(s.name)
	case sourceCookie:
		values := r.Header["Cookie"]
		kept := values[:0]
		for _, v := range values {
			if v = removeCookie(v, s.name); v != "" {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			r.Header.Del("Cookie")
		} else {
			r.Header["Cookie"] = kept
		}
	case sourceQuery:
		r.URL.RawQuery = removeQueryParam(r.URL.RawQuery, s.name)
		r.URL.ForceQuery = false
		if r.RequestURI != "" {
			r.RequestURI = r.URL.RequestURI()
		}
	}
}

// removeCookie drops every pair named name from a Cookie header value,
// leaving the other pairs exactly as they were sent (Go's cookie parser
// would drop the values it considers invalid).
func removeCookie(header, name string) string {
	var b strings.Builder
	wrote := false
	for part := range strings.SplitSeq(header, ";") {
		n, _, _ := strings.Cut(part, "=")
		if strings.TrimSpace(n) == name {
			continue
		}
		if wrote {
			b.WriteByte(';')
		} else {
			part = strings.TrimLeft(part, " ")
		}
		b.WriteString(part)
		wrote = true
	}
	return b.String()
}

// removeQueryParam drops every parameter named name from a raw query,
// leaving the others in their order and encoding. The name is compared
// after unescaping, as url.ParseQuery (which found the token) does.
func removeQueryParam(rawQuery, name string) string {
	var b strings.Builder
	wrote := false
	for part := range strings.SplitSeq(rawQuery, "&") {
		k, _, _ := strings.Cut(part, "=")
		if key, err := url.QueryUnescape(k); err == nil && key == name {
			continue
		}
		if wrote {
			b.WriteByte('&')
		}
		b.WriteString(part)
		wrote = true
	}
	return b.String()
}
