// Command caddy is Caddy with its standard modules plus every caddy-gateway
// module: the same binary `xcaddy build --with github.com/caddygateway/caddy-gateway`
// produces, buildable with plain `go build ./cmd/caddy`.
package main

import (
	_ "github.com/caddygateway/caddy-gateway"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() {
	caddycmd.Main()
}
