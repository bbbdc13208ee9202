package jwtauth

import (
	"fmt"
	"strings"

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
//	}
//
// Keys given inline or as files are checked here already (weak keys, bad
// files), so that such errors name their line.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	directiveLine := d.Line()
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
		case "secret":
			if err := single(); err != nil {
				return err
			}
			if len(args) != 1 {
				return d.ArgErr()
			}
			h.Secret = args[0]
			if !strings.Contains(h.Secret, "{") {
				if _, err := pinKey([]byte(h.Secret), "", allAlgSet); err != nil {
					return d.Errf("secret: %v", err)
				}
			}
		case "public_key":
			if len(args) != 1 {
				return d.ArgErr()
			}
			if _, err := staticKeys("", args, allAlgSet); err != nil {
				return d.Errf("%v", err)
			}
			h.PublicKeys = append(h.PublicKeys, args[0])
		case "jwks_url", "oidc_issuer":
			if len(args) != 1 {
				return d.ArgErr()
			}
			if err := checkHTTPURL(args[0]); err != nil {
				return d.Errf("%s: %v", sub, err)
			}
			if sub == "jwks_url" {
				h.JWKSURLs = append(h.JWKSURLs, args[0])
			} else {
				h.OIDCIssuers = append(h.OIDCIssuers, args[0])
			}
		case "jwks_file":
			if len(args) != 1 {
				return d.ArgErr()
			}
			if _, _, err := loadJWKSFile(args[0]); err != nil {
				return d.Errf("jwks_file: %v", err)
			}
			h.JWKSFiles = append(h.JWKSFiles, args[0])
		case "algorithms":
			if err := single(); err != nil {
				return err
			}
			if len(args) == 0 {
				return d.ArgErr()
			}
			if _, err := parseAlgSet(args); err != nil {
				return d.Errf("algorithms: %v", err)
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
			if dur < 0 {
				return d.Errf("%s: must not be negative", sub)
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
			if !validHeaderName(args[0]) {
				return d.Errf("from_header: invalid header name %q", args[0])
			}
			src := HeaderSource{Name: args[0]}
			if len(args) == 2 {
				src.Prefix = args[1]
			}
			h.FromHeader = append(h.FromHeader, src)
		case "from_cookie", "from_query":
			if len(args) != 1 {
				return d.ArgErr()
			}
			if sub == "from_cookie" {
				h.FromCookie = append(h.FromCookie, args[0])
			} else {
				h.FromQuery = append(h.FromQuery, args[0])
			}
		case "user_id", "realm":
			if err := single(); err != nil {
				return err
			}
			if len(args) != 1 {
				return d.ArgErr()
			}
			if sub == "user_id" {
				h.UserID = args[0]
			} else {
				h.Realm = args[0]
			}
		case "header":
			if len(args) != 2 {
				return d.ArgErr()
			}
			if !validHeaderName(args[0]) {
				return d.Errf("header: invalid header name %q", args[0])
			}
			if h.Headers == nil {
				h.Headers = map[string]string{}
			}
			for existing := range h.Headers {
				if sameHeaderName(existing, args[0]) {
					return d.Errf("header %s: duplicate mapping", args[0])
				}
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

	if h.Secret == "" && len(h.PublicKeys) == 0 && len(h.JWKSURLs) == 0 && len(h.JWKSFiles) == 0 && len(h.OIDCIssuers) == 0 {
		return fmt.Errorf("jwt_auth: no key: set at least one of secret, public_key, jwks_url, jwks_file, oidc_issuer, at %s:%d", d.File(), directiveLine)
	}
	if len(h.Algorithms) > 0 {
		// Every key must keep at least one of the allowed algorithms.
		allowed, _ := parseAlgSet(h.Algorithms)
		secret := h.Secret
		if strings.Contains(secret, "{") {
			secret = ""
		}
		if _, err := staticKeys(secret, h.PublicKeys, allowed); err != nil {
			return fmt.Errorf("jwt_auth: %w, at %s:%d", err, d.File(), directiveLine)
		}
	}
	if h.Realm != "" && (hasControl(h.Realm) || strings.ContainsAny(h.Realm, "\"\\")) {
		return d.Errf("realm: must not hold quotes, backslashes or control characters")
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
