package cors

import (
	"strings"
	"testing"
)

func TestOriginMatching(t *testing.T) {
	for _, tc := range []struct {
		entries []string
		origin  string
		want    bool
	}{
		// exact
		{[]string{"https://app.example.com"}, "https://app.example.com", true},
		{[]string{"https://app.example.com"}, "http://app.example.com", false},
		{[]string{"https://app.example.com"}, "https://app.example.com:8443", false},
		{[]string{"https://app.example.com"}, "https://app.example.co", false},
		{[]string{"https://app.example.com"}, "https://app.example.com.evil.net", false},
		{[]string{"https://app.example.com"}, "https://evilapp.example.com", false},
		{[]string{"https://app.example.com"}, "https://app.example.com/", false},
		{[]string{"https://app.example.com"}, "https://app.example.com.", false},
		{[]string{"https://app.example.com"}, "https://user@app.example.com", false},
		{[]string{"https://app.example.com"}, "https://app.example.com@evil.net", false},
		{[]string{"https://app.example.com"}, "https://evil.net#app.example.com", false},
		{[]string{"https://app.example.com"}, "app.example.com", false},
		{[]string{"https://app.example.com"}, "", false},
		{[]string{"https://app.example.com"}, " https://app.example.com", false},
		{[]string{"https://app.example.com"}, "https://app.example.com ", false},
		// case-insensitive scheme and host, default ports
		{[]string{"https://app.example.com"}, "HTTPS://App.Example.COM", true},
		{[]string{"https://App.Example.com"}, "https://app.example.com", true},
		{[]string{"https://app.example.com"}, "https://app.example.com:443", true},
		{[]string{"https://app.example.com:443"}, "https://app.example.com", true},
		{[]string{"http://app.example.com"}, "http://app.example.com:80", true},
		{[]string{"http://app.example.com"}, "http://app.example.com:443", false},
		{[]string{"https://app.example.com"}, "https://app.example.com:0443", false},
		{[]string{"https://app.example.com"}, "https://app.example.com:+443", false},
		{[]string{"http://localhost:3000"}, "http://localhost:3000", true},
		{[]string{"http://localhost:3000"}, "http://localhost:3001", false},
		{[]string{"http://localhost:3000"}, "http://localhost", false},
		{[]string{"http://127.0.0.1:3000"}, "http://127.0.0.1:3000", true},
		{[]string{"http://[::1]:3000"}, "http://[::1]:3000", true},
		{[]string{"http://[::1]:3000"}, "http://[0:0::1]:3000", true},
		{[]string{"http://[::1]:3000"}, "http://[::2]:3000", false},
		// IDNs compare in their ASCII form only
		{[]string{"https://xn--bcher-kva.example"}, "https://xn--bcher-kva.example", true},
		{[]string{"https://xn--bcher-kva.example"}, "https://bücher.example", false},
		// wildcard: one or more labels, never the bare domain or look-alikes
		{[]string{"https://*.example.com"}, "https://a.example.com", true},
		{[]string{"https://*.example.com"}, "https://a.b.example.com", true},
		{[]string{"https://*.example.com"}, "https://A.EXAMPLE.COM", true},
		{[]string{"https://*.example.com"}, "https://a.example.com:443", true},
		{[]string{"https://*.example.com"}, "https://example.com", false},
		{[]string{"https://*.example.com"}, "https://.example.com", false},
		{[]string{"https://*.example.com"}, "https://a..example.com", false},
		{[]string{"https://*.example.com"}, "https://evil-example.com", false},
		{[]string{"https://*.example.com"}, "https://evilexample.com", false},
		{[]string{"https://*.example.com"}, "https://a.example.com.evil.net", false},
		{[]string{"https://*.example.com"}, "https://example.com.evil.net", false},
		{[]string{"https://*.example.com"}, "http://a.example.com", false},
		{[]string{"https://*.example.com"}, "https://a.example.com:8443", false},
		{[]string{"https://*.example.com"}, "https://a.example.com/", false},
		{[]string{"https://*.example.com"}, "https://evil.net/.example.com", false},
		{[]string{"https://*.example.com"}, "https://evil.net?.example.com", false},
		{[]string{"https://*.example.com"}, "https://evil.net@a.example.com", false},
		{[]string{"https://*.example.com"}, "https://a.example.com@evil.net", false},
		{[]string{"https://*.example.com"}, "https://*.example.com", false},
		{[]string{"https://*.example.com:8443"}, "https://a.example.com:8443", true},
		{[]string{"https://*.example.com:8443"}, "https://a.example.com", false},
		{[]string{"http://*.localhost"}, "http://app.localhost", true},
		// null only when listed
		{[]string{"https://app.example.com"}, "null", false},
		{[]string{"null"}, "null", true},
		{[]string{"null"}, "NULL", false},
		{[]string{"*"}, "null", true},
		// any
		{[]string{"*"}, "https://whatever.example", true},
		// several entries
		{[]string{"https://a.example", "https://*.b.example", "http://localhost:3000"}, "https://x.b.example", true},
		{[]string{"https://a.example", "https://*.b.example", "http://localhost:3000"}, "https://b.example", false},
		{[]string{"https://a.example", "https://*.b.example", "http://localhost:3000"}, "http://localhost:3000", true},
	} {
		m, err := compileOrigins(tc.entries)
		if err != nil {
			t.Fatalf("%v: %v", tc.entries, err)
		}
		if got := m.match(tc.origin); got != tc.want {
			t.Errorf("origins %v, Origin %q: match = %v, want %v", tc.entries, tc.origin, got, tc.want)
		}
	}
}

