package ratelimit

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Fallback outcomes of the redis limiter, turned into responses by
// redisFallback.
var (
	errRedisAllow = errors.New("redis unavailable: request allowed by on_error allow")
	errRedisDeny  = errors.New("redis unavailable: request refused by on_error deny")
)

// redisLimiter decides in Redis, and on Redis's failure by the on_error
// policy: in memory (local), or by errRedisAllow / errRedisDeny.
type redisLimiter struct {
	z     *redisZone
	local *memStore
}

func (s *redisLimiter) take(ctx context.Context, k key, limits []limit, out []verdict) (bool, error) {
	var buf [64]byte
	id := string(redisKeyText(k, buf[:0]))
	res, ok := s.z.take(ctx, id, out)
	switch res {
	case redisFallbackLocal:
		return s.local.take(k, limits, out)
	case redisFallbackAllow:
		return true, errRedisAllow
	case redisFallbackDeny:
		return false, errRedisDeny
	case redisDecided:
	}
	return ok, nil
}

// provisionRedis joins the Redis client of the handler's redis block (after
// the configuration was checked) and sets up its limiter over the local
// store mem.
func (h *Handler) provisionRedis(ctx caddy.Context, zoneID string, mem *memStore) error {
	rc := h.Redis
	rc.provision()
	urls, opt, err := rc.validate(caddy.NewReplacer())
	if err != nil {
		return err
	}
	c, key, err := joinRedisClient(opt, urls, h.logger)
	if err != nil {
		return err
	}
	h.redisKey = key
	z, err := newRedisZone(redisZoneConfig{
		client: c, cfg: rc, zoneID: zoneID, zone: h.zoneName, rates: h.Rate,
		maxKeys: h.MaxKeys, reg: ctx.GetMetricsRegistry(), logger: h.logger,
	})
	if err != nil {
		return err
	}
	h.redis = &redisLimiter{z: z, local: mem}
	return nil
}

// cleanupRedis releases the handler's use of its Redis client.
func (h *Handler) cleanupRedis() error {
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

// redisKeyText appends the text naming k in Redis keys.
func redisKeyText(k key, b []byte) []byte {
	if k.addr.IsValid() {
		b = append(b, 'c', ':')
		b = k.addr.AppendTo(b)
		b = append(b, '/')
		return strconv.AppendInt(b, int64(k.bits), 10)
	}
	b = append(b, 't', ':')
	return append(b, k.text...)
}
