package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
)

// env is what the scenarios are built from: the loopback upstream, the
// token and its key, and the optional parts of this run.
type env struct {
	dir      string // temporary directory of the run, for key and config files
	upstream string // host:port of the JSON upstreams (/, /fast, /mid, /slow)
	pubFile  string // PEM public key of the RS256 token
	token    string // RS256 token with sub and role claims, valid for an hour

	// redis is host:port of a redis-server started for this run; when
	// empty, redisSkip says why there is none.
	redis       string
	redisSock   string // the same redis-server's Unix socket
	redisSkip   string
	redisServer *redisServer
}

const (
	// origin is the allowed Origin of the cors scenarios.
	origin = "https://app.example"
	// apiKey is the key of the api_key scenarios (made up for this run).
	apiKey = "cgw_load-key-0123456789abcdef0123456789abcdef" //nolint:gosec // a test key, made up for the load run
)

// scenarios is the table of what `make load` measures: one site of the
// caddy under test each. A scenario with `against` is reported as a delta
// over that scenario (its baseline), which must send the very same request
// (checkTable): the delta is then the directive's work alone. To measure a
// new directive, add a line here (and its plain baseline when it needs a
// request header no other baseline carries).
//
// What Caddy itself charges, measured with -pprof -memprofilerate 1
// (Caddy v2.11.9), so that a budget is read against it:
//   - every handler in a route: 1 allocation per request, the closure
//     wrapMiddleware.func1 that chains it (routes.go, built per request);
//   - every request header a directive adds, behind reverse_proxy: 2
//     allocations, the eager encoding of the request into its debug
//     logger (reverseproxy.go:1126 h.logger.With(... LoggableHTTPRequest)):
//     strings.ToLower of the name and the boxed value slice
//     (internal/logmarshalers.go:26 and :31);
//   - a header map that passes 8 fields grows (3 allocations, ~700 B):
//     reverse_proxy's copy of the request is sized to its fields, then
//     gets X-Forwarded-For/-Proto/-Host and Via (reverseproxy.go:940); with
//     this 3-field request, the 2 identity headers make that copy pass 8,
//     which the *_browser rows (13 fields) do not show.
func scenarios(e *env) []*scenario {
	bearer := header("Authorization", "Bearer "+e.token)
	// The header set of a browser's fetch() (13 fields): how many
	// headers a request carries decides where Go's header maps grow (an
	// 8-field map needs 3 more allocations for a 9th field), which
	// reverse_proxy's copy of the request meets with a few fields more.
	browser := header("Authorization", "Bearer "+e.token, "Accept", "application/json, text/plain, */*",
		"Accept-Encoding", "gzip, deflate, br, zstd", "Accept-Language", "en-GB,en;q=0.9",
		"Referer", "https://app.example/dashboard", "Sec-Ch-Ua", `"Chromium";v="140", "Not=A?Brand";v="24"`,
		"Sec-Ch-Ua-Mobile", "?0", "Sec-Ch-Ua-Platform", `"Linux"`, "Sec-Fetch-Dest", "empty",
		"Sec-Fetch-Mode", "cors", "Sec-Fetch-Site", "same-site",
		"User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36")
	withOrigin := header("Authorization", "Bearer "+e.token, "Origin", origin)

	withKey := header("X-Api-Key", apiKey)

	proxy := "reverse_proxy " + e.upstream
	throttle := "throttle {\n\trate 1000000/1s burst 1000000\n}"
	jwtAuth := fmt.Sprintf("jwt_auth {\n\tpublic_key %s\n\theader X-User-Id sub\n\theader X-User-Role role\n}", e.pubFile)
	cors := "cors {\n\torigins " + origin + "\n}"
	keyDigest := sha256.Sum256([]byte(apiKey))
	apiKeyAuth := fmt.Sprintf("api_key {\n\tkey load %s load-consumer plan=gold\n\theader X-Consumer-Id id\n\theader X-Plan plan\n}", hex.EncodeToString(keyDigest[:]))

	concurrent := "throttle {\n\trate 1000000/1s burst 1000000\n\tconcurrent 100000\n}"
	cost := "throttle {\n\trate 1000000/1s burst 1000000\n\tcost 3\n\tcost_header X-Tokens-Used\n}"
	redisThrottle := func(zone, url string) string {
		return fmt.Sprintf("throttle {\n\tzone %s\n\trate 1000000/1s burst 1000000\n\tredis %s {\n\t\ton_error deny\n\t}\n}", zone, url)
	}
	throttleRedis := redisThrottle("load_redis", "redis://"+e.redis)
	throttleRedisUnix := redisThrottle("load_redis_unix", "unix://"+e.redisSock)

	return []*scenario{
		{
			name: "baseline", about: "reverse_proxy alone (same Authorization header as the others)",
			site: site(proxy), header: bearer,
		},
		{
			name: "throttle", about: "throttle (memory) + reverse_proxy",
			site: site(throttle, proxy), header: bearer, against: "baseline", budget: &budget{allocs: 1},
		},
		{
			name: "concurrent", about: "throttle with concurrent (memory: a slot per request) + reverse_proxy",
			site: site(concurrent, proxy), header: bearer, against: "throttle", budget: &budget{allocs: 1},
		},
		{
			name: "cost", about: "throttle with cost 3 and cost_header (read at the end) + reverse_proxy",
			site: site(cost, proxy), header: bearer, against: "throttle", budget: &budget{allocs: 0},
		},
		{
			name: "jwt_auth", about: "jwt_auth RS256 (cached token), 2 identity headers + reverse_proxy",
			site: site(jwtAuth, proxy), header: bearer, against: "baseline", budget: &budget{allocs: 3},
		},
		{
			// jwt_auth's two headers (the same names and values) added by
			// reverse_proxy itself, with no handler of ours: what Caddy's
			// own way of adding them costs, beside jwt_auth's.
			name: "header_up", about: "reverse_proxy adding jwt_auth's 2 identity headers itself (header_up): Caddy's own cost of 2 headers",
			site: site(proxy + " {\n\theader_up X-User-Id load-user\n\theader_up X-User-Role admin\n}"), header: bearer, against: "baseline",
		},
		{
			name: "request_header", about: "Caddy's request_header setting jwt_auth's 2 identity headers (2 handlers) + reverse_proxy",
			site: site("request_header X-User-Id load-user", "request_header X-User-Role admin", proxy), header: bearer, against: "baseline",
		},
		{
			name: "stack", about: "throttle + jwt_auth RS256 + reverse_proxy",
			site: site(throttle, jwtAuth, proxy), header: bearer, against: "baseline", budget: &budget{allocs: 4, bytes: 400},
		},
		{
			name: "plain_browser", about: "reverse_proxy alone, a browser's 13 request headers (baseline of *_browser)",
			site: site(proxy), header: browser,
		},
		{
			name: "jwt_browser", about: "jwt_auth as above, a browser's 13 request headers",
			site: site(jwtAuth, proxy), header: browser, against: "plain_browser",
		},
		{
			name: "stack_browser", about: "stack as above, a browser's 13 request headers",
			site: site(throttle, jwtAuth, proxy), header: browser, against: "plain_browser",
		},
		{
			name: "plain_origin", about: "reverse_proxy alone, with an Origin header (baseline of cors)",
			site: site(proxy), header: withOrigin,
		},
		{
			name: "cors", about: "cors, allowed Origin + reverse_proxy",
			site: site(cors, proxy), header: withOrigin, against: "plain_origin", budget: &budget{allocs: 2},
		},
		{
			name: "plain_apikey", about: "reverse_proxy alone, with an X-Api-Key header (baseline of api_key)",
			site: site(proxy), header: withKey,
		},
		{
			name: "api_key", about: "api_key (X-Api-Key, 2 identity headers, key stripped) + reverse_proxy",
			site: site(apiKeyAuth, proxy), header: withKey, against: "plain_apikey", budget: &budget{allocs: 3},
		},
		{
			name: "slowest", about: "reverse_proxy to aggregate's slowest backend (5ms)",
			site: site("rewrite * /slow", proxy), header: bearer,
		},
		{
			name: "aggregate", about: "aggregate of 3 backends (0, 2, 5ms)",
			site:   site(fmt.Sprintf("aggregate {\n\tbackend fast http://%[1]s/fast\n\tbackend mid http://%[1]s/mid\n\tbackend slow http://%[1]s/slow\n}", e.upstream)),
			header: bearer, against: "slowest",
		},
		{
			name: "aggregate_one", about: "aggregate of 1 backend (0ms) (baseline of aggregate_chain)",
			site:   site(fmt.Sprintf("aggregate {\n\tbackend first http://%s/fast\n}", e.upstream)),
			header: bearer,
		},
		{
			name: "aggregate_chain", about: "aggregate chain of 2 backends (0ms): the second's path takes the first's value",
			site:   site(fmt.Sprintf("aggregate {\n\tbackend first http://%[1]s/fast\n\tbackend second http://%[1]s/fast/{backends.first.ok}\n}", e.upstream)),
			header: bearer, against: "aggregate_one",
		},
		{
			name: "throttle_redis", about: "throttle (Redis zone) + reverse_proxy", skip: e.redisSkip, redis: true, syscalls: true,
			site: site(throttleRedis, proxy), header: bearer, against: "throttle", budget: &budget{allocs: 6, cpu: 10},
		},
		{
			// The same limits over the redis-server's Unix socket: the
			// transport's share of throttle_redis's CPU, loopback TCP
			// against a socket that skips the TCP stack.
			name: "throttle_redis_unix", about: "throttle_redis through the redis-server's Unix socket", skip: e.redisSkip, redis: true, syscalls: true,
			site: site(throttleRedisUnix, proxy), header: bearer, against: "throttle",
		},
		{
			// Caddy's own way of asking another service about every
			// request: one more round trip on loopback, in Caddy's code,
			// beside throttle_redis's one round trip to Redis.
			name: "forward_auth", about: "Caddy's forward_auth to the loopback upstream (one more round trip per request) + reverse_proxy", syscalls: true,
			site: site("forward_auth "+e.upstream+" {\n\turi /fast\n}", proxy), header: bearer, against: "baseline",
		},
	}
}

// site joins directives into a site body.
func site(directives ...string) []string { return directives }

// header builds a request header from name, value pairs.
func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}
