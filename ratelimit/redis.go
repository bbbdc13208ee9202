package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
)

// On-error policies of the redis block.
const (
	OnErrorLocal = "local"
	OnErrorAllow = "allow"
	OnErrorDeny  = "deny"
)

// Redis defaults.
const (
	DefaultRedisTimeout = 100 * time.Millisecond
	DefaultRedisPrefix  = "throttle:"
)

// Redis keeps a zone's state in Redis, so that every Caddy instance naming
// the same Redis and zone enforces one limit.
//
// Keys are `<prefix><zone>{<client>}:<interval µs>x<burst>`, one per rate,
// holding the rate's theoretical arrival time in microseconds of Redis's
// clock, and expiring when the client's bucket is full again. The `{…}` hash
// tag puts all rates of one client in one Cluster slot.
type Redis struct {
	// The Redis to use. One URL names a server
	// (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS), or
	// any node of a Redis Cluster, or Sentinels
	// (`redis://sentinel:26379?addr=sentinel2:26379&master_set=mymaster`);
	// several URLs are seed nodes of one Cluster. Placeholders such as
	// `{env.REDIS_URL}` are expanded at load, and one may expand to several
	// URLs separated by spaces or commas. Required.
	URLs []string `json:"urls,omitempty"`

	// What to do when Redis errs or does not answer within the timeout:
	// `local` (the default: this instance's in-memory limiter takes over,
	// with the same rates), `allow` (let the request through, without
	// rate-limit headers) or `deny` (refuse it with 503 Service
	// Unavailable and `Retry-After: 1`).
	OnError string `json:"on_error,omitempty"`

	// How long one Redis call may take before on_error applies. Default:
	// 100ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Prefix of every Redis key, so that several applications can share a
	// Redis. Not expanded. Default: `throttle:`.
	Prefix string `json:"prefix,omitempty"`
}

// provision sets defaults.
func (rc *Redis) provision() {
	if rc.OnError == "" {
		rc.OnError = OnErrorLocal
	}
	if rc.Timeout == 0 {
		rc.Timeout = caddy.Duration(DefaultRedisTimeout)
	}
	if rc.Prefix == "" {
		rc.Prefix = DefaultRedisPrefix
	}
}

// check checks the block after defaults, without expanding or contacting
// anything. zone is the handler's zone name.
func (rc *Redis) check(zone string) error {
	if len(rc.URLs) == 0 {
		return errors.New("redis: at least one URL is required")
	}
	if err := checkOnError(rc.OnError); err != nil {
		return err
	}
	if rc.Timeout <= 0 {
		return fmt.Errorf("redis: timeout must be positive, got %s", time.Duration(rc.Timeout))
	}
	if strings.ContainsAny(rc.Prefix, "{}") {
		return fmt.Errorf("redis: prefix %q must not contain braces (they would move the Cluster hash tag)", rc.Prefix)
	}
	if strings.ContainsAny(zone, "{}") {
		return fmt.Errorf("redis: zone %q must not contain braces (they would move the Cluster hash tag)", zone)
	}
	return nil
}

// resolve expands the URLs' placeholders and checks them (nothing is
// contacted), returning them and the client options.
func (rc *Redis) resolve(repl *caddy.Replacer) (urls []string, opt rueidis.ClientOption, err error) {
	resolved := make([]string, len(rc.URLs))
	for i, u := range rc.URLs {
		resolved[i] = repl.ReplaceKnown(u, "")
	}
	urls = splitRedisURLs(resolved)
	if len(urls) == 0 {
		return nil, opt, errors.New("redis: at least one URL is required (placeholders expanded to nothing)")
	}
	opt, err = redisOptions(urls)
	return urls, opt, err
}

// checkOnError checks an on_error policy.
func checkOnError(p string) error {
	switch p {
	case OnErrorLocal, OnErrorAllow, OnErrorDeny:
		return nil
	}
	return fmt.Errorf("redis: unknown on_error policy %q: want local, allow or deny", p)
}

// redisZone is the Redis side of one handler: its rates in the script's
// terms, its key names, its client, its refusal cache and its metrics.
type redisZone struct {
	client  *redisClient
	policy  string
	timeout time.Duration
	base    string // prefix + zone, before the {client} hash tag
	limits  []redisLimit
	args    []string // the script's ARGV, the same for every call
	refused *refusalCache
	metrics redisCounters
	logger  *zap.Logger
	zone    string
}

