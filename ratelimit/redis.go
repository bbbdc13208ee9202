package ratelimit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
	"go.uber.org/zap"

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
	DefaultRedisLease   = 30 * time.Second
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

	// The lifetime of a concurrency slot (`concurrent`): each slot is a
	// lease in Redis, renewed every third of it while its request runs, so
	// the slots of an instance that crashed come back within it. At least
	// 1s. Default: 30s.
	Lease caddy.Duration `json:"lease,omitempty"`
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
	if rc.Lease == 0 {
		rc.Lease = caddy.Duration(DefaultRedisLease)
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
	if time.Duration(rc.Lease) < time.Second {
		return fmt.Errorf("redis: lease must be at least 1s, got %s", time.Duration(rc.Lease))
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
	args    []string // the script's ARGV for a request of the static cost without a slot
	finArgs []string // the finish script's ARGV after the first two
	refused *refusalCache
	metrics redisCounters
	logger  *zap.Logger
	zone    string
	slots   int64    // concurrent; 0 for none
	leases  leaseSet // the leases this handler's requests hold
	units   int64    // the static cost args carries

	settleWarned atomic.Bool // a failed settlement was logged since the last success
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
	units   int64 // the static cost
	slots   int64 // concurrent
	debt    bool  // cost_header: a key may owe one burst
	maxKeys int   // bounds the refusal cache
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
		refused: newRefusalCache(c.maxKeys),
		logger:  c.logger,
		zone:    c.zone,
		slots:   c.slots,
		units:   max(c.units, 1),
	}
	lease := time.Duration(c.cfg.Lease)
	z.leases.init(lease)
	z.args = append(make([]string, 0, 4+3*len(c.rates)),
		strconv.FormatInt(z.units, 10), "0", strconv.FormatInt(lease.Milliseconds(), 10), "")
	for i, r := range c.rates {
		z.limits[i] = newRedisLimit(r, c.debt)
		z.args = append(z.args, z.limits[i].argI, z.limits[i].argTol, z.limits[i].argCap)
		z.finArgs = append(z.finArgs, z.limits[i].argI, z.limits[i].argCap)
	}
	var err error
	z.metrics, err = newRedisCounters(c.reg, c.zone, z.policy)
	return z, err
}

// maxRedisID is the longest key text used as is in Redis key names.
const maxRedisID = 96

// redisTag returns the text naming client k in Redis keys, which is their
// Cluster hash tag (between the braces): k's text itself when it is at most
// maxRedisID bytes and holds no brace, otherwise "h:" and the SHA-256 of
// the text. So no client text can choose the Cluster slot (a brace would
// move the hash tag), make Redis store long text, or make the network carry
// it. Every key of one client, whatever its use, is named with this tag.
func redisTag(k key) string {
	var buf [maxRedisID]byte
	b := k.appendText(buf[:0])
	if len(b) > maxRedisID || len(b) == 0 || bytes.ContainsAny(b, "{}") {
		sum := sha256.Sum256(b)
		b = hex.AppendEncode(append(buf[:0], 'h', ':'), sum[:])
	}
	return string(b)
}

// keys returns the Redis keys of client id (its redisTag), one per rate.
//
// With concurrent, one more key follows: the client's set of leases,
// `<prefix><zone>{<client>}:c`, in the same Cluster slot.
func (z *redisZone) keys(id string) []string {
	return z.appendKeys(make([]string, 0, len(z.limits)+1), id)
}

// appendKeys appends the keys of client id to dst, all in one allocation.
func (z *redisZone) appendKeys(dst []string, id string) []string {
	n := 0
	for _, l := range z.limits {
		n += len(z.base) + len(id) + 2 + len(l.suffix)
	}
	if z.slots > 0 {
		n += len(z.base) + len(id) + 2 + len(slotsSuffix)
	}
	var b strings.Builder
	b.Grow(n)
	for _, l := range z.limits {
		b.WriteString(z.base)
		b.WriteByte('{')
		b.WriteString(id)
		b.WriteByte('}')
		b.WriteString(l.suffix)
	}
	if z.slots > 0 {
		b.WriteString(z.base)
		b.WriteByte('{')
		b.WriteString(id)
		b.WriteByte('}')
		b.WriteString(slotsSuffix)
	}
	all := b.String()
	off := 0
	for _, l := range z.limits {
		m := len(z.base) + len(id) + 2 + len(l.suffix)
		dst = append(dst, all[off:off+m])
		off += m
	}
	if z.slots > 0 {
		dst = append(dst, all[off:])
	}
	return dst
}