func TestOriginEntryErrors(t *testing.T) {
	for _, tc := range []struct {
		entries []string
		want    string
	}{
		{[]string{"https://app.example.com/"}, "must not end with a slash"},
		{[]string{"https://app.example.com/app"}, "must not contain a path"},
		{[]string{"https://app.example.com?x=1"}, "must not contain a query"},
		{[]string{"https://app.example.com#top"}, "must not contain a fragment"},
		{[]string{"https://user@app.example.com"}, "must not contain userinfo"},
		{[]string{"https://user:pw@app.example.com/"}, "must not contain userinfo"},
		{[]string{"app.example.com"}, "must be scheme://host[:port]"},
		{[]string{"://app.example.com"}, "must be scheme://host[:port]"},
		{[]string{"1http://app.example.com"}, "invalid scheme"},
		{[]string{"https://"}, "empty host"},
		{[]string{"https://app.example.com:"}, "empty port"},
		{[]string{"https://app.example.com:99999"}, "invalid port"},
		{[]string{"https://app.example.com:0"}, "invalid port"},
		{[]string{"https://app..example.com"}, "empty label"},
		{[]string{"https://app.example.com."}, "empty label"},
		{[]string{"https://bücher.example"}, "xn--"},
		{[]string{"https://[::1"}, "unterminated IPv6"},
		{[]string{"https://[nope]"}, "invalid IPv6"},
		{[]string{"https://*example.com"}, "whole first label"},
		{[]string{"https://a.*.example.com"}, "whole first label"},
		{[]string{"https://*.*.example.com"}, "whole first label"},
		{[]string{"https://*.com"}, "top-level domain"},
		{[]string{"https://*.10.0.0.1"}, "not an IP address"},
		{[]string{"https://*.0.0.1"}, "not an IP address"},
		{[]string{"https://*.example.com/"}, "must not end with a slash"},
		{[]string{"Null"}, "written null"},
		{[]string{"*", "https://a.example"}, "cannot be combined"},
		{[]string{"https://a.example", "https://a.example"}, "listed twice"},
		{[]string{"https://a.example", "HTTPS://A.example:443"}, "are the same origin"},
		{nil, "at least one origin"},
	} {
		_, err := compileOrigins(tc.entries)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.entries, err, tc.want)
		}
	}
}

// The browser form of an allowed origin is matched without allocating.
func TestOriginMatchCanonicalDoesNotAllocate(t *testing.T) {
	m, err := compileOrigins([]string{"https://app.example.com", "https://*.example.net"})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []string{"https://app.example.com", "https://a.example.net", "https://evil.example.org"} {
		if n := testing.AllocsPerRun(100, func() { m.match(o) }); n != 0 {
			t.Errorf("match(%q): %v allocations", o, n)
		}
	}
}

// FuzzOriginMatch checks properties of matching on arbitrary entries and
// origins: a wildcard only matches hosts ending in "."+domain with at least
// one label before it, and the same scheme and port; an exact entry only
// matches an origin equal to it after normalisation; nothing panics.
func FuzzOriginMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"https://*.example.com", "https://a.example.com"},
		{"https://*.example.com", "https://example.com"},
		{"https://*.example.com", "https://evil-example.com"},
		{"https://*.example.com:8443", "https://a.b.example.com:8443"},
		{"https://app.example.com", "HTTPS://APP.EXAMPLE.COM:443"},
		{"http://[::1]:3000", "http://[0::1]:3000"},
		{"null", "null"},
		{"https://a.example", "https://a.example@evil"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, entry, origin string) {
		m, err := compileOrigins([]string{entry})
		if err != nil {
			return
		}
		if !m.match(origin) || m.any { // * matches anything, by design
			return
		}
		if entry == "null" || origin == "null" {
			if entry != origin {
				t.Fatalf("entry %q matched origin %q", entry, origin)
			}
			return
		}
		k, err := parseOrigin(origin)
		if err != nil {
			t.Fatalf("entry %q matched unparsable origin %q: %v", entry, origin, err)
		}
		if strings.ContainsAny(origin[strings.Index(origin, "://")+3:], "/?#@ \t\\") {
			t.Fatalf("entry %q matched origin %q with more than scheme, host and port", entry, origin)
		}
		if len(m.wildcards) == 1 {
			w := m.wildcards[0]
			domain := w.suffix[1:]
			if !strings.HasSuffix(k.host, "."+domain) || k.host == domain ||
				strings.HasPrefix(k.host, ".") || strings.Contains(k.host, "..") {
				t.Fatalf("wildcard %q matched host %q", entry, k.host)
			}
			if k.scheme != w.scheme || k.port != w.port {
				t.Fatalf("wildcard %q matched %q of another scheme or port", entry, origin)
			}
			return
		}
		want, err := parseOriginEntry(entry)
		if err != nil {
			t.Fatalf("compiled entry %q does not parse: %v", entry, err)
		}
		if k != want {
			t.Fatalf("entry %q (%v) matched origin %q (%v)", entry, want, origin, k)
		}
		// the same text but for case and an explicit default port (IPv6
		// literals also have other spellings of one address)
		if !strings.EqualFold(origin, want.String()) &&
			!strings.EqualFold(origin, want.String()+":"+defaultPort(want.scheme)) &&
			!strings.HasPrefix(want.host, "[") {
			t.Fatalf("entry %q matched origin %q that differs beyond case and default port", entry, origin)
		}
	})
}
