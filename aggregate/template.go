package aggregate

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"

	"github.com/caddyserver/caddy/v2"
)

// urlTemplate is a compiled backend URL template. Placeholders may appear
// only in the path and the query; the scheme and authority are fixed at
// load.
type urlTemplate struct {
	base     string  // scheme://authority, never holds a placeholder
	path     []piece // path pieces; values escaped as one path segment
	query    []piece // query pieces (without '?'); values query-escaped
	shown    string  // the template without userinfo nor query values, for span attributes
	hasQuery bool
	hasDeps  bool // a piece is a {backends.*} placeholder
	size     int  // length of the literal text, to size the builder
	private  bool // a placeholder may carry per-client data (see isPrivateKey)
}

// piece is a literal text or, when key is set, a placeholder; ref is set
// (at Provision) for a {backends.*} placeholder.
type piece struct {
	lit string
	key string
	ref *depRef
}

// A response built with a placeholder is private (Cache-Control: private,
// no-store) unless the placeholder is known to hold the same value for every
// client asking for the same URL: a shared cache keys on the method and URL,
// so values taken from them are safe, as are values independent of the
// request. Everything else (identity, client address, headers, cookies, TLS
// client data, vars, regexp captures, placeholders of other modules) may
// differ between two clients of one URL.
var publicKeys = map[string]bool{
	"http.request.method":      true,
	"http.request.orig_method": true,
	"http.request.scheme":      true,
	"http.request.host":        true,
	"http.request.hostport":    true,
	"http.request.port":        true,
	"http.request.uuid":        true, // random per request, about no one
}

var publicPrefixes = []string{
	"http.request.uri",      // uri, uri.path, uri.path.*, uri.query, uri.query.*, ...
	"http.request.orig_uri", // the same, before rewrites
	"env.",
	"system.",
	"time.",
}

func isPrivateKey(key string) bool {
	if key == "" || publicKeys[key] {
		return false
	}
	for _, p := range publicPrefixes {
		if strings.HasPrefix(key, p) {
			return false
		}
	}
	return true
}

// errBadValue is wrapped by every error expand returns: the request, not the
// configuration, is at fault.
var errBadValue = errors.New("bad placeholder value")