// slotsSuffix names a client's set of leases.
const slotsSuffix = ":c"

// take decides about one request of client id, of cost 1 without a slot
// (see acquire).
func (z *redisZone) take(ctx context.Context, id string, out []verdict) (redisOutcome, bool) {
	res, d := z.acquire(ctx, id, ask{units: 1}, out)
	return res, d.allowed
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

// call runs the script with keys and args within the timeout, and returns
// its flag (1 admitted, 0 refused by a rate, 2 for want of a slot) and the
// slots left. The reply is integers: reading it allocates one array, not a
// string per value.
func (z *redisZone) call(ctx context.Context, c rueidis.Client, keys, args []string, out []verdict) (flag, free int64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, err // the client went away: no call
	}
	// The call's own deadline, not one derived from ctx: no timer and no
	// context per call (see callDeadlines).
	start := time.Now()
	z.metrics.calls.Inc()
	res := gcraLua.Exec(z.client.callContext(), c, keys, args)
	z.metrics.duration.Observe(time.Since(start).Seconds())
	arr, err := res.ToArray()
	if err != nil {
		return 0, 0, err
	}
	if len(arr) != len(z.limits)+2 {
		return 0, 0, fmt.Errorf("throttle script: %d replies, want %d", len(arr), len(z.limits)+2)
	}
	if flag, err = arr[0].AsInt64(); err != nil || flag < 0 || flag > 2 {
		return 0, 0, fmt.Errorf("throttle script: bad flag %s", arr[0].String())
	}
	if free, err = arr[1].AsInt64(); err != nil || free < 0 {
		return 0, 0, fmt.Errorf("throttle script: bad reply %s", arr[1].String())
	}
	units, _ := strconv.ParseInt(args[0], 10, 64)
	for i, l := range z.limits {
		usedUS, err := arr[i+2].AsInt64()
		if err != nil || usedUS < 0 {
			return 0, 0, fmt.Errorf("throttle script: bad reply %s", arr[i+2].String())
		}
		if flag == 1 {
			out[i] = judge(usedUS*1000, l.limit)
		} else {
			out[i] = judgeRefused(usedUS*1000, units, l.limit)
		}
	}
	return flag, free, nil
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

// lookup fills out and reports true when id is still refused for a
// request of units.
func (c *refusalCache) lookup(id string, limits []redisLimit, units int64, out []verdict) bool {
	sh := c.shard(id)
	now := monotonicNow()
	sh.mu.Lock()
	r, ok := sh.m[id]
	if ok && now >= r.until {
		delete(sh.m, id)
		ok = false
	}
	sh.mu.Unlock()
	if !ok || len(r.used) != len(limits) || len(out) < len(limits) {
		return false
	}
	out = out[:len(limits)]
	elapsed := now - r.at
	refused := false
	for i, l := range limits {
		if max(r.used[i]-elapsed, 0)+units*l.interval > l.tolerance {
			refused = true
		}
	}
	if !refused {
		return false // a cheaper request than the one refused may pass
	}
	for i := range out {
		out[i] = judgeRefused(max(r.used[i]-elapsed, 0), units, limits[i].limit)
	}
	return true
}

// refusalSample bounds the entries store looks at for expired ones when
// its shard is full, so that a shard full of waiting clients costs a
// refusal a few entries' work under the lock, not thousands.
const refusalSample = 16

// store remembers that id was refused with the verdicts out. The wait
// never exceeds what the rates could impose (see redisLimit.capUS), even
// if Redis's clock or state said otherwise.
func (c *refusalCache) store(id string, limits []redisLimit, out []verdict) {
	now := monotonicNow()
	r := refusal{at: now, used: make([]int64, len(limits))}
	var wait, bound int64
	for i, l := range limits {
		// Invert judgeRefused: used = the time the TAT runs ahead of now.
		if out[i].remaining > 0 {
			r.used[i] = out[i].reset
		} else {
			r.used[i] = out[i].reset + l.tolerance - l.interval
		}
		r.used[i] = min(r.used[i], l.capUS*1000)
		wait = max(wait, out[i].wait) //nolint:gosec // G602: out has one element per limit
		bound = max(bound, l.capUS*1000)
	}
	wait = min(wait, bound)
	if wait <= 0 {
		return
	}
	r.until = now + wait
	sh := c.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[id]; !ok && len(sh.m) >= c.per {
		seen := 0
		for k, e := range sh.m {
			if now >= e.until {
				delete(sh.m, k)
			}
			if seen++; seen >= refusalSample {
				break
			}
		}
		if len(sh.m) >= c.per {
			return
		}
	}
	sh.m[id] = r
}