// redisOutcome is what the Redis side decided about one request.
type redisOutcome int

const (
	// redisDecided: Redis (or the refusal cache) decided; out holds the
	// verdicts.
	redisDecided redisOutcome = iota
	// redisFallbackLocal: Redis could not answer; decide in memory.
	redisFallbackLocal
	// redisFallbackAllow: let the request through without headers.
	redisFallbackAllow
	// redisFallbackDeny: refuse the request with 503.
	redisFallbackDeny
)

// redisZoneConfig holds what newRedisZone needs.
type redisZoneConfig struct {
	client  *redisClient
	cfg     *Redis
	zoneID  string // the zone's identity in key names
	zone    string // the zone's name in metrics
	rates   []Rate
	maxKeys int // bounds the refusal cache
	reg     prometheus.Registerer
	logger  *zap.Logger
}

// newRedisZone builds the Redis side of a handler with valid rates.
func newRedisZone(c redisZoneConfig) (*redisZone, error) {
	z := &redisZone{
		client:  c.client,
		policy:  c.cfg.OnError,
		timeout: time.Duration(c.cfg.Timeout),
		base:    c.cfg.Prefix + c.zoneID,
		limits:  make([]redisLimit, len(c.rates)),
		args:    make([]string, 0, 2*len(c.rates)),
		refused: newRefusalCache(c.maxKeys),
		logger:  c.logger,
		zone:    c.zone,
	}
	for i, r := range c.rates {
		z.limits[i] = newRedisLimit(r)
		z.args = append(z.args, z.limits[i].argI, z.limits[i].argTol)
	}
	var err error
	z.metrics, err = newRedisCounters(c.reg, c.zone, z.policy)
	return z, err
}

// keys returns the Redis keys of client id, one per rate, built in one
// allocation.
func (z *redisZone) keys(id string) []string {
	n := 0
	for _, l := range z.limits {
		n += len(z.base) + len(id) + 2 + len(l.suffix)
	}
	b := make([]byte, 0, n)
	for _, l := range z.limits {
		b = append(b, z.base...)
		b = append(b, '{')
		b = append(b, id...)
		b = append(b, '}')
		b = append(b, l.suffix...)
	}
	all := string(b)
	keys := make([]string, len(z.limits))
	off := 0
	for i, l := range z.limits {
		m := len(z.base) + len(id) + 2 + len(l.suffix)
		keys[i] = all[off : off+m]
		off += m
	}
	return keys
}

// take decides about one request of client id. It answers from the refusal
// cache when the client was refused and its wait is not over; otherwise it
// asks Redis, unless Redis is down; when Redis cannot answer it returns the
// fallback outcome of the on_error policy. out has one element per rate.
func (z *redisZone) take(ctx context.Context, id string, out []verdict) (redisOutcome, bool) {
	if z.refused.lookup(id, z.limits, out) {
		z.metrics.localRefusals.Inc()
		return redisDecided, false
	}
	c := z.client.get()
	if c == nil {
		return z.fallback(), false
	}
	allowed, err := z.call(ctx, c, id, out)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			// The client went away: no verdict of Redis's health.
			return z.fallback(), false
		}
		z.metrics.errors.Inc()
		if redisOutage(err) {
			z.client.fail(err)
		}
		if ce := z.logger.Check(zapcore.DebugLevel, "redis call failed"); ce != nil {
			ce.Write(zap.String("zone", z.zone), zap.String("error", redactError(err, z.client.secrets)))
		}
		return z.fallback(), false
	}
	if !allowed {
		z.refused.store(id, z.limits, out)
	}
	return redisDecided, allowed
}

// fallback counts and returns the on_error outcome.
func (z *redisZone) fallback() redisOutcome {
	z.metrics.fallbacks.Inc()
	switch z.policy {
	case OnErrorAllow:
		return redisFallbackAllow
	case OnErrorDeny:
		return redisFallbackDeny
	}
	return redisFallbackLocal
}

