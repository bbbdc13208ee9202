package cors

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// An origin entry of the `origins` list, or the Origin header of a request,
// is a serialised origin: scheme://host[:port]. Scheme and host compare
// case-insensitively and a port equal to the scheme's default is the same
// origin as no port (https://a.example and https://a.example:443 are one
// origin). Browsers send origins lower case and without default ports; the
// normalisation makes hand-written entries and non-browser clients match the
// same way.

// originKey is a normalised origin: lower-case scheme and host (an IPv6
// host keeps its brackets), and the port in decimal, empty when absent or
// the scheme's default.
type originKey struct {
	scheme, host, port string
}

func (k originKey) String() string {
	s := k.scheme + "://" + k.host
	if k.port != "" {
		s += ":" + k.port
	}
	return s
}

// wildcardOrigin is a `scheme://*.domain[:port]` entry: it matches an
// origin of that scheme and port whose host is one or more labels followed
// by "." and domain.
type wildcardOrigin struct {
	scheme string
	suffix string // "." + domain, lower case
	port   string
}

func (w wildcardOrigin) match(k originKey) bool {
	// parseOrigin has checked that every label of k.host is non-empty, so
	// a host longer than the suffix that ends with it has at least one
	// whole label before ".domain".
	return k.scheme == w.scheme && k.port == w.port &&
		len(k.host) > len(w.suffix) && strings.HasSuffix(k.host, w.suffix)
}

func (w wildcardOrigin) String() string {
	s := w.scheme + "://*" + w.suffix
	if w.port != "" {
		s += ":" + w.port
	}
	return s
}

// originMatcher holds the compiled `origins` list.
type originMatcher struct {
	any       bool // `*`
	null      bool // `null` listed literally
	exact     map[originKey]struct{}
	canonical map[string]struct{} // exact entries in browser form, for a lookup without parsing
	wildcards []wildcardOrigin
}

// compileOrigins compiles a list of entries; it fails on the first invalid
// entry, on `*` mixed with other entries, and on an entry listed twice.
func compileOrigins(entries []string) (*originMatcher, error) {
	if len(entries) == 0 {
		return nil, errors.New("at least one origin is required")
	}
	m := &originMatcher{
		exact:     make(map[originKey]struct{}),
		canonical: make(map[string]struct{}),
	}
	seen := make(map[string]string, len(entries))
	for _, e := range entries {
		if e == "*" {
			if len(entries) > 1 {
				return nil, errors.New("origin * allows every origin and cannot be combined with other origins")
			}
			m.any = true
			return m, nil
		}
		norm, err := m.add(e)
		if err != nil {
			return nil, err
		}
		if first, dup := seen[norm]; dup {
			if first == e {
				return nil, fmt.Errorf("origin %q listed twice", e)
			}
			return nil, fmt.Errorf("origins %q and %q are the same origin", first, e)
		}
		seen[norm] = e
	}
	return m, nil
}

// add compiles one entry (not `*`) into m and returns its normalised form.
func (m *originMatcher) add(e string) (string, error) {
	if e == "null" {
		m.null = true
		return e, nil
	}
	if strings.EqualFold(e, "null") {
		return "", fmt.Errorf("origin %q: the opaque origin is written null, in lower case", e)
	}
	if strings.Contains(e, "*") {
		w, err := parseWildcard(e)
		if err != nil {
			return "", err
		}
		m.wildcards = append(m.wildcards, w)
		return w.String(), nil
	}
	k, err := parseOriginEntry(e)
	if err != nil {
		return "", err
	}
	m.exact[k] = struct{}{}
	m.canonical[k.String()] = struct{}{}
	return k.String(), nil
}

// match reports whether the request's Origin header value is allowed.
func (m *originMatcher) match(origin string) bool {
	if m.any {
		return true
	}
	if origin == "null" {
		return m.null
	}
	// browsers send origins in canonical form: a hit needs no parsing
	if _, ok := m.canonical[origin]; ok {
		return true
	}
	k, err := parseOrigin(origin)
	if err != nil {
		return false
	}
	if _, ok := m.exact[k]; ok {
		return true
	}
	for _, w := range m.wildcards {
		if w.match(k) {
			return true
		}
	}
	return false
}

// parseOriginEntry parses a configured exact origin, explaining what is
// wrong with it in terms of the URL parts a user may have pasted.
func parseOriginEntry(e string) (originKey, error) {
	if err := checkEntryShape(e); err != nil {
		return originKey{}, err
	}
	k, err := parseOrigin(e)
	if err != nil {
		return originKey{}, fmt.Errorf("origin %q: %w", e, err)
	}
	return k, nil
}

