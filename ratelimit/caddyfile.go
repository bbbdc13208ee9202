package ratelimit

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The directive's place in the handler chain (before basic_auth) is
// registered by the root package.
func init() {
	httpcaddyfile.RegisterHandlerDirective("throttle", parseCaddyfile)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	t := new(Handler)
	if err := t.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	if t.Zone == "" {
		return t, nil
	}
	// Every handler naming a zone must declare the same rates: a Caddyfile
	// is one config, so `caddy adapt` can tell (Provision checks JSON).
	zones, _ := h.State[zonesStateKey].(map[string]zoneSeen)
	if zones == nil {
		zones = make(map[string]zoneSeen)
		h.State[zonesStateKey] = zones
	}
	h.Reset()
	h.Next()
	seen := zoneSeen{rates: withBurst(t.Rate), line: h.Line()}
	prev, ok := zones[t.Zone]
	if !ok {
		zones[t.Zone] = seen
		return t, nil
	}
	if ratesID(compileAll(prev.rates)) != ratesID(compileAll(seen.rates)) {
		return nil, h.Errf("zone %q is declared with different rates (%s here; %s at line %d): every handler naming a zone must declare the same rates",
			t.Zone, formatRates(seen.rates), formatRates(prev.rates), prev.line)
	}
	return t, nil
}

// zonesStateKey keeps, across one Caddyfile adaptation, the rates each zone
// was first declared with.
const zonesStateKey = "throttle.zones"

type zoneSeen struct {
	rates []Rate
	line  int
}

// withBurst returns rates with the default burst filled in.
func withBurst(rates []Rate) []Rate {
	out := make([]Rate, len(rates))
	for i, r := range rates {
		if r.Burst == 0 {
			r.Burst = r.Events
		}
		out[i] = r
	}
	return out
}

// compileAll compiles rates that passed checkRate.
func compileAll(rates []Rate) []limit {
	out := make([]limit, len(rates))
	for i, r := range rates {
		out[i] = compile(r)
	}
	return out
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	throttle [<matcher>] {
//		rate         <events>/<duration> [burst <n>]
//		key          <placeholder-string>
//		zone         <name>
//		ipv4_prefix  <bits>
//		ipv6_prefix  <bits>
//		exempt       <cidr...>
//		max_keys     <n>
//		concurrent   <n>
//		cost         <n|placeholder>
//		cost_header  <Response-Header>
//		dry_run
//		headers      ietf|legacy|off
//	}
//
// `rate` may be given several times (all must pass) and `exempt` several
// times (the ranges add up); every other subdirective at most once.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	costLine := 0
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] && name != "rate" && name != "exempt" {
			return d.Errf("duplicate subdirective %q", name)
		}
		seen[name] = true

		switch name {
		case "rate":
			args := d.RemainingArgs()
			if len(args) != 1 && len(args) != 3 {
				return d.ArgErr()
			}
			r, err := parseRate(args[0])
			if err != nil {
				return d.Err(err.Error())
			}
			if len(args) == 3 {
				if args[1] != "burst" {
					return d.Errf("rate: unexpected %q, want burst <n>", args[1])
				}
				n, err := strconv.Atoi(args[2])
				if err != nil || n < 1 {
					return d.Errf("rate: burst must be a whole number of at least 1, got %q", args[2])
				}
				r.Burst = n
			}
			full := r
			if full.Burst == 0 {
				full.Burst = full.Events
			}
			if err := checkRate(full); err != nil {
				return d.Errf("rate: %v", err)
			}
			h.Rate = append(h.Rate, r)

		case "key":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Key = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if !utf8.ValidString(h.Key) {
				// JSON would carry it changed: adapt and run must agree
				return d.Errf("key %q is not valid UTF-8", h.Key)
			}

		case "zone":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Zone = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if err := checkZone(h.Zone); err != nil {
				return d.Err(err.Error())
			}

		case "ipv4_prefix", "ipv6_prefix":
			if !d.NextArg() {
				return d.ArgErr()
			}
			size := 32
			if name == "ipv6_prefix" {
				size = 128
			}
			bits, err := strconv.Atoi(d.Val())
			if err != nil {
				return d.Errf("%s: %q is not a number", name, d.Val())
			}
			if err := checkPrefix(bits, size); err != nil {
				return d.Errf("%s: %v", name, err)
			}
			if name == "ipv4_prefix" {
				h.IPv4Prefix = &bits
			} else {
				h.IPv6Prefix = &bits
			}
			if d.NextArg() {
				return d.ArgErr()
			}

		case "exempt":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			for _, a := range args {
				if a != "private_ranges" {
					if _, err := parsePrefix(a); err != nil {
						return d.Errf("exempt: %v", err)
					}
				}
			}
			h.Exempt = append(h.Exempt, args...)

		case "max_keys":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("max_keys must be a whole number of at least 1, got %q", d.Val())
			}
			h.MaxKeys = n
			if d.NextArg() {
				return d.ArgErr()
			}

		case "concurrent":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("concurrent must be a whole number of at least 1, got %q", d.Val())
			}
			h.Concurrent = n
			if d.NextArg() {
				return d.ArgErr()
			}

		case "cost":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Cost = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if !strings.Contains(h.Cost, "{") {
				if n, err := strconv.Atoi(h.Cost); err != nil || n < 1 {
					return d.Errf("cost must be a whole number of at least 1 or a placeholder, got %q", h.Cost)
				}
			}
			if !utf8.ValidString(h.Cost) {
				return d.Errf("cost %q is not valid UTF-8", h.Cost)
			}
			costLine = d.Line()

		case "cost_header":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.CostHeader = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if !httpguts.ValidHeaderFieldName(h.CostHeader) {
				return d.Errf("cost_header %q is not a valid header name", h.CostHeader)
			}

		case "dry_run":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.DryRun = true

		case "headers":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if err := checkHeaders(d.Val()); err != nil {
				return d.Err(err.Error())
			}
			h.Headers = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}

		case "redis":
			rc, err := unmarshalRedis(d)
			if err != nil {
				return err
			}
			h.Redis = rc

		default:
			return d.Errf("unrecognized subdirective %q", name)
		}
	}
	if len(h.Rate) == 0 && h.Concurrent == 0 {
		return d.Err("throttle: at least one rate or concurrent is required")
	}
	if (h.Cost != "" || h.CostHeader != "") && len(h.Rate) == 0 {
		return d.Err("throttle: cost and cost_header need at least one rate")
	}
	if h.Cost != "" && !strings.Contains(h.Cost, "{") {
		n, _ := strconv.Atoi(h.Cost)
		smallest := 0
		for _, r := range withBurst(h.Rate) {
			if smallest == 0 || r.Burst < smallest {
				smallest = r.Burst
			}
		}
		if n > smallest {
			return d.Errf("throttle: cost %d (line %d) is more than the smallest burst (%d): such a request could never pass", n, costLine, smallest)
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
