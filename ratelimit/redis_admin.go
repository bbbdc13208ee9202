package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"
	"github.com/redis/rueidis"

	"github.com/caddyserver/caddy/v2"
)

// The admin API's side of a Redis zone: reading one client's state,
// resetting it in Redis, and telling every instance to forget its local
// refusal of that client.
//
// A reset deletes the client's keys and publishes `<base>{<id>}` (the stem
// of its key names: prefix, zone, client) on the channel `<prefix>reset`.
// Every instance subscribes to the channels of the prefixes it uses, one
// subscription per Redis and channel, and drops the client from the
// refusal cache of each of its zones with that base, so none keeps refusing
// it without asking Redis.

// peekScript returns, for each key (the TATs of one client, in
// microseconds of Redis's clock), how far it runs ahead of Redis's now, in
// microseconds (0 for a missing key). It writes nothing.
const peekScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local used = 0
  local x = tonumber(redis.call('GET', KEYS[i]) or '')
  if x and x > now and x < 1e16 then used = x - now end
  out[i] = string.format('%.0f', used)
end
return out
`

var peekLua = rueidis.NewLuaScript(peekScript)

// limitsNS returns the zone's rates in nanoseconds as Redis applies them
// (the interval rounded up to the microsecond).
func (z *redisZone) limitsNS() []limit {
	out := make([]limit, len(z.limits))
	for i, l := range z.limits {
		out[i] = l.limit
	}
	return out
}

// errRedisDown: the admin API could not reach the zone's Redis.
var errRedisDown = fmt.Errorf("%w: redis is not reachable", registry.ErrUnavailable)

// peekRedis reads how far each of k's TATs runs ahead of now in Redis, in
// nanoseconds.
func (h *Handler) peekRedis(ctx context.Context, k key) ([]int64, error) {
	z := h.redis.z
	if len(z.limits) == 0 {
		return nil, nil // concurrent alone: no rate state
	}
	id := redisTag(k)
	_, c := z.client.get(id)
	if c == nil {
		return nil, errRedisDown
	}
	ctx, cancel := context.WithTimeout(ctx, z.timeout)
	defer cancel()
	arr, err := peekLua.Exec(ctx, c, z.keys(id)[:len(z.limits)], nil).ToArray()
	if err != nil {
		return nil, fmt.Errorf("%w: %s", registry.ErrUnavailable, redactError(err, z.client.secrets))
	}
	if len(arr) != len(z.limits) {
		return nil, fmt.Errorf("%w: peek script: %d replies, want %d", registry.ErrUnavailable, len(arr), len(z.limits))
	}
	used := make([]int64, len(arr))
	for i := range arr {
		s, err := arr[i].ToString()
		if err != nil {
			return nil, fmt.Errorf("%w: peek script: %w", registry.ErrUnavailable, err)
		}
		us, err := strconv.ParseInt(s, 10, 64)
		if err != nil || us < 0 {
			return nil, fmt.Errorf("%w: peek script: bad reply %q", registry.ErrUnavailable, s)
		}
		used[i] = us * 1000
	}
	return used, nil
}

// resetRedis deletes k's rate state in Redis (not the leases of its
// requests in progress) and publishes the reset to every instance. This
// instance forgets its refusal at once, whatever Redis answers.
func (h *Handler) resetRedis(ctx context.Context, k key) error {
	z := h.redis.z
	id := redisTag(k)
	forgetRefusals(z.base, id)
	_, c := z.client.get(id)
	if c == nil {
		return errRedisDown
	}
	ctx, cancel := context.WithTimeout(ctx, z.timeout)
	defer cancel()
	// The rates' state only: the leases of requests in progress stay
	// theirs.
	if rateKeys := z.keys(id)[:len(z.limits)]; len(rateKeys) > 0 {
		if err := c.Do(ctx, c.B().Del().Key(rateKeys...).Build()).Error(); err != nil {
			return fmt.Errorf("%w: %s", registry.ErrUnavailable, redactError(err, z.client.secrets))
		}
	}
	msg := z.base + "{" + id + "}"
	if err := c.Do(ctx, c.B().Publish().Channel(resetChannel(h.Redis.Prefix)).Message(msg).Build()).Error(); err != nil {
		return fmt.Errorf("%w: reset, but not published: %s", registry.ErrUnavailable, redactError(err, z.client.secrets))
	}
	return nil
}

// resetChannel is the pub/sub channel of resets for a key prefix.
func resetChannel(prefix string) string { return prefix + "reset" }

// forgetRefusals drops client id from the refusal cache of every live zone
// of this instance whose key names start with base.
func forgetRefusals(base, id string) {
	zoneViews.Lock()
	defer zoneViews.Unlock()
	for _, v := range zoneViews.m {
		v.mu.Lock()
		for _, h := range v.handlers {
			if h.redis != nil && h.redis.z != nil && h.redis.z.base == base {
				h.redis.z.refused.forget(id)
			}
		}
		v.mu.Unlock()
	}
}

// forget drops id from the cache.
func (c *refusalCache) forget(id string) {
	sh := c.shard(id)
	sh.mu.Lock()
	delete(sh.m, id)
	sh.mu.Unlock()
}

// handleResetMessage applies a reset published by any instance.
func handleResetMessage(msg string) {
	i := strings.IndexByte(msg, '{')
	if i < 0 || !strings.HasSuffix(msg, "}") || len(msg) < i+2 {
		return
	}
	forgetRefusals(msg[:i], msg[i+1:len(msg)-1])
}

// resetSubs holds one subscription per Redis (resolved URLs) and channel,
// shared by the handlers using them.
var resetSubs = caddy.NewUsagePool()

// resetSub is one subscription's goroutine.
type resetSub struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// Destruct stops the subscription; the pool calls it when the last handler
// using it is cleaned up. It does not wait for Redis.
func (s *resetSub) Destruct() error {
	s.cancel()
	return nil
}

// joinResetSub takes (or starts) the subscription to channel on the client
// pooled under clientKey, and returns its pool key.
func joinResetSub(c *redisClient, clientKey, channel string) (string, error) {
	key := clientKey + "\n\n" + channel
	_, _, err := resetSubs.LoadOrNew(key, func() (caddy.Destructor, error) {
		ctx, cancel := context.WithCancel(context.Background())
		s := &resetSub{cancel: cancel, done: make(chan struct{})}
		go s.run(ctx, c, channel)
		return s, nil
	})
	if err != nil {
		return "", err
	}
	return key, nil
}

// run keeps the subscription up until Destruct: while Redis is down it
// waits, and after a lost connection it subscribes again.
func (s *resetSub) run(ctx context.Context, rc *redisClient, channel string) {
	defer close(s.done)
	pause := redisProbeMin
	for {
		if c := rc.connected(); c != nil {
			start := time.Now()
			_ = c.Receive(ctx, c.B().Subscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) {
				handleResetMessage(m.Message)
			})
			if time.Since(start) > redisProbeMax {
				pause = redisProbeMin
			}
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(pause*2, redisProbeMax)
	}
}
