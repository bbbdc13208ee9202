package identity

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
)

// Source is one place a credential (a token, an API key) is read from.
type Source struct {
	Kind   SourceKind
	Name   string // canonical header name, cookie name or query parameter
	Prefix string // header scheme, e.g. "Bearer"; empty: the whole value
}

// SourceKind says where a Source looks.
type SourceKind uint8

// The places a credential is read from.
const (
	FromHeader SourceKind = iota
	FromCookie
	FromQuery
)

// Extraction errors: the request is invalid (400).
var (
	// ErrMany: a credential in more than one place, or twice in one.
	ErrMany = errors.New("credentials in more than one place")
	// ErrEmpty: a header holding the scheme prefix and nothing after it
	// (only when empty values are not taken as absent).
	ErrEmpty = errors.New("empty credential")
)

// Extract returns the credential and the source it came from; "" and nil
// when there is none. A credential present in more than one place (or
// twice in one) is ErrMany (RFC 6750 §2). A header of another scheme is no
// credential. An empty cookie or query value is none; an empty header
// value is none when emptyIsNone, else ErrEmpty.
func Extract(r *http.Request, sources []Source, emptyIsNone bool) (string, *Source, error) {
	var cred string
	var from *Source
	var query url.Values
	for i := range sources {
		s := &sources[i]
		switch s.Kind {
		case FromHeader:
			for _, v := range r.Header[s.Name] {
				t, ok := HeaderCredential(v, s.Prefix)
				if !ok {
					continue
				}
				if t == "" {
					if emptyIsNone {
						continue
					}
					return "", nil, ErrEmpty
				}
				if from != nil {
					return "", nil, ErrMany
				}
				cred, from = t, s
			}
		case FromCookie:
			for _, c := range r.CookiesNamed(s.Name) {
				if c.Value == "" {
					continue
				}
				if from != nil {
					return "", nil, ErrMany
				}
				cred, from = c.Value, s
			}
		case FromQuery:
			if query == nil {
				query = r.URL.Query()
			}
			for _, v := range query[s.Name] {
				if v == "" {
					continue
				}
				if from != nil {
					return "", nil, ErrMany
				}
				cred, from = v, s
			}
		}
	}
	return cred, from, nil
}

// HeaderCredential takes the credential out of a header value: after
// "<prefix> " (prefix case-insensitive) or, without prefix, the whole
// value, spaces trimmed. ok is false for a value of another scheme.
func HeaderCredential(v, prefix string) (string, bool) {
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

// Strip removes the credential's source from the request, and nothing
// else: the other cookies and query parameters go on byte for byte.
func Strip(r *http.Request, s *Source) {
	switch s.Kind {
	case FromHeader:
		r.Header.Del(s.Name)
	case FromCookie:
		values := r.Header["Cookie"]
		kept := values[:0]
		for _, v := range values {
			if v = RemoveCookie(v, s.Name); v != "" {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			r.Header.Del("Cookie")
		} else {
			r.Header["Cookie"] = kept
		}
	case FromQuery:
		r.URL.RawQuery = RemoveQueryParam(r.URL.RawQuery, s.Name)
		r.URL.ForceQuery = false
		if r.RequestURI != "" {
			r.RequestURI = r.URL.RequestURI()
		}
	}
}

// RemoveCookie drops every pair named name from a Cookie header value,
// leaving the other pairs exactly as they were sent (Go's cookie parser
// would drop the values it considers invalid).
func RemoveCookie(header, name string) string {
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

// RemoveQueryParam drops every parameter named name from a raw query,
// leaving the others in their order and encoding. The name is compared
// after unescaping, as url.ParseQuery (which found the credential) does.
func RemoveQueryParam(rawQuery, name string) string {
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

// SourceHeader returns the name of the request header a credential is
// read from that name denotes (in any casing, `_` for `-`; a cookie source
// is read from Cookie), or "". An identity header must not be one: it is
// deleted before the credential is read.
func SourceHeader(sources []Source, name string) string {
	for _, s := range sources {
		switch s.Kind {
		case FromHeader:
			if SameHeaderName(name, s.Name) {
				return s.Name
			}
		case FromCookie:
			if SameHeaderName(name, "Cookie") {
				return "Cookie"
			}
		case FromQuery:
			// in the URL: no header
		}
	}
	return ""
}