// parseWildcard parses `scheme://*.domain[:port]`.
func parseWildcard(e string) (wildcardOrigin, error) {
	if err := checkEntryShape(e); err != nil {
		return wildcardOrigin{}, err
	}
	scheme, rest, _ := strings.Cut(e, "://")
	if !strings.HasPrefix(rest, "*.") || strings.Contains(rest[1:], "*") {
		return wildcardOrigin{}, fmt.Errorf("origin %q: a wildcard must be the whole first label, as in https://*.example.com", e)
	}
	// parse the rest as an origin with a stand-in label for the wildcard
	k, err := parseOrigin(scheme + "://x" + rest[1:])
	if err != nil {
		return wildcardOrigin{}, fmt.Errorf("origin %q: %w", e, err)
	}
	domain := strings.TrimPrefix(k.host, "x.")
	if strings.HasPrefix(domain, "[") {
		return wildcardOrigin{}, fmt.Errorf("origin %q: a wildcard needs a domain name, not an IP address", e)
	}
	tld := domain[strings.LastIndexByte(domain, '.')+1:]
	if _, err := netip.ParseAddr(domain); err == nil || strings.Trim(tld, "0123456789") == "" {
		// (no top-level domain is all digits: 0.0.1 is the end of an address)
		return wildcardOrigin{}, fmt.Errorf("origin %q: a wildcard needs a domain name, not an IP address", e)
	}
	if !strings.Contains(domain, ".") && domain != "localhost" {
		return wildcardOrigin{}, fmt.Errorf("origin %q: a wildcard over a top-level domain would allow every site under it", e)
	}
	return wildcardOrigin{scheme: k.scheme, suffix: "." + domain, port: k.port}, nil
}

// checkEntryShape refuses the URL parts an origin never has, naming them.
func checkEntryShape(e string) error {
	scheme, rest, ok := strings.Cut(e, "://")
	if !ok || scheme == "" {
		return fmt.Errorf("origin %q must be scheme://host[:port] (e.g. https://app.example.com), * or null", e)
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail := rest[:i], rest[i:]
		if strings.Contains(authority, "@") {
			return fmt.Errorf("origin %q must not contain userinfo (user@)", e)
		}
		switch {
		case tail == "/":
			return fmt.Errorf("origin %q must not end with a slash: an origin has no path (write %s)", e, strings.TrimSuffix(e, "/"))
		case tail[0] == '/':
			return fmt.Errorf("origin %q must not contain a path", e)
		case tail[0] == '?':
			return fmt.Errorf("origin %q must not contain a query", e)
		default:
			return fmt.Errorf("origin %q must not contain a fragment", e)
		}
	}
	if strings.Contains(rest, "@") {
		return fmt.Errorf("origin %q must not contain userinfo (user@)", e)
	}
	return nil
}

// defaultPort is the port of an origin that names none, per scheme.
func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

// parseOrigin parses a serialised origin, scheme://host[:port], strictly:
// nothing before or after, a host of non-empty DNS labels (ASCII: IDNs in
// their xn-- form) or an IP literal, a port from 1 to 65535 without leading
// zeros. The result is normalised; for an origin already in that form no
// memory is allocated.
func parseOrigin(s string) (originKey, error) {
	i := strings.Index(s, "://")
	if i <= 0 {
		return originKey{}, errors.New("not of the form scheme://host[:port]")
	}
	scheme, rest := s[:i], s[i+3:]
	if !validScheme(scheme) {
		return originKey{}, fmt.Errorf("invalid scheme %q", scheme)
	}
	scheme = strings.ToLower(scheme)

	var host, port string
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return originKey{}, errors.New("unterminated IPv6 address")
		}
		ip, err := netip.ParseAddr(rest[1:end])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return originKey{}, fmt.Errorf("invalid IPv6 address %q", rest[1:end])
		}
		host = rest[:end+1]
		rest = rest[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return originKey{}, errors.New("unexpected text after the host")
			}
			port = rest[1:]
			if port == "" {
				return originKey{}, errors.New("empty port")
			}
		}
		if ip.String() != strings.ToLower(host[1:len(host)-1]) {
			// one spelling per address: [::1], not [0::1]
			host = "[" + ip.String() + "]"
		}
	} else {
		var hasPort bool
		host, port, hasPort = strings.Cut(rest, ":")
		if hasPort && port == "" {
			return originKey{}, errors.New("empty port")
		}
		if err := checkHostname(host); err != nil {
			return originKey{}, err
		}
	}
	host = strings.ToLower(host)
	if port != "" {
		if err := checkPort(port); err != nil {
			return originKey{}, err
		}
		if port == defaultPort(scheme) {
			port = ""
		}
	}
	return originKey{scheme: scheme, host: host, port: port}, nil
}

func validScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// checkHostname accepts DNS names (letters, digits, '-' and '_' in
// non-empty labels of at most 63 bytes, 253 bytes in all) and IPv4
// addresses, which are of that form.
func checkHostname(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if len(h) > 253 {
		return errors.New("host longer than 253 bytes")
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return fmt.Errorf("invalid host %q: empty label", h)
			}
			label = 0
			continue
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c >= 0x80:
			return fmt.Errorf("invalid host %q: write an internationalised name in its xn-- (punycode) form", h)
		default:
			return fmt.Errorf("invalid host %q: unexpected %q", h, rune(c))
		}
		label++
		if label > 63 {
			return fmt.Errorf("invalid host %q: label longer than 63 bytes", h)
		}
	}
	if label == 0 {
		return fmt.Errorf("invalid host %q: empty label", h)
	}
	return nil
}

func checkPort(p string) error {
	if len(p) > 5 || p[0] == '0' || strings.Trim(p, "0123456789") != "" {
		return fmt.Errorf("invalid port %q", p)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n > 65535 {
		return fmt.Errorf("invalid port %q", p)
	}
	return nil
}
