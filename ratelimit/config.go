package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

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

// privateRanges is the `exempt` shorthand for Caddy's private ranges.
const privateRanges = "private_ranges"

// parseExempt resolves the exempt list: CIDR ranges, single addresses and
// the private_ranges shorthand. Caddy's private ranges are parsed as
// leniently as any user entry (a bare address, such as its `::1`, is a
// single-address range).
func parseExempt(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if s == privateRanges {
			for _, c := range caddyhttp.PrivateRangesCIDR() {
				p, err := parsePrefix(c)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", privateRanges, err)
				}
				out = append(out, p)
			}
			continue
		}
		p, err := parsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// ratesID identifies a list of compiled rates: handlers sharing a zone must
// have the same, and a zone's state is only ever read under the rates that
// wrote it.
func ratesID(limits []limit) string {
	var b strings.Builder
	for i, l := range limits {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(l.interval, 10))
		b.WriteByte('+')
		b.WriteString(strconv.FormatInt(l.tolerance, 10))
	}
	return b.String()
}

// formatRates writes rates as a Caddyfile would, for error messages.
func formatRates(rates []Rate) string {
	parts := make([]string, len(rates))
	for i, r := range rates {
		parts[i] = strconv.Itoa(r.Events) + "/" + time.Duration(r.Period).String() + " burst " + strconv.Itoa(r.Burst)
	}
	return strings.Join(parts, ", ")
}