// compileURL parses a backend URL template. It refuses placeholders in the
// scheme, userinfo, host, port and fragment, and any scheme but http and
// https.
func compileURL(raw string) (*urlTemplate, error) {
	before, after, ok := strings.Cut(raw, "://")
	if !ok {
		if strings.ContainsAny(raw, "{}") && strings.IndexAny(raw, "{}") < strings.IndexAny(raw+"/", "/?#") {
			return nil, placeholderErr("scheme")
		}
		return nil, fmt.Errorf("backend URL %q: must be absolute, like http://host:port/path", raw)
	}
	scheme := before
	if strings.ContainsAny(scheme, "{}") {
		return nil, placeholderErr("scheme")
	}
	if s := strings.ToLower(scheme); s != "http" && s != "https" {
		return nil, fmt.Errorf("backend URL %q: scheme must be http or https", raw)
	}
	rest := after

	// The fragment is never sent; a placeholder in it is refused so that
	// nobody believes it does something.
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		if strings.ContainsAny(rest[i+1:], "{}") {
			return nil, placeholderErr("fragment")
		}
		rest = rest[:i]
	}

	authEnd := strings.IndexAny(rest, "/?")
	if authEnd < 0 {
		authEnd = len(rest)
	}
	authority := rest[:authEnd]
	if strings.ContainsAny(authority, "{}") {
		hostport := authority
		if at := strings.LastIndexByte(authority, '@'); at >= 0 {
			if strings.ContainsAny(authority[:at], "{}") {
				return nil, placeholderErr("userinfo")
			}
			hostport = authority[at+1:]
		}
		colon := strings.LastIndexByte(hostport, ':')
		if colon >= 0 && colon > strings.LastIndexByte(hostport, ']') &&
			strings.ContainsAny(hostport[colon+1:], "{}") && !strings.ContainsAny(hostport[:colon], "{}") {
			return nil, placeholderErr("port")
		}
		return nil, placeholderErr("host")
	}
	if authority == "" {
		return nil, fmt.Errorf("backend URL %q: no host", raw)
	}

	t := &urlTemplate{base: scheme + "://" + authority}
	// The template as shown in traces: without userinfo, which may hold a
	// password.
	shown := authority
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		shown = authority[at+1:]
	}
	pathPart, queryPart := rest[authEnd:], ""
	if i := strings.IndexByte(pathPart, '?'); i >= 0 {
		pathPart, queryPart = pathPart[:i], pathPart[i+1:]
		t.hasQuery = true
	}
	// Query values, literal ones included, may be secrets (an API key in
	// the URL): the trace shows the parameter names only.
	t.shown = scheme + "://" + shown + pathPart
	if t.hasQuery {
		t.shown += "?" + queryNames(queryPart)
	}
	var err error
	if t.path, err = splitPlaceholders(pathPart); err != nil {
		return nil, fmt.Errorf("backend URL %q: path: %w", raw, err)
	}
	if t.query, err = splitPlaceholders(queryPart); err != nil {
		return nil, fmt.Errorf("backend URL %q: query: %w", raw, err)
	}
	// Literal text goes on the wire as written: a byte that needs
	// escaping would make Go re-encode the whole path, turning an escaped
	// value's %2F back into a '/'.
	if err := checkLiterals(t.path, false); err != nil {
		return nil, fmt.Errorf("backend URL %q: path: %w", raw, err)
	}
	if err := checkLiterals(t.query, true); err != nil {
		return nil, fmt.Errorf("backend URL %q: query: %w", raw, err)
	}
	t.size = len(t.base) + 1
	var sample strings.Builder
	sample.WriteString(t.base)
	for _, p := range t.path {
		t.size += len(p.lit)
		t.private = t.private || isPrivateKey(p.key) && !isDepKey(p.key)
		t.hasDeps = t.hasDeps || isDepKey(p.key)
		if p.key != "" {
			sample.WriteString("x")
		}
		sample.WriteString(p.lit)
	}
	if t.hasQuery {
		sample.WriteByte('?')
	}
	for _, p := range t.query {
		t.size += len(p.lit)
		t.private = t.private || isPrivateKey(p.key) && !isDepKey(p.key)
		t.hasDeps = t.hasDeps || isDepKey(p.key)
		if p.key != "" {
			sample.WriteString("x")
		}
		sample.WriteString(p.lit)
	}
	// The literal parts must make a valid URL on their own.
	u, err := url.Parse(sample.String())
	if err != nil {
		return nil, fmt.Errorf("backend URL %q: %w", raw, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("backend URL %q: no host", raw)
	}
	return t, nil
}

// queryNames returns the parameter names of a raw query template, joined by
// '&', without their values.
func queryNames(q string) string {
	var sb strings.Builder
	for i, param := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }) {
		if i > 0 {
			sb.WriteByte('&')
		}
		name, _, _ := strings.Cut(param, "=")
		sb.WriteString(name)
	}
	return sb.String()
}

// checkLiterals refuses literal bytes that RFC 3986 does not allow in a path
// (or, with query, a query) unencoded, and '%' not followed by two hex
// digits.
func checkLiterals(pieces []piece, query bool) error {
	for _, p := range pieces {
		s := p.lit
		for i := 0; i < len(s); i++ {
			c := s[i]
			switch {
			case c == '%':
				if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
					return fmt.Errorf("%q is not a valid percent-encoding", s[i:min(i+3, len(s))])
				}
				i += 2
			case unreserved(c), strings.IndexByte("!$&'()*+,;=:@/", c) >= 0, query && c == '?':
			default:
				return fmt.Errorf("character %q must be percent-encoded (%%%02X)", c, c)
			}
		}
	}
	return nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func placeholderErr(where string) error {
	return fmt.Errorf("placeholder in the %s of a backend URL: placeholders are allowed in the path and query only", where)
}

