// Package caddygateway turns Caddy v2 into an API gateway.
//
// Importing this package (for example with
// `xcaddy build --with github.com/caddygateway/caddy-gateway`) registers
// every gateway module and Caddyfile directive:
//
//   - http.handlers.jwt_auth (directive jwt_auth): verify a JWT and inject
//     identity headers and {http.auth.user.*} placeholders.
//   - http.handlers.api_key (directive api_key): API keys for machine
//     clients, stored only as SHA-256 digests; the same identity headers and
//     placeholders as jwt_auth.
//   - http.handlers.throttle (directive throttle): per-client rate limiting.
//   - http.handlers.aggregate (directive aggregate): fan out to several
//     backends and merge their JSON.
//   - http.handlers.cors (directive cors): answer cross-origin requests
//     (CORS preflights and headers) at the gateway.
//   - admin.api.gateway: the gateway's live state (throttle zones and
//     clients, JWT key sets, API keys, aggregate backends) on Caddy's admin
//     endpoint under /gateway/.
//
// The directive order is registered in caddyfile.go, so no `order` global
// option is needed.
package caddygateway

import (
	// Each package registers its module(s) and Caddyfile directive in init.
	_ "github.com/caddygateway/caddy-gateway/admin"
	_ "github.com/caddygateway/caddy-gateway/aggregate"
	_ "github.com/caddygateway/caddy-gateway/apikey"
	_ "github.com/caddygateway/caddy-gateway/cors"
	_ "github.com/caddygateway/caddy-gateway/jwtauth"
	_ "github.com/caddygateway/caddy-gateway/ratelimit"
)
