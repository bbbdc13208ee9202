package cors

import (
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The directive's place in the handler chain (before throttle) is
// registered by the root package.
func init() {
	httpcaddyfile.RegisterHandlerDirective("cors", parseCaddyfile)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	c := new(Handler)
	if err := c.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return c, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	cors [<matcher>] {
//		origins          <origin...>
//		methods          <method...>
//		headers          <header...>
//		expose           <header...>
//		credentials
//		max_age          <duration>
//		private_network
//	}
//
// `origins` is required; each subdirective may appear once. The parser only
// fills fields; each value is checked where it is written (the same checks
// as Validate), so an error names its line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		sub := d.Val()
		if seen[sub] {
			return d.Errf("duplicate subdirective %q", sub)
		}
		seen[sub] = true

		switch sub {
		case "origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if _, err := compileOrigins(args); err != nil {
				return d.Errf("origins: %v", err)
			}
			if h.Credentials && slices.Contains(args, "*") {
				return d.Err(errCredentialsAnyOrigin.Error())
			}
			h.Origins = args

		case "methods":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if err := checkMethods(args); err != nil {
				return d.Err(err.Error())
			}
			h.Methods = args

		case "headers", "expose":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if err := checkHeaderList(sub, args); err != nil {
				return d.Err(err.Error())
			}
			if sub == "headers" {
				h.Headers = args
			} else {
				if h.Credentials && slices.Contains(args, "*") {
					return d.Err(errCredentialsExposeAll.Error())
				}
				h.Expose = args
			}

		case "credentials":
			if d.NextArg() {
				return d.ArgErr()
			}
			if slices.Contains(h.Origins, "*") {
				return d.Err(errCredentialsAnyOrigin.Error())
			}
			if slices.Contains(h.Expose, "*") {
				return d.Err(errCredentialsExposeAll.Error())
			}
			h.Credentials = true

		case "max_age":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return d.Errf("max_age: %v", err)
			}
			if dur < 0 {
				return d.Errf("max_age: %s is negative", s)
			}
			ma := caddy.Duration(dur)
			h.MaxAge = &ma

		case "private_network":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.PrivateNetwork = true

		default:
			return d.Errf("unrecognized subdirective %q", sub)
		}
	}
	if len(h.Origins) == 0 {
		return d.Err("origins is required")
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