// splitPlaceholders splits s into literal pieces and {placeholder} pieces.
// Braces must be balanced; a literal brace must be written %7B or %7D.
func splitPlaceholders(s string) ([]piece, error) {
	var out []piece
	for len(s) > 0 {
		open := strings.IndexByte(s, '{')
		if cl := strings.IndexByte(s, '}'); cl >= 0 && (open < 0 || cl < open) {
			return nil, errors.New("unbalanced '}' (write %7D for a literal brace)")
		}
		if open < 0 {
			out = append(out, piece{lit: s})
			break
		}
		if open > 0 {
			out = append(out, piece{lit: s[:open]})
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			return nil, errors.New("unclosed '{' (write %7B for a literal brace)")
		}
		key := s[open+1 : open+end]
		if key == "" || strings.ContainsAny(key, "{ ") {
			return nil, fmt.Errorf("malformed placeholder %q", s[open:open+end+1])
		}
		out = append(out, piece{key: key})
		s = s[open+end+1:]
	}
	return out, nil
}

// expand renders the URL for one request. Path values are escaped as one
// path segment and refused when empty, "." or "..", or when they hold a
// control character; query values are query-escaped.
func (t *urlTemplate) expand(repl *caddy.Replacer) (string, error) {
	var sb strings.Builder
	sb.Grow(t.size + 32)
	sb.WriteString(t.base)
	for _, p := range t.path {
		if p.key == "" {
			sb.WriteString(p.lit)
			continue
		}
		v, _ := repl.GetString(p.key)
		if err := checkPathValue(v); err != nil {
			return "", fmt.Errorf("path placeholder {%s}: %w", p.key, err)
		}
		escapeSegment(&sb, v)
	}
	if t.hasQuery {
		sb.WriteByte('?')
		for _, p := range t.query {
			if p.key == "" {
				sb.WriteString(p.lit)
				continue
			}
			v, _ := repl.GetString(p.key)
			sb.WriteString(url.QueryEscape(v))
		}
	}
	return sb.String(), nil
}

// checkPathValue refuses path values that could change which resource the
// path names.
func checkPathValue(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: empty", errBadValue)
	case v == "." || v == "..":
		return fmt.Errorf("%w: dot segment", errBadValue)
	case strings.ContainsFunc(v, unicode.IsControl):
		return fmt.Errorf("%w: control character", errBadValue)
	}
	return nil
}

