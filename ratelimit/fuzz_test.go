package ratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A rate parses to a valid rate or an error; a valid rate prints and parses
// back to itself, and its GCRA terms never admit more than the rate nor
// overflow.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"10/1s", "1000/1h", "5/m", "1/876000h", "0/1s", "10/xyz", "10/-1s", "10", "1/1ns", "3/1.5s", "9223372036854775807/1h", "1/9223372036854775807ns"} {
		f.Add(s, 0)
	}
	f.Add("10/1s", 20)
	f.Fuzz(func(t *testing.T, s string, burst int) {
		r, err := parseRate(s)
		if err != nil {
			return
		}
		if r.Events < 1 || r.Period <= 0 {
			t.Fatalf("parseRate(%q) = %+v without an error", s, r)
		}
		again, err := parseRate(strconv.Itoa(r.Events) + "/" + strconv.FormatInt(int64(r.Period), 10) + "ns")
		if err != nil || again != r {
			t.Fatalf("%q: %+v does not round-trip: %+v, %v", s, r, again, err)
		}
		r.Burst = burst
		if checkRate(r) != nil {
			return
		}
		l := compile(r)
		if l.interval < 1 || l.tolerance/int64(r.Burst) != l.interval || l.tolerance > maxTolerance {
			t.Fatalf("%+v compiles to %+v", r, l)
		}
		// Rounding never admits more than Events per Period.
		if l.interval*int64(r.Events) < int64(r.Period) {
			t.Fatalf("%+v: interval %d admits more than the rate", r, l.interval)
		}
	})
}

// An exempt entry parses to a masked prefix without zone or IPv4 mapping
// that prints and parses back to itself, or an error.
func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "::1", "127.0.0.1/8", "fd00::/8", "2001:db8::1", "::ffff:10.0.0.0/104", "10.0.0.0/33", "nope", "fe80::1%eth0", "1.2.3.4/0", "::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parsePrefix(s)
		if err != nil {
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("parsePrefix(%q) = %v", s, p)
		}
		again, err := parsePrefix(p.String())
		if err != nil || again != p {
			t.Fatalf("%q: %v does not round-trip: %v, %v", s, p, again, err)
		}
		list, err := parseExempt([]string{s})
		if err != nil || len(list) != 1 || list[0] != p {
			t.Fatalf("parseExempt(%q) = %v, %v; want [%v]", s, list, err, p)
		}
	})
}

// The key builder: an empty key counts by client IP; an address by its
// masked prefix, in a namespace of its own; any other text as itself. A
// configured key never lands on the state of a client IP, and distinct
// configured keys never share a text.
func FuzzKey(f *testing.F) {
	for _, s := range []string{"", "alpha", "192.0.2.50", "::ffff:192.0.2.50", "2001:db8::1", "c:192.0.2.0/24", "fe80::1%eth0", "10.0.0.1/8"} {
		f.Add(s, []byte{192, 0, 2, 50}, uint8(24), uint8(64))
	}
	f.Add("x", []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(32), uint8(128))
	f.Fuzz(func(t *testing.T, s string, client []byte, v4, v6 uint8) {
		ip, ok := netip.AddrFromSlice(client)
		if !ok {
			return
		}
		ip = ip.Unmap()
		h := &Handler{Key: "{http.request.header.X-Key}", v4bits: int(v4 % 33), v6bits: int(v6 % 129)}
		h.warned = new(atomic.Bool)
		h.logger = zap.NewNop()
		k := h.keyOf(s, ip)
		client0 := h.mask(kindClient, ip)
		switch {
		case s == "":
			if k != client0 {
				t.Fatalf("empty key: %+v, want the client key %+v", k, client0)
			}
			return
		case k.kind == kindAddr:
			a, err := netip.ParseAddr(s)
			if err != nil {
				t.Fatalf("%q is not an address but gave %+v", s, k)
			}
			a = a.Unmap().WithZone("")
			want := int(v4 % 33)
			if a.Is6() {
				want = int(v6 % 129)
			}
			p, _ := a.Prefix(want)
			if k.bits != want || k.addr != p.Addr() {
				t.Fatalf("%q: %+v, want %v", s, k, p)
			}
		case k.kind == kindText:
			if k.text != s {
				t.Fatalf("%q: text key %q", s, k.text)
			}
			if _, err := netip.ParseAddr(s); err == nil {
				t.Fatalf("address %q kept as text", s)
			}
		default:
			t.Fatalf("%q: kind %d", s, k.kind)
		}
		kt, ct := k.appendText(nil), client0.appendText(nil)
		if bytes.Equal(kt, ct) {
			t.Fatalf("key %q and client %v share the text %q", s, ip, kt)
		}
		s2 := s + "\x00"
		if k2 := h.keyOf(s2, ip); k2.kind == kindText && bytes.Equal(k2.appendText(nil), kt) {
			t.Fatalf("keys %q and %q share the text %q", s, s2, kt)
		}
		m := newMemStore(minPerShard, 1, func() int64 { return 0 })
		if m.hash(k) == m.hash(client0) {
			t.Fatalf("key %q hashes like client %v", s, ip)
		}
	})
}

