package caddygateway

import "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

// The position of each gateway directive in Caddy's handler chain. They are
// registered here, in one place, so the order of the whole gateway stack
// reads at a glance:
//
//	throttle        before basic_auth    (refuse floods before spending CPU on auth)
//	jwt_auth        after  basic_auth
//	aggregate       before reverse_proxy
//
// A Caddyfile can still override any of them with the `order` global option
// or by wrapping directives in a `route` block.
func init() {
	httpcaddyfile.RegisterDirectiveOrder("throttle", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterDirectiveOrder("jwt_auth", httpcaddyfile.After, "basic_auth")
	httpcaddyfile.RegisterDirectiveOrder("aggregate", httpcaddyfile.Before, "reverse_proxy")
}