// escapeSegment writes v percent-encoded so that it stays exactly one path
// segment: every byte but the RFC 3986 unreserved characters
// (A-Z a-z 0-9 - . _ ~) is encoded, including '/', '?', '#', '%' and ';'.
func escapeSegment(sb *strings.Builder, v string) {
	const hex = "0123456789ABCDEF"
	for i := range len(v) {
		c := v[i]
		if unreserved(c) {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(hex[c>>4])
		sb.WriteByte(hex[c&15])
	}
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// headerTemplate is a header value with placeholders expanded per request.
type headerTemplate struct {
	raw     string
	dynamic bool
	private bool
	pieces  []piece // set when the value uses {backends.*}
}

func compileHeader(v string) headerTemplate {
	h := headerTemplate{raw: v, dynamic: strings.ContainsAny(v, "{}")}
	pieces, err := splitPlaceholders(v)
	if err != nil {
		// Braces the splitter does not understand may still hold a
		// placeholder the replacer expands: assume the worst.
		h.private = h.dynamic
		return h
	}
	for _, p := range pieces {
		h.private = h.private || isPrivateKey(p.key) && !isDepKey(p.key)
		if isDepKey(p.key) {
			h.pieces = pieces
		}
	}
	return h
}

// expand renders the header value; a value with a control character other
// than horizontal tab is refused.
func (h headerTemplate) expand(repl *caddy.Replacer) (string, error) {
	if !h.dynamic {
		return h.raw, nil
	}
	v := repl.ReplaceAll(h.raw, "")
	if strings.ContainsFunc(v, badHeaderRune) {
		return "", fmt.Errorf("%w: control character in header value", errBadValue)
	}
	return v, nil
}

// bindDeps points every {backends.*} piece at the backend it names (the
// graph was checked: every name exists).
func bindDeps(pieces []piece, names []string) {
	for i := range pieces {
		if isDepKey(pieces[i].key) {
			d, field, _ := resolveDep(pieces[i].key, names)
			pieces[i].ref = &depRef{dep: d, field: field}
		}
	}
}

// depLookup returns the value of a {backends.*} placeholder for one request.
type depLookup func(*depRef) (string, error)

// prepare expands the request placeholders of a URL template that uses
// {backends.*} values, before any backend is called, with the checks of
// expand; parts holds, per piece (path then query), the escaped value, and
// stays empty for literals and dependency values, which fill adds.
func (t *urlTemplate) prepare(repl *caddy.Replacer) ([]string, error) {
	parts := make([]string, len(t.path)+len(t.query))
	for i, p := range t.path {
		if p.key == "" || p.ref != nil {
			continue
		}
		v, _ := repl.GetString(p.key)
		if err := checkPathValue(v); err != nil {
			return nil, fmt.Errorf("path placeholder {%s}: %w", p.key, err)
		}
		var sb strings.Builder
		escapeSegment(&sb, v)
		parts[i] = sb.String()
	}
	for i, p := range t.query {
		if p.key == "" || p.ref != nil {
			continue
		}
		v, _ := repl.GetString(p.key)
		parts[len(t.path)+i] = url.QueryEscape(v)
	}
	return parts, nil
}

// fill renders the URL from prepared parts and the dependency values. A
// dependency value is escaped for its position like any placeholder; one
// the path rules refuse is an errDependency.
func (t *urlTemplate) fill(parts []string, lookup depLookup) (string, error) {
	var sb strings.Builder
	sb.Grow(t.size + 64)
	sb.WriteString(t.base)
	for i, p := range t.path {
		switch {
		case p.ref != nil:
			v, err := lookup(p.ref)
			if err != nil {
				return "", err
			}
			if err := checkPathValue(v); err != nil {
				return "", fmt.Errorf("%w: {%s}: %w", errDependency, p.key, err)
			}
			escapeSegment(&sb, v)
		case p.key != "":
			sb.WriteString(parts[i])
		default:
			sb.WriteString(p.lit)
		}
	}
	if t.hasQuery {
		sb.WriteByte('?')
		for i, p := range t.query {
			switch {
			case p.ref != nil:
				v, err := lookup(p.ref)
				if err != nil {
					return "", err
				}
				sb.WriteString(url.QueryEscape(v))
			case p.key != "":
				sb.WriteString(parts[len(t.path)+i])
			default:
				sb.WriteString(p.lit)
			}
		}
	}
	return sb.String(), nil
}

// prepare expands the request placeholders of a header value that uses
// {backends.*} values (see urlTemplate.prepare).
func (h headerTemplate) prepare(repl *caddy.Replacer) ([]string, error) {
	parts := make([]string, len(h.pieces))
	for i, p := range h.pieces {
		if p.key != "" && p.ref == nil {
			parts[i], _ = repl.GetString(p.key)
			if strings.ContainsFunc(parts[i], badHeaderRune) {
				return nil, fmt.Errorf("%w: control character in header value", errBadValue)
			}
		}
	}
	return parts, nil
}

// badHeaderRune is a control character other than horizontal tab.
func badHeaderRune(r rune) bool { return r != '\t' && unicode.IsControl(r) }

// fill renders a header value from prepared parts and the dependency
// values; a dependency value with a control character other than horizontal
// tab is an errDependency.
func (h headerTemplate) fill(parts []string, lookup depLookup) (string, error) {
	var sb strings.Builder
	for i, p := range h.pieces {
		switch {
		case p.ref != nil:
			v, err := lookup(p.ref)
			if err != nil {
				return "", err
			}
			if strings.ContainsFunc(v, badHeaderRune) {
				return "", fmt.Errorf("%w: {%s}: control character in header value", errDependency, p.key)
			}
			sb.WriteString(v)
		case p.key != "":
			sb.WriteString(parts[i])
		default:
			sb.WriteString(p.lit)
		}
	}
	return sb.String(), nil
}