// call runs the script for client id within the timeout.
func (z *redisZone) call(ctx context.Context, c rueidis.Client, id string, out []verdict) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, z.timeout)
	defer cancel()
	start := time.Now()
	z.metrics.calls.Inc()
	res := gcraLua.Exec(ctx, c, z.keys(id), z.args)
	z.metrics.duration.Observe(time.Since(start).Seconds())
	arr, err := res.ToArray()
	if err != nil {
		return false, err
	}
	if len(arr) != len(z.limits)+1 {
		return false, fmt.Errorf("throttle script: %d replies, want %d", len(arr), len(z.limits)+1)
	}
	flag, err := arr[0].ToString()
	if err != nil {
		return false, err
	}
	allowed := flag == "1"
	for i, l := range z.limits {
		s, err := arr[i+1].ToString()
		if err != nil {
			return false, err
		}
		usedUS, err := strconv.ParseInt(s, 10, 64)
		if err != nil || usedUS < 0 {
			return false, fmt.Errorf("throttle script: bad reply %q", s)
		}
		out[i] = judge(usedUS*1000, l.limit)
	}
	return allowed, nil
}

// redisOutage tells errors that say Redis cannot serve anyone (a timeout,
// a lost connection, a cluster or auth failure) from errors of one
// request's own (a key holding junk, WRONGTYPE): only the former open the
// circuit.
func redisOutage(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	if !ok {
		return true
	}
	code, _, _ := strings.Cut(re.Error(), " ")
	switch code {
	case "CLUSTERDOWN", "LOADING", "MASTERDOWN", "READONLY", "BUSY", "NOAUTH", "WRONGPASS",
		"NOPERM", "TRYAGAIN", "OOM", "MISCONF", "NOREPLICAS", "NOSCRIPT":
		return true
	}
	return false
}

// refusalCache remembers the clients Redis refused, until their wait is
// over: a client's TAT only grows, so Redis would refuse them again, and a
// flood from one client costs Redis one call per Retry-After. It is bounded
// and sharded; when a shard is full of clients still waiting, new refusals
// are simply not cached.
type refusalCache struct {
	seed   maphash.Seed
	per    int
	shards [refusalShards]refusalShard
}

const refusalShards = 32

type refusalShard struct {
	mu sync.Mutex
	m  map[string]refusal
}

// refusal is one refused client: when Redis answered (on the local
// monotonic clock), until when it waits, and how far each rate's TAT ran
// ahead of that moment.
type refusal struct {
	at, until int64
	used      []int64
}

func newRefusalCache(maxKeys int) *refusalCache {
	c := &refusalCache{seed: maphash.MakeSeed(), per: max(maxKeys/refusalShards, 16)}
	for i := range c.shards {
		c.shards[i].m = make(map[string]refusal)
	}
	return c
}

func (c *refusalCache) shard(id string) *refusalShard {
	return &c.shards[maphash.String(c.seed, id)%refusalShards]
}

// lookup fills out and reports true when id is still refused.
func (c *refusalCache) lookup(id string, limits []redisLimit, out []verdict) bool {
	sh := c.shard(id)
	now := monotonicNow()
	sh.mu.Lock()
	r, ok := sh.m[id]
	if ok && now >= r.until {
		delete(sh.m, id)
		ok = false
	}
	sh.mu.Unlock()
	if !ok || len(r.used) != len(limits) {
		return false
	}
	elapsed := now - r.at
	for i, l := range limits {
		out[i] = judge(r.used[i]-elapsed, l.limit)
	}
	return true
}

// store remembers that id was refused with the verdicts out.
func (c *refusalCache) store(id string, limits []redisLimit, out []verdict) {
	now := monotonicNow()
	r := refusal{at: now, used: make([]int64, len(limits))}
	var wait int64
	for i, l := range limits {
		// Invert judge: used = the time the TAT runs ahead of now.
		if out[i].remaining > 0 {
			r.used[i] = out[i].reset
		} else {
			r.used[i] = out[i].wait + l.tolerance - l.interval
		}
		wait = max(wait, out[i].wait)
	}
	if wait <= 0 {
		return
	}
	r.until = now + wait
	sh := c.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.m) >= c.per {
		for k, e := range sh.m {
			if now >= e.until {
				delete(sh.m, k)
			}
		}
		if len(sh.m) >= c.per {
			return
		}
	}
	sh.m[id] = r
}
