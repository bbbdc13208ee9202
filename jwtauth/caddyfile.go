package jwtauth

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("jwt_auth", parseCaddyfile)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var handler Handler
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return &handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	jwt_auth [<matcher>] {
//		secret       <hmac-secret>
//		public_key   <pem-file>
//		jwks_url     <url>
//		jwks_file    <file>
//		oidc_issuer  <issuer-url>
//		algorithms   <alg...>
//		issuer       <iss...>
//		audience     <aud...>
//		leeway       <duration>
//		max_lifetime <duration>
//		require      <claim...>
//		allow_no_exp
//		type         <typ...>
//		scope        <scope...>
//		claim        <path> <value...>
//		from_header  <name> [<prefix>]
//		from_cookie  <name>
//		from_query   <name>
//		user_id      <claim-path>
//		header       <Header-Name> <claim-path>
//		strip_token
//		optional
//		allow_preflight
//		realm        <name>
//		resource_metadata <url>
//	}
//
// The parser only fills fields: it reads no key or JWKS file and contacts
// nothing, so `caddy adapt` works on a machine without the keys. Files,
// keys, URLs and every other rule are checked at provision (`caddy
// validate`, `caddy run`, a reload).
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
		case "secret", "user_id", "realm", "resource_metadata":
			if err := single(); err != nil {
				return err
			}
			if len(args) != 1 {
				return d.ArgErr()
			}
			*map[string]*string{
				"secret": &h.Secret, "user_id": &h.UserID, "realm": &h.Realm,
				"resource_metadata": &h.ResourceMetadata,
			}[sub] = args[0]
		case "public_key", "jwks_url", "jwks_file", "oidc_issuer", "from_cookie", "from_query":
			if len(args) != 1 {
				return d.ArgErr()
			}
			list := map[string]*[]string{
				"public_key": &h.PublicKeys, "jwks_url": &h.JWKSURLs, "jwks_file": &h.JWKSFiles,
				"oidc_issuer": &h.OIDCIssuers, "from_cookie": &h.FromCookie, "from_query": &h.FromQuery,
			}[sub]
			*list = append(*list, args[0])
		case "algorithms":
			if err := single(); err != nil {
				return err
			}
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Algorithms = args
		case "issuer", "audience", "require", "type", "scope":
			if len(args) == 0 {
				return d.ArgErr()
			}
			list := map[string]*[]string{
				"issuer": &h.Issuers, "audience": &h.Audiences, "require": &h.Require,
				"type": &h.Types, "scope": &h.Scopes,
			}[sub]
			*list = append(*list, args...)
		case "leeway", "max_lifetime":
			if err := single(); err != nil {
				return err
			}
			if len(args) != 1 {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(args[0])
			if err != nil {
				return d.Errf("%s: bad duration %q: %v", sub, args[0], err)
			}
			if sub == "leeway" {
				cd := caddy.Duration(dur)
				h.Leeway = &cd
			} else {
				h.MaxLifetime = caddy.Duration(dur)
			}
		case "claim":
			if len(args) < 2 {
				return d.ArgErr()
			}
			if h.Claims == nil {
				h.Claims = map[string][]string{}
			}
			if _, dup := h.Claims[args[0]]; dup {
				return d.Errf("claim %s: duplicate rule for this path", args[0])
			}
			h.Claims[args[0]] = args[1:]
		case "from_header":
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			src := HeaderSource{Name: args[0]}
			if len(args) == 2 {
				src.Prefix = args[1]
			}
			h.FromHeader = append(h.FromHeader, src)
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
		case "strip_token", "optional", "allow_preflight", "allow_no_exp":
			if err := single(); err != nil {
				return err
			}
			if len(args) != 0 {
				return d.ArgErr()
			}
			*map[string]*bool{
				"strip_token": &h.StripToken, "optional": &h.Optional,
				"allow_preflight": &h.AllowPreflight, "allow_no_exp": &h.AllowNoExp,
			}[sub] = true
		default:
			return d.Errf("unrecognized subdirective %q", sub)
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
