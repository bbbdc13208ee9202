package ratelimit

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// keyKind is the namespace of a key. Keys of different kinds never share
// state, even when they spell the same address: a configured key's text
// can never spend the bucket of the client IP it names.
type keyKind uint8

const (
	// kindClient: the client IP as Caddy determines it, masked to its
	// prefix (the default key, and the fallback of an empty key).
	kindClient keyKind = iota + 1
	// kindAddr: a configured key whose text is an IP address, masked to
	// its prefix.
	kindAddr
	// kindText: any other configured key text.
	kindText
)

// key identifies what a request is counted for.
type key struct {
	kind keyKind
	addr netip.Addr // masked; for kindClient and kindAddr
	bits int        // prefix length addr was masked to
	text string     // for kindText
}

// appendText appends a text form of k that is distinct for distinct keys
// and starts with a byte naming its kind ('c', 'a' or 't'): for stores that
// name state by text (Redis).
func (k key) appendText(b []byte) []byte {
	switch k.kind {
	case kindText:
		b = append(b, 't', ':')
		return append(b, k.text...)
	case kindAddr:
		b = append(b, 'a', ':')
	case kindClient:
		b = append(b, 'c', ':')
	}
	if !k.addr.IsValid() {
		return b
	}
	b = k.addr.AppendTo(b)
	b = append(b, '/')
	return strconv.AppendInt(b, int64(k.bits), 10)
}

// clientIP returns the client IP as Caddy determined it (the client_ip
// var, which honours trusted_proxies), falling back to the peer address.
func clientIP(r *http.Request) netip.Addr {
	if s, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok {
		if a, err := netip.ParseAddr(s); err == nil {
			return a.Unmap().WithZone("")
		}
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().WithZone("")
	}
	return netip.Addr{}
}

// key returns the key of a request from client ip.
func (h *Handler) key(r *http.Request, ip netip.Addr) key {
	if h.keyIsIP {
		return h.mask(kindClient, ip)
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	h.authWarn.check(repl, h)
	if h.keyVar != "" {
		// One placeholder alone: its value, without building a string.
		s, _ := repl.GetString(h.keyVar)
		return h.keyOf(s, ip)
	}
	return h.keyOf(repl.ReplaceAll(h.Key, ""), ip)
}

// singlePlaceholder returns the name of the placeholder key is made of
// alone ("{name}", nothing else), or "".
func singlePlaceholder(key string) string {
	if len(key) < 3 || key[0] != '{' || key[len(key)-1] != '}' {
		return ""
	}
	name := key[1 : len(key)-1]
	if strings.ContainsAny(name, "{}\\") {
		return ""
	}
	return name
}

// mayBeAddr reports whether s could parse as an IP address: it starts like
// one and holds a dot or a colon. It spares the allocation of a failed
// parse for keys that are plainly not addresses.
func mayBeAddr(s string) bool {
	c := s[0]
	start := c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':'
	return start && strings.ContainsAny(s, ".:")
}

// keyOf returns the key of a request whose configured key resolved to s.
func (h *Handler) keyOf(s string, ip netip.Addr) key {
	if s == "" {
		if h.warned.CompareAndSwap(false, true) {
			h.logger.Warn("key resolved to an empty string; counting by client IP instead (logged once)",
				zap.String("zone", h.zoneName), zap.String("key", h.Key))
		}
		return h.mask(kindClient, ip)
	}
	if mayBeAddr(s) {
		if a, err := netip.ParseAddr(s); err == nil {
			return h.mask(kindAddr, a.Unmap().WithZone(""))
		}
	}
	return key{kind: kindText, text: s}
}

// mask groups an address by the configured prefix length.
func (h *Handler) mask(kind keyKind, a netip.Addr) key {
	if !a.IsValid() {
		return key{kind: kind}
	}
	bits := h.v6bits
	if a.Is4() {
		bits = h.v4bits
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return key{kind: kind, addr: a, bits: a.BitLen()}
	}
	return key{kind: kind, addr: p.Addr(), bits: bits}
}
