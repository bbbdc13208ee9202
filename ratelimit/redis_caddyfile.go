package ratelimit

import (
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalRedis parses the redis block of throttle, the dispenser at the
// `redis` token:
//
//	redis <url...> {
//		on_error  local|allow|deny
//		timeout   <duration>
//		prefix    <string>
//		lease     <duration>
//	}
//
// It only fills fields; URLs without placeholders are checked for their
// form (nothing is contacted), placeholders are expanded at load.
func unmarshalRedis(d *caddyfile.Dispenser) (*Redis, error) {
	rc := new(Redis)
	rc.URLs = d.RemainingArgs()
	// Literal arguments are split as at load (an argument may hold several
	// URLs separated by commas), so that what parses here also loads.
	var literal []string
	placeholders := false
	for _, u := range rc.URLs {
		if !utf8.ValidString(u) {
			// JSON would carry it changed: adapt and run must agree
			return nil, d.Errf("redis URL %q is not valid UTF-8", redactURL(u))
		}
		if strings.Contains(u, "{") {
			placeholders = true // expanded at load
			continue
		}
		literal = append(literal, u)
	}
	urls := splitRedisURLs(literal)
	if len(urls) == 0 && !placeholders {
		return nil, d.Errf("redis: at least one URL is required, e.g. redis://localhost:6379")
	}
	for _, u := range urls {
		if err := checkRedisURL(u); err != nil {
			return nil, d.Err(err.Error())
		}
		if _, err := redisOptions([]string{u}); err != nil {
			return nil, d.Err(err.Error())
		}
	}
	if !placeholders && len(urls) > 1 {
		// Several URLs must agree (seed nodes of one Cluster).
		if _, err := redisOptions(urls); err != nil {
			return nil, d.Err(err.Error())
		}
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("redis: duplicate subdirective %q", name)
		}
		seen[name] = true
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		val := d.Val()
		switch name {
		case "on_error":
			if err := checkOnError(val); err != nil {
				return nil, d.Err(err.Error())
			}
			rc.OnError = val
		case "timeout":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return nil, d.Errf("redis: timeout must be a positive duration, e.g. 100ms, got %q", val)
			}
			rc.Timeout = caddy.Duration(dur)
		case "lease":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur < time.Second {
				return nil, d.Errf("redis: lease must be a duration of at least 1s, e.g. 30s, got %q", val)
			}
			rc.Lease = caddy.Duration(dur)
		case "prefix":
			if strings.ContainsAny(val, "{}") {
				return nil, d.Errf("redis: prefix %q must not contain braces (they would move the Cluster hash tag)", val)
			}
			if !utf8.ValidString(val) {
				return nil, d.Errf("redis: prefix %q is not valid UTF-8", val)
			}
			rc.Prefix = val
		default:
			return nil, d.Errf("redis: unrecognized subdirective %q", name)
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return rc, nil
}
