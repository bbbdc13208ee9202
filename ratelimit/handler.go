// Package ratelimit holds the throttle handler (http.handlers.throttle):
// exact per-client rate limiting with GCRA.
package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults.
const (
	// DefaultMaxKeys is the default bound on the keys a zone keeps in
	// memory. One key with one rate costs about 60 bytes, so a full zone
	// takes about 6 MB.
	DefaultMaxKeys = 100_000

	defaultIPv4Prefix = 32
	defaultIPv6Prefix = 64

	// unnamedZone names the rates of a handler without a zone in headers
	// and metrics.
	unnamedZone = "throttle"
)

// Header modes.
const (
	HeadersIETF   = "ietf"
	HeadersLegacy = "legacy"
	HeadersOff    = "off"
)

// Handler limits the rate of requests per client with GCRA (the generic
// cell rate algorithm: exact token-bucket semantics, one timestamp per key
// and rate). Every `rate` must admit a request for it to pass; a refused
// request consumes nothing from any rate. Decisions are exact under
// concurrency.
//
// A request over the limit is refused with status 429 Too Many Requests
// through the error chain (so `handle_errors` can shape the body), with a
// `Retry-After` header: whole seconds, rounded up, never earlier than the
// time the next request will pass. Requests from exempt addresses pass
// untouched, without headers.
//
// Response headers, on every response the handler passes or refuses, one
// item per rate (the first named after the zone, the others `<zone>-2`,
// `<zone>-3`, ...; a handler without a zone uses `throttle`):
//
//   - `headers ietf` (default, draft-ietf-httpapi-ratelimit-headers):
//     `RateLimit-Policy: "<zone>";q=<burst>;w=<seconds>` where q is the burst
//     and w the seconds needed to refill the whole burst, and
//     `RateLimit: "<zone>";r=<remaining>;t=<seconds>` where r is the number
//     of requests left after this one and t the seconds until the next
//     request would pass (r = 0) or until the bucket is full again (r > 0).
//     Several rates are listed comma-separated in one field.
//   - `headers legacy`: `X-RateLimit-Limit` (q), `X-RateLimit-Remaining`
//     (r) and `X-RateLimit-Reset` (t, in seconds from now) of the most
//     constraining rate (the fewest remaining, then the longest t).
//   - `headers off`: none (Retry-After is still sent on 429).
//
// Seconds are whole and rounded up. The handler sets no placeholders.
//
// With `concurrent`, the limit is one more item, `<zone>-concurrency`, with
// `qu="concurrent-requests"` (draft-11) in RateLimit-Policy and r = the slots
// left in RateLimit. A chain of throttle handlers lists all their items.
//
// Metrics (labelled by zone, never by key): caddy_throttle_allowed_total,
// caddy_throttle_refused_total, caddy_throttle_dry_run_total (requests
// that would have been refused in dry-run mode),
// caddy_throttle_refusals_total{zone,reason} (reason rate or concurrency),
// caddy_throttle_in_progress (requests holding a slot, in this instance)
// and caddy_throttle_settle_failures_total.
//
// With a `redis` block the zone's state lives in Redis (see Redis): while
// Redis is unavailable, `on_error deny` refuses requests with status 503
// Service Unavailable and `Retry-After: 1`, and the caddy_throttle_redis_*
// metrics count calls, errors, fallbacks and local refusals.
type Handler struct {
	// The rates to enforce; at least one. A request passes only when every
	// rate admits it.
	Rate []Rate `json:"rate,omitempty"`

	// The key requests are counted under. Any placeholders, replaced per
	// request, e.g. `{http.request.header.X-API-Key}`. Default: the client
	// IP as Caddy determines it (`{client_ip}`, so the server's
	// `trusted_proxies` are honoured), masked to ipv4_prefix / ipv6_prefix.
	// A key that is itself an IP address is masked the same way. A key that
	// resolves to the empty string falls back to the client IP (a warning
	// is logged once). Configured keys and the client IP never share
	// state, even when a key's text is an address: no client can spend
	// another client's bucket by sending its address as a key.
	Key string `json:"key,omitempty"`

	// The name of the state these rates are counted in. Handlers with the
	// same zone share their counters and must declare the same rates (a
	// config error otherwise). A zone's counters survive config reloads
	// that keep its rates; a reload that changes them starts the zone
	// afresh, so state is never read under other rates. Without a zone, the state is private to this handler (it
	// still survives a reload that leaves this handler unchanged) and is
	// named `throttle` in headers and metrics. Printable ASCII; not
	// expanded.
	Zone string `json:"zone,omitempty"`

	// IPv4 clients are grouped by this prefix length, 0 to 32. Default: 32
	// (one key per address).
	IPv4Prefix *int `json:"ipv4_prefix,omitempty"`

	// IPv6 clients are grouped by this prefix length, 0 to 128. Default: 64
	// (one key per /64, what one subscriber usually gets).
	IPv6Prefix *int `json:"ipv6_prefix,omitempty"`

	// Client addresses that are never limited: CIDR ranges or single
	// addresses, or `private_ranges` (Caddy's private ranges: loopback and
	// private networks). Matched against the client IP as Caddy determines
	// it, never against a configured key's text. Resolved at load.
	Exempt []string `json:"exempt,omitempty"`

	// The maximum number of keys the zone keeps in memory. Idle keys
	// (whose buckets are full again) are dropped first; when there is no
	// idle key, the key closest to idle is evicted, so its client regains
	// at most what it still had to wait for. A new key is never refused for
	// want of room, and a key that spent most of its burst is never evicted
	// while keys closer to idle exist. The bound is split evenly across up
	// to 64 shards, and eviction picks within the new key's shard. Handlers
	// sharing a zone use the value of the most recently loaded one.
	// Default: 100000.
	MaxKeys int `json:"max_keys,omitempty"`

	// At most this many requests of one key in progress at once; one more
	// is refused with 429 and `Retry-After: 1`. A slot is taken when a
	// request passes and given back when its response is finished or its
	// client goes away; an upgraded connection (WebSocket) gives it back
	// once the upgrade is answered. With rates beside it, a request must
	// pass both, and one refused by either takes nothing from the other.
	// In memory the count is per instance; with `redis` it is fleet-wide
	// (each slot a lease, see Redis.Lease). Handlers sharing a zone share
	// the counts; each enforces its own limit. Default: 0 (no limit).
	Concurrent int `json:"concurrent,omitempty"`

	// The units each request takes from every rate at once (all or
	// nothing); the rate-limit headers count units. Either a whole number
	// from 1 up to the smallest burst (more is a config error), or
	// placeholders resolved per request, e.g.
	// `{http.request.header.X-Cost}`: a request whose cost is not a whole
	// number in that range is refused with 400 Bad Request and takes
	// nothing. Needs a rate. Default: 1.
	Cost string `json:"cost,omitempty"`

	// Settle the cost when the response is finished: the whole number in
	// this response header (or trailer), e.g. the tokens an LLM call used,
	// replaces the cost taken up front. The difference is charged or given
	// back on every rate; a charge may leave the key in debt (its next
	// requests wait until it is paid), at most one burst of it: a key's
	// state never runs more than twice the burst ahead. A missing or
	// invalid value (not a whole number of at least 0) leaves the up-front
	// cost standing. With `redis` the settlement is one more script call,
	// after the response. Needs a rate.
	CostHeader string `json:"cost_header,omitempty"`

	// Count requests and send headers, but never refuse one.
	DryRun bool `json:"dry_run,omitempty"`

	// Which rate-limit headers to send: `ietf` (default), `legacy` or
	// `off`.
	Headers string `json:"headers,omitempty"`

	// Keep the zone's state in Redis, shared by every Caddy instance using
	// the same Redis and zone. Default: in memory.
	Redis *Redis `json:"redis,omitempty"`

	limits   []limit
	exempt   []netip.Prefix
	v4bits   int
	v6bits   int
	keyIsIP  bool   // Key is empty or names the client IP
	keyVar   string // the placeholder Key is made of alone, if so
	policy   string
	bursts   []string // burst of each rate, as text
	names    []string // quoted item names
	zoneName string
	zoneID   string // identity of the zone's state: name and rates, or an unnamed handler's fingerprint
	poolKey  string // the zones entry held; empty once released
	limiter  limiter
	mem      *memStore // the limiter when it is the in-memory store
	warned   *atomic.Bool
	authWarn *authWarn // nil unless Key uses {http.auth.*} placeholders (authwarn.go)
	counters counters
	logger   *zap.Logger
	redis    *redisLimiter
	redisKey string
	units    int64        // a static cost
	costVar  string       // the placeholder Cost is made of alone, if so
	costExpr bool         // Cost holds placeholders
	maxUnits int64        // the smallest burst: the largest cost
	holds    bool         // requests hold something until they finish (a slot, a settlement)
	costHdr  string       // CostHeader, canonical
	trailer  string       // CostHeader as an unannounced trailer
	concName string       // the quoted concurrency item name
	now      func() int64 // clock of a new zone; nil for the monotonic clock (tests inject one)
}

