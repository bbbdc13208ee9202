package ratelimit

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Fallback outcomes of the redis limiter, turned into responses by
// redisFallback.
var (
	errRedisAllow = errors.New("redis unavailable: request allowed by on_error allow")
	errRedisDeny  = errors.New("redis unavailable: request refused by on_error deny")
)

// redisLimiter is the limiter of a zone on Redis: it decides in Redis, and
// when Redis cannot answer by the on_error policy: in memory (local), or
// by returning errRedisAllow / errRedisDeny.
type redisLimiter struct {
	urls  []string // resolved
	opt   rueidis.ClientOption
	z     *redisZone
	local *memStore
	sub   string // the resetSubs entry held (admin API resets)
}

func (s *redisLimiter) take(ctx context.Context, k key, limits []limit, out []verdict) (bool, error) {
	res, ok := s.z.take(ctx, redisTag(k), out)
	switch res {
	case redisFallbackLocal:
		return s.local.take(ctx, k, limits, out)
	case redisFallbackAllow:
		return true, errRedisAllow
	case redisFallbackDeny:
		return false, errRedisDeny
	case redisDecided:
	}
	return ok, nil
}

// resolveRedis expands and checks the URLs of the redis block, before the
// handler joins any shared state.
func (h *Handler) resolveRedis() error {
	if h.Redis == nil {
		return nil
	}
	urls, opt, err := h.Redis.resolve(caddy.NewReplacer())
	if err != nil {
		return err
	}
	h.redis = &redisLimiter{urls: urls, opt: opt}
	return nil
}

// joinRedis joins the pooled client of the resolved URLs and sets up the
// limiter, with mem (the zone's in-memory state) for on_error local.
func (h *Handler) joinRedis(ctx caddy.Context, mem *memStore) error {
	rl := h.redis
	c, key, err := joinRedisClient(rl.opt, rl.urls, time.Duration(h.Redis.Timeout), h.Redis.Prefix, h.logger)
	if err != nil {
		return err
	}
	h.redisKey = key
	// A named zone is named in Redis by its name (its rates are in every
	// key); an unnamed one by its handler's configuration, the same on
	// every instance loading the same config.
	id := h.Zone
	if id == "" {
		id = h.zoneID
	}
	rl.z, err = newRedisZone(redisZoneConfig{
		client: c, cfg: h.Redis, zoneID: id, zone: h.zoneName, rates: h.Rate,
		units: h.units, slots: int64(h.Concurrent), debt: h.CostHeader != "",
		maxKeys: h.MaxKeys, reg: ctx.GetMetricsRegistry(), logger: h.logger,
	})
	if err != nil {
		return err
	}
	if h.Concurrent > 0 {
		rl.z.startRenewer()
	}
	rl.local = mem
	rl.sub, err = joinResetSub(c, key, resetChannel(h.Redis.Prefix))
	return err
}

// cleanupRedis releases the handler's use of its Redis client.
func (h *Handler) cleanupRedis() error {
	if h.redis != nil && h.redis.z != nil {
		h.redis.z.closeLeases()
	}
	if h.redis != nil && h.redis.sub != "" {
		_, _ = resetSubs.Delete(h.redis.sub)
		h.redis.sub = ""
	}
	if h.redisKey == "" {
		return nil
	}
	_, err := redisClients.Delete(h.redisKey)
	h.redisKey = ""
	return err
}

// redisFallback answers a request whose limiter returned err, when err is
// an on_error outcome; handled is false for any other error.
func (h *Handler) redisFallback(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, err error) (handled bool, _ error) {
	switch {
	case errors.Is(err, errRedisAllow):
		h.counters.allowed.Inc()
		return true, next.ServeHTTP(w, r)
	case errors.Is(err, errRedisDeny):
		if h.DryRun {
			h.counters.dryRun.Inc()
			return true, next.ServeHTTP(w, r)
		}
		w.Header().Set("Retry-After", "1")
		return true, caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	return false, nil
}
