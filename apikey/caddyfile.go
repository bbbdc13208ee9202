package apikey

import (
	"encoding/json"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("api_key", parseCaddyfile)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var handler Handler
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return &handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	api_key [<matcher>] {
//		keys_file    <file>
//		key          <id> <sha256-hex> <identity> [<claim>=<value>...]
//		from_header  <name> [<prefix>]
//		from_query   <name>
//		header       <Header-Name> <field-path>
//		keep_key
//		optional
//		realm        <name>
//	}
//
// A `key` line's claim value is taken as JSON when it parses as JSON
// (numbers, true, {"a":1}, ["x","y"]), else as a string.
//
// The parser only fills fields: it reads no key store and checks no
// digest, so `caddy adapt` works on a machine without the store. The store
// and every entry are checked at provision (`caddy validate`, `caddy run`,
// a reload).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		sub := d.Val()
		args := d.RemainingArgs()
		single := func() error {
			if seen[sub] {
				return d.Errf("%s: duplicate subdirective", sub)
			}
			seen[sub] = true
			return nil
		}
		switch sub {
		case "keys_file", "realm":
			if err := single(); err != nil {
				return err
			}
			if len(args) != 1 {
				return d.ArgErr()
			}
			*map[string]*string{"keys_file": &h.KeysFile, "realm": &h.Realm}[sub] = args[0]
		case "key":
			if len(args) < 3 {
				return d.ArgErr()
			}
			k := Key{ID: args[0], SHA256: args[1], Identity: args[2]}
			for _, c := range args[3:] {
				name, value, ok := strings.Cut(c, "=")
				if !ok || name == "" {
					return d.Errf("key %s: claim %q is not <name>=<value>", k.ID, c)
				}
				if k.Claims == nil {
					k.Claims = map[string]json.RawMessage{}
				}
				if _, dup := k.Claims[name]; dup {
					return d.Errf("key %s: claim %s given twice", k.ID, name)
				}
				k.Claims[name] = claimValue(value)
			}
			h.Keys = append(h.Keys, k)
		case "from_header":
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			src := HeaderSource{Name: args[0]}
			if len(args) == 2 {
				src.Prefix = args[1]
			}
			h.FromHeader = append(h.FromHeader, src)
		case "from_query":
			if len(args) != 1 {
				return d.ArgErr()
			}
			h.FromQuery = append(h.FromQuery, args[0])
		case "header":
			if len(args) != 2 {
				return d.ArgErr()
			}
			if h.Headers == nil {
				h.Headers = map[string]string{}
			}
			if _, dup := h.Headers[args[0]]; dup {
				return d.Errf("header %s: duplicate mapping", args[0])
			}
			h.Headers[args[0]] = args[1]
		case "keep_key", "optional":
			if err := single(); err != nil {
				return err
			}
			if len(args) != 0 {
				return d.ArgErr()
			}
			*map[string]*bool{"keep_key": &h.KeepKey, "optional": &h.Optional}[sub] = true
		default:
			return d.Errf("unrecognized subdirective %q", sub)
		}
	}
	return nil
}

// claimValue is a claim given as text: JSON when it parses as JSON, else
// a string.
func claimValue(text string) json.RawMessage {
	if json.Valid([]byte(text)) {
		return json.RawMessage(text)
	}
	b, _ := json.Marshal(text)
	return b
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
