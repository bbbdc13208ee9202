// Command demo-token prints an HS256 token for Caddyfile.example, signed
// with $GATEWAY_JWT_SECRET or the example's demo default.
//
//	go run ./cmd/demo-token -sub alice -role admin
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// demoSecret is the default secret of Caddyfile.example. Never use it
// outside the demo.
const demoSecret = "demo-secret-change-me-0123456789abcdef"

func main() {
	sub := flag.String("sub", "alice", "subject (user id)")
	role := flag.String("role", "admin", "role claim")
	ttl := flag.Duration("ttl", time.Hour, "lifetime")
	flag.Parse()

	secret := os.Getenv("GATEWAY_JWT_SECRET")
	if secret == "" {
		secret = demoSecret
	}
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss":  "caddy-gateway-demo",
		"aud":  "demo-api",
		"sub":  *sub,
		"role": *role,
		"iat":  now.Unix(),
		"exp":  now.Add(*ttl).Unix(),
	})
	s, err := tok.SignedString([]byte(secret))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(s)
}