// Any token stream given to the throttle parser gives an error or a config,
// never a panic; a config the parser accepts provisions, and survives a JSON
// round trip unchanged.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, s := range []string{
		"throttle {\nrate 10/1s burst 20\nrate 1000/1h\nrate 5/m\nkey {http.request.header.X-API-Key}\nzone api\nipv4_prefix 24\nipv6_prefix 48\nexempt 10.0.0.0/8 ::1\nexempt private_ranges\nmax_keys 5000\ndry_run\nheaders legacy\n}",
		"throttle",
		"throttle {\n}",
		"throttle foo {\nrate 1/1s\n}",
		"throttle {\nrate 1/1s\nbogus 1\n}",
		"throttle {\nrate 1/876000h burst 2\n}",
		"throttle {\nrate 1/1s burst 0\n}",
		"throttle {\nrate 1/1s\nipv6_prefix -1\n}",
		"throttle {\nrate 1/1s\nexempt 10.0.0.0/33\n}",
		"throttle {\nrate 1/1s\nzone \"\"\n}",
		"throttle {\nrate 1/1s\nzone a\nzone b\n}",
		"throttle {\nrate 1/1s\nmax_keys 0\n}",
		"throttle {\nrate 1/1s\n{\n}\n}",
		"throttle {\nrate 1/1s\n}\n}",
		"throttle {\nconcurrent 3\n}",
		"throttle {\nconcurrent 0\n}",
		"throttle {\nrate 10/1s burst 5\nconcurrent 2\ncost 5\n}",
		"throttle {\nrate 10/1s burst 5\ncost 6\n}",
		"throttle {\nrate 10/1s\ncost {http.request.header.X-Cost}\n}",
		"throttle {\nconcurrent 1\ncost 1\n}",
		"throttle {\nrate 100/1m\ncost_header X-Tokens-Used\n}",
		"throttle {\nrate 100/1m\ncost_header \"\"\n}",
		"throttle {\nconcurrent 2\nredis redis://127.0.0.1:1 {\nlease 45s\n}\n}",
		"throttle {\nconcurrent 2\nredis redis://127.0.0.1:1 {\nlease 1ms\n}\n}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens(input))); err != nil {
			return
		}
		b, err := json.Marshal(&h)
		if err != nil {
			t.Fatal(err)
		}
		var back Handler
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%s does not decode: %v", b, err)
		}
		if !reflect.DeepEqual(back, h) {
			t.Fatalf("JSON round trip changed %+v into %+v", h, back)
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		if err := back.Provision(ctx); err != nil {
			if back.Redis != nil && slices.ContainsFunc(back.Redis.URLs, func(u string) bool { return strings.Contains(u, "{") }) {
				return // placeholders in URLs are resolved, and checked, at load
			}
			t.Fatalf("accepted by the parser, refused at provision: %v\n%s", err, input)
		}
		if err := back.Cleanup(); err != nil {
			t.Fatal(err)
		}
	})
}

// tokens turns input into a token stream without the lexer, so any stream
// can be built: one line per line, tokens separated by spaces, `""` for an
// empty token.
func tokens(input string) []caddyfile.Token {
	var out []caddyfile.Token
	for i, line := range strings.Split(input, "\n") {
		for w := range strings.FieldsSeq(line) {
			if w == `""` {
				w = ""
			}
			out = append(out, caddyfile.Token{File: "Caddyfile", Line: i + 1, Text: w})
		}
	}
	return out
}

// A cost or a reported cost, whatever its text, is a whole number from 1 to
// the smallest burst (cost) or of at least 0 (cost_header), or refused:
// never a panic, never a negative or out-of-range value.
func FuzzCost(f *testing.F) {
	for _, s := range []string{"1", "10", "0", "-1", "+1", " 3 ", "1e3", "0x10", "99999999999999999999", "", "３", "1_000"} {
		f.Add(s)
	}
	h := &Handler{Cost: "{http.request.header.X-Cost}", CostHeader: "X-Used", Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Second), Burst: 10}}}
	h.provisionCost()
	f.Fuzz(func(t *testing.T, s string) {
		if n, ok := wholeNumber(s); ok && n < 0 {
			t.Fatalf("wholeNumber(%q) = %d", s, n)
		}
		r := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "http://example.com/", nil)
		r.Header["X-Cost"] = []string{s}
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddyhttp.NewTestReplacer(r)))
		if n, ok := h.costOf(r); ok && (n < 1 || n > 10) {
			t.Fatalf("cost %q gives %d", s, n)
		}
		hdr := http.Header{"X-Used": {s}}
		if n, ok := h.reportedCost(hdr); ok && n < 0 {
			t.Fatalf("reported %q gives %d", s, n)
		}
	})
}
