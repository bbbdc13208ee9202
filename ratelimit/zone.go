package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// zones holds the state of every zone in use, keyed by zone: a new config is
// provisioned before the old one is cleaned up, so state outlives reloads.
var zones = caddy.NewUsagePool()

// unnamed counts the unnamed handlers of each config with the same
// fingerprint, so identical unnamed handlers stay private to each other
// while each finds its own state again after a reload.
var unnamed = struct {
	sync.Mutex
	seen map[<-chan struct{}]map[string]int
}{seen: make(map[<-chan struct{}]map[string]int)}

// unnamedKey returns the pool key of an unnamed zone: its handler's
// fingerprint and its rank among identical handlers of the same config.
func unnamedKey(ctx caddy.Context, fingerprint string) string {
	done := ctx.Done()
	unnamed.Lock()
	defer unnamed.Unlock()
	m := unnamed.seen[done]
	if m == nil {
		m = make(map[string]int)
		unnamed.seen[done] = m
		if done != nil {
			context.AfterFunc(ctx, func() {
				unnamed.Lock()
				delete(unnamed.seen, done)
				unnamed.Unlock()
			})
		}
	}
	n := m[fingerprint]
	m[fingerprint] = n + 1
	return "unnamed/" + fingerprint + "/" + strconv.Itoa(n)
}

// parseRate parses "<events>/<duration>", e.g. "10/1s", "1000/1h" or
// "5/m" (a bare unit means one of it).
func parseRate(s string) (Rate, error) {
	ev, per, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want <events>/<duration>, e.g. 10/1s", s)
	}
	n, err := strconv.Atoi(ev)
	if err != nil || n < 1 {
		return Rate{}, fmt.Errorf("rate %q: events must be a whole number of at least 1", s)
	}
	if per != "" && (per[0] < '0' || per[0] > '9') {
		per = "1" + per
	}
	d, err := caddy.ParseDuration(per)
	if err != nil || d <= 0 {
		return Rate{}, fmt.Errorf("rate %q: duration must be positive, e.g. 1s, 1m, 1h", s)
	}
	return Rate{Events: n, Period: caddy.Duration(d)}, nil
}

// maxTolerance bounds burst × period / events (about 146 years), so that
// timestamps never overflow.
const maxTolerance = math.MaxInt64 / 4

// checkRate checks a rate after defaults.
func checkRate(r Rate) error {
	switch {
	case r.Events < 1:
		return fmt.Errorf("events must be at least 1, got %d", r.Events)
	case r.Period <= 0:
		return fmt.Errorf("period must be positive, got %s", time.Duration(r.Period))
	case r.Burst < 1:
		return fmt.Errorf("burst must be at least 1, got %d", r.Burst)
	case interval(r) > maxTolerance/int64(r.Burst):
		return fmt.Errorf("burst × period / events is too long")
	}
	return nil
}

// interval returns the emission interval of r: period / events, rounded up
// so that rounding never admits more than the rate.
func interval(r Rate) int64 {
	p, n := int64(r.Period), int64(r.Events)
	return max((p+n-1)/n, 1)
}

// compile turns a valid rate into GCRA terms.
func compile(r Rate) limit {
	t := interval(r)
	return limit{interval: t, tolerance: t * int64(r.Burst)}
}

// checkPrefix checks a prefix length against the address size.
func checkPrefix(bits, size int) error {
	if bits < 0 || bits > size {
		return fmt.Errorf("prefix length must be between 0 and %d, got %d", size, bits)
	}
	return nil
}

// checkZone checks a zone name: printable ASCII, so it can be sent in
// headers.
func checkZone(z string) error {
	for i := 0; i < len(z); i++ {
		if z[i] < 0x21 || z[i] > 0x7e {
			return fmt.Errorf("zone %q: only printable ASCII without spaces is allowed", z)
		}
	}
	return nil
}

// checkHeaders checks a header mode.
func checkHeaders(mode string) error {
	switch mode {
	case HeadersIETF, HeadersLegacy, HeadersOff:
		return nil
	}
	return fmt.Errorf("unknown headers mode %q: want ietf, legacy or off", mode)
}

// parsePrefix parses a CIDR range or a single address.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR or address %q", s)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, errors.New("zoned addresses are not supported: " + s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
