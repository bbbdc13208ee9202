package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Concurrency slots and settlements on Redis.
//
// A slot is a lease: a member of the client's sorted set of leases
// (`<prefix><zone>{<client>}:c`), scored with when it expires on Redis's
// clock. The script counts the leases that have not expired, and adds one
// when the request passes; the request's handler renews it every third of
// the lease while the request runs, and removes it when the request is
// done. An instance that crashes renews nothing, so its slots expire
// within the lease.

// acquire decides about one request of key k (see memStore.acquire), on
// Redis, or by the on_error policy when Redis cannot answer: in memory for
// local (the slots in memory too, a local semaphore), or by returning
// errRedisAllow / errRedisDeny.
func (s *redisLimiter) acquire(ctx context.Context, k key, q ask, limits []limit, out []verdict) (decision, error) {
	id := redisTag(k)
	res, d := s.z.acquire(ctx, id, q, out)
	switch res {
	case redisFallbackLocal:
		return s.local.acquire(ctx, k, q, limits, out)
	case redisFallbackAllow:
		return decision{allowed: true}, errRedisAllow
	case redisFallbackDeny:
		return decision{}, errRedisDeny
	case redisDecided:
	}
	d.id = id
	return d, nil
}

// acquire decides about one request of client id asking q. It answers from
// the refusal cache when the client was refused by a rate and its wait is
// not over; otherwise it asks Redis, unless Redis is down; when Redis
// cannot answer it returns the fallback outcome of the on_error policy. out
// has one element per rate.
func (z *redisZone) acquire(ctx context.Context, id string, q ask, out []verdict) (redisOutcome, decision) {
	if z.refused.lookup(id, z.limits, q.units, out) {
		z.metrics.localRefusals.Inc()
		return redisDecided, decision{}
	}
	cc, c := z.conn(id)
	if c == nil {
		return z.fallback(), decision{}
	}
	args := z.args
	var member string
	if q.units != z.units || q.slots > 0 {
		args = append([]string(nil), z.args...)
		args[0] = strconv.FormatInt(q.units, 10)
		if q.slots > 0 {
			member = z.leases.newMember()
			args[1] = strconv.FormatInt(q.slots, 10)
			args[3] = member
		} else {
			args[1] = "0"
		}
	}
	var kb [8]string
	keys := z.appendKeys(kb[:0], id)
	if q.slots == 0 && z.slots > 0 {
		keys = keys[:len(z.limits)]
	}
	flag, free, err := z.call(ctx, c, keys, args, out)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			// The client went away: no verdict of Redis's health.
			return z.fallback(), decision{}
		}
		z.metrics.errors.Inc()
		if redisOutage(err) {
			z.failed(cc, err)
		}
		if ce := z.logger.Check(zapcore.DebugLevel, "redis call failed"); ce != nil {
			ce.Write(zap.String("zone", z.zone), zap.String("error", redactError(err, z.client.secrets)))
		}
		return z.fallback(), decision{}
	}
	d := decision{allowed: flag == 1, conc: flag == 2, free: free}
	if flag == 0 {
		z.refused.store(id, z.limits, out)
	}
	if d.allowed && q.slots > 0 {
		d.lease = &lease{key: keys[len(keys)-1], member: member, tag: id}
		z.leases.add(d.lease)
	}
	return redisDecided, d
}

// conn returns the circuit of the master serving the keys of client id
// (its redisTag), and the client; the client is nil while that circuit is
// open.
func (z *redisZone) conn(id string) (*redisCircuit, rueidis.Client) {
	return z.client.get(id)
}

// failed reports a call that failed for a reason that is not the request's
// own, on the circuit conn returned.
func (z *redisZone) failed(cc *redisCircuit, err error) { z.client.fail(cc, err) }

// finish gives back lease l (when not nil) and, with settle, charges delta
// units to client id (gives them back when negative), in one script call
// that is never repeated: a call that fails is counted in failures and
// logged (once until a call succeeds again); the lease then expires on its
// own within its lifetime. It runs after the response, so it does not
// follow the request's cancellation, only the timeout.
func (z *redisZone) finish(ctx context.Context, id string, l *lease, settle bool, delta int64, failures prometheus.Counter) {
	if l != nil {
		z.leases.remove(l)
	}
	if !settle {
		delta = 0
	}
	if delta < 0 {
		z.refused.forget(id)
	}
	keys := z.keys(id)
	args := make([]string, 0, 2+len(z.finArgs))
	args = append(args, strconv.FormatInt(delta, 10), "")
	if l != nil {
		args[1] = l.member
	} else if z.slots > 0 {
		keys = keys[:len(z.limits)]
	}
	args = append(args, z.finArgs...)

	cc, c := z.conn(id)
	err := errRedisDown
	if c != nil {
		z.metrics.calls.Inc()
		start := time.Now()
		err = finishLua.Exec(z.client.callContext(), c, keys, args).Error()
		z.metrics.duration.Observe(time.Since(start).Seconds())
		if err != nil {
			z.metrics.errors.Inc()
			if redisOutage(err) {
				z.failed(cc, err)
			}
		}
	}
	if err == nil {
		z.settleWarned.Store(false)
		return
	}
	failures.Inc()
	if !z.settleWarned.Swap(true) {
		z.logger.Warn("redis could not record a settlement or give back a slot; not retried (a slot expires within its lease); logged once until one succeeds",
			zap.String("zone", z.zone), zap.String("error", redactError(err, z.client.secrets)))
	}
}