// Rate is one rate limit: Events requests per Period, with bursts of up to
// Burst requests.
type Rate struct {
	// The number of requests allowed per period, at least 1.
	Events int `json:"events"`

	// The period over which Events requests are allowed; e.g. "1s", "1m".
	// Requests are spread evenly: one every Period / Events.
	Period caddy.Duration `json:"period"`

	// The number of requests that may arrive at once after a quiet time:
	// the size of the bucket, at least 1. Default: Events.
	Burst int `json:"burst,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.throttle",
		New: func() caddy.Module { return new(Handler) },
	}
}

// limiter makes the decisions of one zone. take checks one request of key
// k against every limit, at the limiter's own time, and only when all of
// them admit it records it in all of them: a refused request consumes
// nothing. out has one element per limit and receives the verdicts (what
// the headers and Retry-After are built from). The in-memory store is one
// limiter; a store shared by a fleet (Redis) is another.
type limiter interface {
	take(ctx context.Context, k key, limits []limit, out []verdict) (allowed bool, err error)
}

// Provision sets defaults, compiles and checks the configuration, and only
// then joins the zone's state.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.warned = new(atomic.Bool)
	h.authWarn = newAuthWarn(h.Key)

	if h.Headers == "" {
		h.Headers = HeadersIETF
	}
	if h.MaxKeys == 0 {
		h.MaxKeys = DefaultMaxKeys
	}
	h.v4bits, h.v6bits = defaultIPv4Prefix, defaultIPv6Prefix
	if h.IPv4Prefix != nil {
		h.v4bits = *h.IPv4Prefix
	}
	if h.IPv6Prefix != nil {
		h.v6bits = *h.IPv6Prefix
	}
	switch h.Key {
	case "", "{client_ip}", "{http.vars.client_ip}":
		h.keyIsIP = true
	default:
		h.keyVar = singlePlaceholder(h.Key)
	}
	for i := range h.Rate {
		if h.Rate[i].Burst == 0 {
			h.Rate[i].Burst = h.Rate[i].Events
		}
	}
	h.provisionCost()
	if h.Redis != nil {
		h.Redis.provision()
	}

	// Nothing is shared or started before the configuration is known to
	// be good (Caddy calls Validate only after Provision).
	if err := h.Validate(); err != nil {
		return err
	}
	if err := h.resolveRedis(); err != nil {
		return err
	}
	var err error
	h.exempt, err = parseExempt(h.Exempt)
	if err != nil {
		return fmt.Errorf("exempt: %w", err)
	}
	h.limits = make([]limit, len(h.Rate))
	for i, r := range h.Rate {
		h.limits[i] = compile(r)
	}

	h.zoneName = h.Zone
	if h.zoneName == "" {
		h.zoneName = unnamedZone
	}
	h.names = make([]string, len(h.Rate))
	policy := make([]string, len(h.Rate))
	for i, r := range h.Rate {
		name := h.zoneName
		if i > 0 {
			name += "-" + strconv.Itoa(i+1)
		}
		h.names[i] = quote(name)
		w := ceilSeconds(h.limits[i].tolerance)
		policy[i] = h.names[i] + ";q=" + strconv.Itoa(r.Burst) + ";w=" + strconv.FormatInt(w, 10)
	}
	if h.Concurrent > 0 {
		h.concName = quote(h.zoneName + "-concurrency")
		policy = append(policy, h.concName+";q="+strconv.Itoa(h.Concurrent)+`;qu="concurrent-requests"`)
	}
	h.policy = strings.Join(policy, ", ")
	h.bursts = make([]string, len(h.Rate))
	for i, r := range h.Rate {
		h.bursts[i] = strconv.Itoa(r.Burst)
	}

	if h.Zone != "" {
		if err := declareZone(ctx, h.Zone, h.Rate, h.limits); err != nil {
			return err
		}
		h.zoneID = namedKey(h.Zone, h.limits)
	} else {
		// An unnamed zone is identified by its handler's configuration.
		fingerprint, err := json.Marshal(h)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(fingerprint)
		h.zoneID = unnamedKey(ctx, hex.EncodeToString(sum[:16]))
	}

	h.counters, err = newCounters(ctx, h.zoneName)
	if err != nil {
		return err
	}

	// Join the zone's state: the new config is provisioned before the old
	// one is cleaned up, so the state carries over a reload.
	h.mem, err = joinMemZone(h.zoneID, h.MaxKeys, len(h.Rate), h.now)
	if err != nil {
		return err
	}
	h.poolKey = h.zoneID
	h.limiter = h.mem
	if h.Redis != nil {
		if err := h.joinRedis(ctx, h.mem); err != nil {
			return err
		}
		h.limiter = h.redis
	}
	h.joinAdmin()
	return nil
}

// Validate checks the configuration (after defaults).
func (h *Handler) Validate() error {
	if len(h.Rate) == 0 && h.Concurrent == 0 {
		return errors.New("at least one rate or concurrent is required")
	}
	if err := h.checkCost(); err != nil {
		return err
	}
	for i, r := range h.Rate {
		if err := checkRate(r); err != nil {
			return fmt.Errorf("rate %d: %w", i+1, err)
		}
	}
	if err := checkZone(h.Zone); err != nil {
		return err
	}
	if err := checkPrefix(h.v4bits, 32); err != nil {
		return fmt.Errorf("ipv4_prefix: %w", err)
	}
	if err := checkPrefix(h.v6bits, 128); err != nil {
		return fmt.Errorf("ipv6_prefix: %w", err)
	}
	if h.MaxKeys < 1 {
		return fmt.Errorf("max_keys must be at least 1, got %d", h.MaxKeys)
	}
	if h.Redis != nil {
		if err := h.Redis.check(h.Zone); err != nil {
			return err
		}
	}
	return checkHeaders(h.Headers)
}

// Cleanup releases the handler's use of its zone.
func (h *Handler) Cleanup() error {
	h.leaveAdmin()
	_ = h.cleanupRedis()
	if h.poolKey == "" {
		return nil
	}
	_, err := zones.Delete(h.poolKey)
	h.poolKey = ""
	return err
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	ip := clientIP(r)
	if h.isExempt(ip) {
		return next.ServeHTTP(w, r)
	}
	k := h.key(r, ip)
	q := ask{units: h.units, slots: int64(h.Concurrent)}
	if h.costExpr {
		u, ok := h.costOf(r)
		if !ok {
			return caddyhttp.Error(http.StatusBadRequest, errBadCost)
		}
		q.units = u
	}

	var (
		buf [4]verdict
		out []verdict
		d   decision
		err error
	)
	if h.redis != nil && len(h.limits) <= len(buf) {
		out = buf[:len(h.limits)]
		d, err = h.redis.acquire(r.Context(), k, q, h.limits, out)
	} else if h.mem != nil && len(h.limits) <= len(buf) {
		// A direct call keeps out on the stack.
		out = buf[:len(h.limits)]
		d, err = h.mem.acquire(r.Context(), k, q, h.limits, out)
	} else {
		heap := make([]verdict, len(h.limits))
		if h.redis != nil {
			d, err = h.redis.acquire(r.Context(), k, q, h.limits, heap)
		} else {
			d, err = h.mem.acquire(r.Context(), k, q, h.limits, heap)
		}
		out = heap
	}
	if err != nil {
		if handled, herr := h.redisFallback(w, r, next, err); handled {
			return herr
		}
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	h.setHeaders(w.Header(), out, d)

	if d.allowed {
		h.counters.allowed.Inc()
		if !h.holds {
			return next.ServeHTTP(w, r)
		}
		return h.serveHolding(w, r, next, k, q, d)
	}
	if h.DryRun {
		h.counters.dryRun.Inc()
		if c := h.logger.Check(zapcore.DebugLevel, "dry run: request would be refused"); c != nil {
			c.Write(zap.String("zone", h.zoneName))
		}
		return next.ServeHTTP(w, r)
	}

	h.counters.refused.Inc()
	reason := "rate"
	if d.conc {
		reason = "concurrency"
		h.counters.refusedConc.Inc()
	} else {
		h.counters.refusedRate.Inc()
	}
	var wait int64
	for _, v := range out {
		wait = max(wait, v.wait)
	}
	retry := max(ceilSeconds(wait), 1)
	w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
	if c := h.logger.Check(zapcore.DebugLevel, "request refused"); c != nil {
		c.Write(zap.String("zone", h.zoneName), zap.String("reason", reason), zap.Int64("retry_after", retry))
	}
	if d.conc {
		return caddyhttp.Error(http.StatusTooManyRequests, errTooManyInProgress)
	}
	return caddyhttp.Error(http.StatusTooManyRequests, errRateLimited)
}

var (
	errRateLimited       = errors.New("rate limit exceeded")
	errTooManyInProgress = errors.New("too many requests in progress")
	errBadCost           = errors.New("throttle: the request's cost is not a whole number from 1 to the smallest burst")
)

// isExempt reports whether the client IP is in an exempt range. Only the
// client IP is looked at, never a configured key's text.
func (h *Handler) isExempt(ip netip.Addr) bool {
	for _, p := range h.exempt {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Header names in canonical form, so setting them costs no canonicalization
// (clients match header names case-insensitively).
var (
	hdrPolicy    = http.CanonicalHeaderKey("RateLimit-Policy")
	hdrRateLimit = http.CanonicalHeaderKey("RateLimit")
	hdrLimit     = http.CanonicalHeaderKey("X-RateLimit-Limit")
	hdrRemaining = http.CanonicalHeaderKey("X-RateLimit-Remaining")
	hdrReset     = http.CanonicalHeaderKey("X-RateLimit-Reset")
)

// setHeaders sets the rate-limit headers of the configured mode. The values
// of one response, and the bytes of the ones formatted per request, share
// one value of a slab (one allocation every slabSize responses); each
// header gets a slice of its own, so a later handler editing one in place
// touches nothing else.
func (h *Handler) setHeaders(hdr http.Header, out []verdict, d decision) {
	switch h.Headers {
	case HeadersIETF:
		hv := ietfSlabs.next()
		b := hv.buf[:0]
		for i, v := range out {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = append(b, h.names[i]...)
			b = append(b, ";r="...)
			b = strconv.AppendInt(b, v.remaining, 10)
			b = append(b, ";t="...)
			b = strconv.AppendInt(b, ceilSeconds(v.reset), 10)
		}
		if h.Concurrent > 0 {
			if len(out) > 0 {
				b = append(b, ", "...)
			}
			b = append(b, h.concName...)
			b = append(b, ";r="...)
			b = strconv.AppendInt(b, d.free, 10)
		}
		hv.v[0] = h.policy
		hv.v[1] = bytesString(b, hv.buf[:])
		if prev := hdr[hdrRateLimit]; len(prev) > 0 {
			// An earlier throttle handler of the chain announced its
			// limits: list ours after them.
			hv.v[1] = strings.Join(prev, ", ") + ", " + hv.v[1]
			if pp := hdr[hdrPolicy]; len(pp) > 0 {
				hv.v[0] = strings.Join(pp, ", ") + ", " + hv.v[0]
			}
		}
		hdr[hdrPolicy] = hv.v[0:1:1]
		hdr[hdrRateLimit] = hv.v[1:2:2]
	case HeadersLegacy:
		if len(out) == 0 {
			// concurrent alone: its limit and slots left
			hdr[hdrLimit] = []string{strconv.Itoa(h.Concurrent)}
			hdr[hdrRemaining] = []string{strconv.FormatInt(d.free, 10)}
			return
		}
		j := 0
		for i, v := range out {
			if v.remaining < out[j].remaining || (v.remaining == out[j].remaining && v.reset > out[j].reset) {
				j = i
			}
		}
		lv := legacySlabs.next()
		b := strconv.AppendInt(lv.buf[:0], out[j].remaining, 10)
		n := len(b)
		b = strconv.AppendInt(b, ceilSeconds(out[j].reset), 10)
		lv.v[0] = h.bursts[j]
		lv.v[1] = unsafe.String(&lv.buf[0], n)
		lv.v[2] = unsafe.String(&lv.buf[n], len(b)-n)
		hdr[hdrLimit] = lv.v[0:1:1]
		hdr[hdrRemaining] = lv.v[1:2:2]
		hdr[hdrReset] = lv.v[2:3:3]
	}
}

// slab hands out values of T for the headers of many responses from one
// allocation: each value goes to one response only and is never reused
// (the slab is collected once no response holds any of its values), so a
// response costs an allocation only every slabSize responses. A sync.Pool
// keeps one partly used slab per P: no lock, no contention.
type slab[T any] struct {
	v    [slabSize]T
	used int
}

const slabSize = 32

type slabPool[T any] struct{ p sync.Pool }

// next returns a fresh value, never handed out before.
func (sp *slabPool[T]) next() *T {
	s, _ := sp.p.Get().(*slab[T])
	if s == nil || s.used == slabSize {
		s = new(slab[T])
	}
	v := &s.v[s.used]
	s.used++
	sp.p.Put(s)
	return v
}

var (
	ietfSlabs   slabPool[ietfValues]
	legacySlabs slabPool[legacyValues]
)

// ietfValues are the IETF header values of one response, with room for the
// bytes of the RateLimit value.
type ietfValues struct {
	v   [2]string
	buf [64]byte
}

// legacyValues are the legacy header values of one response, with room for
// two formatted int64s.
type legacyValues struct {
	v   [3]string
	buf [40]byte
}

// bytesString returns b as a string without copying when b lies in buf,
// which is never written again; else (b outgrew buf) as a copy.
func bytesString(b, buf []byte) string {
	if len(b) == 0 {
		return ""
	}
	if unsafe.SliceData(b) == unsafe.SliceData(buf) {
		return unsafe.String(&b[0], len(b))
	}
	return string(b)
}

// ceilSeconds rounds nanoseconds up to whole seconds.
func ceilSeconds(ns int64) int64 {
	if ns <= 0 {
		return 0
	}
	return (ns + 1e9 - 1) / 1e9
}

// quote returns s as a structured-field string (RFC 8941).
func quote(s string) string {
	return strconv.Quote(s) // zone names are printable ASCII: same escaping
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
