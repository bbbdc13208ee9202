package aggregate

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	// The directive's position (before reverse_proxy) is registered once, in
	// the root package's caddyfile.go.
	httpcaddyfile.RegisterHandlerDirective("aggregate", parseCaddyfile)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := new(Handler)
	if err := a.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return a, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	aggregate [<matcher>] {
//		backend <name> <url-template> {
//			method    <METHOD>
//			header    <Name> <value>
//			timeout   <duration>
//			required
//			target    <field.path>
//			fallback  <json>
//			breaker   <failures> <cooldown>
//			cache     [<max_entries>]
//		}
//		forward_headers <Name...>
//		timeout     <duration>
//		max_body    <size>
//	}
//
// A backend block is optional. `header` may be repeated (values add up);
// every other subdirective may appear once per block. `fallback` takes the
// rest of the line as JSON; quote it with backticks when it holds spaces or
// is a JSON string: fallback `"n/a"`. A {backends.*} placeholder naming an
// unknown backend, the backend itself, or closing a cycle is an error at
// the line that uses it.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	var uses [][]depUse // per backend, its {backends.*} keys and their lines
	for d.NextBlock(0) {
		sub := d.Val()
		if sub != "backend" && sub != "forward_headers" {
			if seen[sub] {
				return d.Errf("duplicate subdirective %q", sub)
			}
			seen[sub] = true
		}
		switch sub {
		case "backend":
			b, u, err := parseBackend(d)
			if err != nil {
				return err
			}
			uses = append(uses, u)
			for _, other := range h.Backends {
				if other.Name == b.Name {
					return d.Errf("duplicate backend name %q", b.Name)
				}
			}
			h.Backends = append(h.Backends, b)

		case "forward_headers":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.ArgErr()
			}
			for _, name := range names {
				if forbiddenHeaders[http.CanonicalHeaderKey(name)] {
					return d.Errf("forward_headers: %s cannot be forwarded", name)
				}
				for _, have := range h.ForwardHeaders {
					if strings.EqualFold(have, name) {
						return d.Errf("header %q listed twice in forward_headers", name)
					}
				}
				h.ForwardHeaders = append(h.ForwardHeaders, name)
			}

		case "timeout":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return d.Errf("parsing timeout: %v", err)
			}
			if dur <= 0 {
				return d.Errf("timeout must be positive")
			}
			h.Timeout = caddy.Duration(dur)

		case "max_body":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			size, err := humanize.ParseBytes(s)
			if err != nil {
				return d.Errf("parsing max_body %q: %v", s, err)
			}
			if size == 0 || size > maxMaxBody {
				return d.Errf("max_body %s: must be between 1 byte and 64MiB", s)
			}
			h.MaxBody = int64(size)

		default:
			return d.Errf("unrecognized subdirective %q", sub)
		}
	}
	if len(h.Backends) == 0 {
		return d.Err("at least one backend is required")
	}
	return checkGraph(h.Backends, uses)
}

// depUse is one {backends.*} placeholder of a backend and the token of the
// line that holds it.
type depUse struct {
	key string
	tok caddyfile.Token
}

// checkGraph refuses unknown names, self-references and cycles, with the
// line of the placeholder at fault.
func checkGraph(backends []*Backend, uses [][]depUse) error {
	names := make([]string, len(backends))
	keys := make([][]string, len(backends))
	for i, b := range backends {
		names[i] = b.Name
		for _, u := range uses[i] {
			keys[i] = append(keys[i], u.key)
		}
	}
	_, err := dependencies(names, keys)
	var ge *graphError
	if !errors.As(err, &ge) {
		return err
	}
	for _, u := range uses[ge.backend] {
		if u.key == ge.key {
			at := caddyfile.NewDispenser([]caddyfile.Token{u.tok})
			at.Next()
			return at.Err(ge.msg)
		}
	}
	return err
}

// usesOf returns the {backends.*} placeholders of s, at the current line.
func usesOf(d *caddyfile.Dispenser, b *Backend, s string) ([]depUse, error) {
	keys, err := depKeys(s)
	if err != nil {
		return nil, d.Errf("backend %q: %v", b.Name, err)
	}
	out := make([]depUse, len(keys))
	for i, k := range keys {
		out[i] = depUse{key: k, tok: d.Token()}
	}
	return out, nil
}

