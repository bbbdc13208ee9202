package caddygateway

import "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

// The position of each gateway directive in Caddy's handler chain. They are
// registered here, in one place, so the order of the whole gateway stack
// reads at a glance:
//
//	cors            before throttle      (answer preflights before they are counted or
//	                                      authenticated; CORS headers on the 429 and 401 too)
//	throttle        before basic_auth    (refuse floods before spending CPU on auth)
//	jwt_auth        after  basic_auth
//	api_key         after  jwt_auth      (a route may take either credential)
//	aggregate       before reverse_proxy
//
// A Caddyfile can still override any of them with the `order` global option
// or by wrapping directives in a `route` block.
func init() {
	// Positions are relative to standard directives only, so "cors before
	// throttle" is cors before basic_auth registered first: throttle, placed
	// before basic_auth next, lands between the two.
	httpcaddyfile.RegisterDirectiveOrder("cors", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterDirectiveOrder("throttle", httpcaddyfile.Before, "basic_auth")
	// Likewise "api_key after jwt_auth" is api_key after basic_auth
	// registered first: jwt_auth, placed right after basic_auth next, lands
	// between the two.
	httpcaddyfile.RegisterDirectiveOrder("api_key", httpcaddyfile.After, "basic_auth")
	httpcaddyfile.RegisterDirectiveOrder("jwt_auth", httpcaddyfile.After, "basic_auth")
	httpcaddyfile.RegisterDirectiveOrder("aggregate", httpcaddyfile.Before, "reverse_proxy")
}