// inProgress returns the live leases of client id, fleet-wide.
func (z *redisZone) inProgress(ctx context.Context, id string) (int, error) {
	if z.slots == 0 {
		return 0, nil
	}
	_, c := z.conn(id)
	if c == nil {
		return 0, errRedisDown
	}
	keys := z.keys(id)
	ctx, cancel := context.WithTimeout(ctx, z.timeout)
	defer cancel()
	n, err := inProgressLua.Exec(ctx, c, keys[len(keys)-1:], nil).AsInt64()
	return int(n), err
}

// inProgressScript counts the leases of KEYS[1] that have not expired, on
// Redis's clock.
const inProgressScript = `
local t = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], '(' .. (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), '+inf')
`

var inProgressLua = rueidis.NewLuaScript(inProgressScript)

// lease is one slot a request holds in Redis.
type lease struct {
	key    string // the client's set of leases
	member string // this lease in it
	tag    string // the client's hash tag (its circuit)
}

// leaseSet holds the leases a handler's requests hold, and renews them in
// the background while any is held.
type leaseSet struct {
	mu      sync.Mutex
	m       map[*lease]struct{}
	lease   time.Duration
	prefix  string // this instance's mark in lease names
	seq     atomic.Uint64
	running bool
	closed  bool
	wake    chan struct{}
	wg      sync.WaitGroup
}

func (s *leaseSet) init(d time.Duration) {
	s.lease = d
	s.m = make(map[*lease]struct{})
	s.wake = make(chan struct{}, 1)
	var b [8]byte
	_, _ = rand.Read(b[:])
	s.prefix = hex.EncodeToString(b[:]) + ":"
}

// newMember returns a lease name unique across the fleet: a random mark of
// this handler and a sequence number.
func (s *leaseSet) newMember() string {
	return s.prefix + strconv.FormatUint(s.seq.Add(1), 36)
}

func (s *leaseSet) add(l *lease) {
	s.mu.Lock()
	s.m[l] = struct{}{}
	s.mu.Unlock()
}

func (s *leaseSet) remove(l *lease) {
	s.mu.Lock()
	delete(s.m, l)
	s.mu.Unlock()
}

// snapshot returns the leases held.
func (s *leaseSet) snapshot() []*lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*lease, 0, len(s.m))
	for l := range s.m {
		out = append(out, l)
	}
	return out
}

// startRenewer starts the renewer of z's leases, once.
func (z *redisZone) startRenewer() {
	s := &z.leases
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running || s.closed {
		return
	}
	s.running = true
	s.wg.Add(1)
	go z.renew()
}

// renew renews the leases held every third of the lease, until the
// handler is cleaned up and none is held any more (requests of an old
// config finish after a reload).
func (z *redisZone) renew() {
	s := &z.leases
	defer s.wg.Done()
	t := time.NewTicker(s.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.wake:
		}
		s.mu.Lock()
		done := s.closed && len(s.m) == 0
		s.mu.Unlock()
		if done {
			return
		}
		z.renewAll()
	}
}

// renewAll renews every lease held, in one pipelined round; a lease whose
// master's circuit is open waits for the next round.
func (z *redisZone) renewAll() {
	held := z.leases.snapshot()
	if len(held) == 0 {
		return
	}
	ms := strconv.FormatInt(z.leases.lease.Milliseconds(), 10)
	var c rueidis.Client
	execs := make([]rueidis.LuaExec, 0, len(held))
	circuits := make([]*redisCircuit, 0, len(held))
	for _, l := range held {
		cc, lc := z.conn(l.tag)
		if lc == nil {
			continue
		}
		c = lc
		execs = append(execs, rueidis.LuaExec{Keys: []string{l.key}, Args: []string{ms, l.member}})
		circuits = append(circuits, cc)
	}
	if len(execs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(z.timeout, time.Second))
	defer cancel()
	for i, r := range renewLua.ExecMulti(ctx, c, execs...) {
		if err := r.Error(); err != nil {
			if redisOutage(err) {
				z.failed(circuits[i], err)
			}
			if ce := z.logger.Check(zapcore.DebugLevel, "redis lease renewal failed"); ce != nil {
				ce.Write(zap.String("zone", z.zone), zap.String("error", redactError(err, z.client.secrets)))
			}
		}
	}
}

// closeLeases stops the renewer once no lease is held.
func (z *redisZone) closeLeases() {
	s := &z.leases
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