// parseBackend parses `backend <name> <url-template> [{ ... }]` and returns
// the backend with its {backends.*} placeholders.
func parseBackend(d *caddyfile.Dispenser) (*Backend, []depUse, error) {
	b := new(Backend)
	if !d.AllArgs(&b.Name, &b.URL) {
		return nil, nil, d.ArgErr()
	}
	if !validName(b.Name) {
		return nil, nil, d.Errf("backend %q: the name must be UTF-8 text without control characters", b.Name)
	}
	if _, err := compileURL(b.URL); err != nil {
		return nil, nil, d.Errf("backend %q: %v", b.Name, err)
	}
	uses, err := usesOf(d, b, b.URL)
	if err != nil {
		return nil, nil, err
	}
	seen := make(map[string]bool)
	var cacheTok caddyfile.Token
	for d.NextBlock(1) {
		sub := d.Val()
		if sub != "header" {
			if seen[sub] {
				return nil, nil, d.Errf("backend %q: duplicate subdirective %q", b.Name, sub)
			}
			seen[sub] = true
		}
		switch sub {
		case "method":
			if !d.AllArgs(&b.Method) {
				return nil, nil, d.ArgErr()
			}
			b.Method = strings.ToUpper(b.Method)
			if !validMethod(b.Method) {
				return nil, nil, d.Errf("backend %q: invalid method %q", b.Name, b.Method)
			}

		case "header":
			var name, value string
			if !d.AllArgs(&name, &value) {
				return nil, nil, d.ArgErr()
			}
			if forbiddenHeaders[http.CanonicalHeaderKey(name)] {
				return nil, nil, d.Errf("backend %q: header %s cannot be set", b.Name, name)
			}
			u, err := usesOf(d, b, value)
			if err != nil {
				return nil, nil, err
			}
			uses = append(uses, u...)
			if b.Header == nil {
				b.Header = make(map[string][]string)
			}
			b.Header.Add(name, value)

		case "timeout":
			var s string
			if !d.AllArgs(&s) {
				return nil, nil, d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return nil, nil, d.Errf("backend %q: parsing timeout: %v", b.Name, err)
			}
			if dur <= 0 {
				return nil, nil, d.Errf("backend %q: timeout must be positive", b.Name)
			}
			b.Timeout = caddy.Duration(dur)

		case "required":
			if d.NextArg() {
				return nil, nil, d.ArgErr()
			}
			b.Required = true

		case "target":
			if !d.AllArgs(&b.Target) {
				return nil, nil, d.ArgErr()
			}
			if slices.Contains(strings.Split(b.Target, "."), "") {
				return nil, nil, d.Errf("backend %q: target %q has an empty segment", b.Name, b.Target)
			}

		case "fallback":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, nil, d.ArgErr()
			}
			raw := strings.Join(args, " ")
			if !json.Valid([]byte(raw)) || !utf8.ValidString(raw) {
				return nil, nil, d.Errf("backend %q: fallback is not valid JSON: %s", b.Name, raw)
			}
			b.Fallback = json.RawMessage(raw)

		case "breaker":
			var n, cooldown string
			if !d.AllArgs(&n, &cooldown) {
				return nil, nil, d.ArgErr()
			}
			failures, err := strconv.Atoi(n)
			if err != nil || failures < 1 {
				return nil, nil, d.Errf("backend %q: breaker: failures %q must be a whole number, at least 1", b.Name, n)
			}
			dur, err := caddy.ParseDuration(cooldown)
			if err != nil {
				return nil, nil, d.Errf("backend %q: breaker: parsing cooldown: %v", b.Name, err)
			}
			if dur <= 0 {
				return nil, nil, d.Errf("backend %q: breaker: cooldown must be positive", b.Name)
			}
			b.Breaker = &BreakerConfig{Failures: failures, Cooldown: caddy.Duration(dur)}

		case "cache":
			args := d.RemainingArgs()
			if len(args) > 1 {
				return nil, nil, d.ArgErr()
			}
			b.Cache = new(CacheConfig)
			cacheTok = d.Token()
			if len(args) == 1 {
				n, err := strconv.Atoi(args[0])
				if err != nil || n < 1 || n > cacheMaxEntriesLimit {
					return nil, nil, d.Errf("backend %q: cache: max_entries %q must be a whole number from 1 to %d", b.Name, args[0], cacheMaxEntriesLimit)
				}
				b.Cache.MaxEntries = n
			}

		default:
			return nil, nil, d.Errf("unrecognized subdirective %q", sub)
		}
	}
	if b.Cache != nil && b.Method != "" && b.Method != http.MethodGet && b.Method != http.MethodHead {
		at := caddyfile.NewDispenser([]caddyfile.Token{cacheTok})
		at.Next()
		return nil, nil, at.Errf("backend %q: cache: only GET and HEAD responses are cached, not %s", b.Name, b.Method)
	}
	return b, uses, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
