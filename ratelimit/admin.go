package ratelimit

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"
)

// The admin API (admin.api.gateway) sees a zone through a zoneView: one per
// zone state (pool key), listed once in registry.ThrottleZones however many
// handlers share it. A handler joins its zone's view as the last step of
// Provision and leaves it first thing in Cleanup, so a reload never leaves a
// stale zone visible.

// zoneViews holds the view of every zone state in use, by pool key.
var zoneViews = struct {
	sync.Mutex
	m map[string]*zoneView
}{m: make(map[string]*zoneView)}

// zoneViewSeq orders views by creation: the newest of several states with
// one name answers a GET.
var zoneViewSeq atomic.Uint64

// zoneView is the admin view of one zone state.
type zoneView struct {
	seq      uint64
	mu       sync.Mutex
	handlers []*Handler // in join order: the newest last
}

// joinAdmin makes the handler's zone visible to the admin API.
func (h *Handler) joinAdmin() {
	zoneViews.Lock()
	v := zoneViews.m[h.poolKey]
	if v == nil {
		v = &zoneView{seq: zoneViewSeq.Add(1)}
		zoneViews.m[h.poolKey] = v
	}
	v.mu.Lock()
	v.handlers = append(v.handlers, h)
	v.mu.Unlock()
	zoneViews.Unlock()
	registry.ThrottleZones.Join(v)
}

// leaveAdmin undoes joinAdmin; it does nothing for a handler that never
// joined (a failed Provision), or when called again.
func (h *Handler) leaveAdmin() {
	zoneViews.Lock()
	defer zoneViews.Unlock()
	v := zoneViews.m[h.poolKey]
	if v == nil {
		return
	}
	v.mu.Lock()
	found := false
	for i, o := range v.handlers {
		if o == h {
			v.handlers = append(v.handlers[:i], v.handlers[i+1:]...)
			found = true
			break
		}
	}
	empty := len(v.handlers) == 0
	v.mu.Unlock()
	if !found {
		return
	}
	if empty {
		delete(zoneViews.m, h.poolKey)
	}
	registry.ThrottleZones.Leave(v)
}

// snapshot returns the view's handlers, the newest last; nil once every
// handler left.
func (v *zoneView) snapshot() []*Handler {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]*Handler(nil), v.handlers...)
}

// newest returns the most recently joined handler, or nil.
func (v *zoneView) newest() *Handler {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.handlers) == 0 {
		return nil
	}
	return v.handlers[len(v.handlers)-1]
}

var errZoneGone = fmt.Errorf("%w: the zone is no longer loaded", registry.ErrNotFound)

// AdminZone implements registry.ThrottleZone.
func (v *zoneView) AdminZone() registry.ThrottleZoneInfo {
	hs := v.snapshot()
	if len(hs) == 0 {
		return registry.ThrottleZoneInfo{Seq: v.seq}
	}
	h := hs[len(hs)-1]
	info := registry.ThrottleZoneInfo{
		Name:       h.zoneName,
		Named:      h.Zone != "",
		Rates:      make([]registry.ThrottleRate, len(h.Rate)),
		Engine:     h.engine(),
		Keys:       h.mem.keyCount(),
		MaxKeys:    h.MaxKeys,
		IPv4Prefix: h.v4bits,
		IPv6Prefix: h.v6bits,
		Handlers:   len(hs),
		Seq:        v.seq,
	}
	for i, r := range h.Rate {
		info.Rates[i] = registry.ThrottleRate{
			Name:   strings.Trim(h.names[i], `"`),
			Events: r.Events,
			Period: time.Duration(r.Period).String(),
			Burst:  r.Burst,
		}
	}
	if c := h.concurrencyView(); c != nil {
		info.Concurrent = c.Concurrent()
	}
	return info
}

// AdminClient implements registry.ThrottleZone.
func (v *zoneView) AdminClient(ctx context.Context, q registry.ThrottleQuery) (registry.ThrottleClient, error) {
	h := v.newest()
	if h == nil {
		return registry.ThrottleClient{}, errZoneGone
	}
	k, err := h.adminKey(q)
	if err != nil {
		return registry.ThrottleClient{}, err
	}
	return h.adminState(ctx, k)
}

// AdminReset implements registry.ThrottleZone. Handlers sharing the zone
// may group addresses by other prefixes: the client is reset under each.
func (v *zoneView) AdminReset(ctx context.Context, q registry.ThrottleQuery) (registry.ThrottleClient, error) {
	hs := v.snapshot()
	if len(hs) == 0 {
		return registry.ThrottleClient{}, errZoneGone
	}
	done := make(map[string]bool, 1)
	var firstErr error
	for _, h := range slices.Backward(hs) {
		k, err := h.adminKey(q)
		if err != nil {
			return registry.ThrottleClient{}, err
		}
		id := string(k.appendText(nil))
		if done[id] {
			continue
		}
		done[id] = true
		h.mem.forget(k)
		if h.redis != nil {
			if err := h.resetRedis(ctx, k); err != nil && firstErr == nil {
				firstErr = err
			}
		}
	}
	if firstErr != nil {
		return registry.ThrottleClient{}, firstErr
	}
	k, _ := hs[len(hs)-1].adminKey(q) // checked above
	return hs[len(hs)-1].adminState(ctx, k)
}

// engine names where the handler's state lives.
func (h *Handler) engine() string {
	if h.Redis != nil {
		return "redis"
	}
	return "memory"
}

// adminKey returns the key a query names, as a request would be counted:
// an address in the client-IP namespace grouped by the handler's prefixes,
// or a configured key's value (an address grouped the same way, in the
// configured-key namespace).
func (h *Handler) adminKey(q registry.ThrottleQuery) (key, error) {
	switch {
	case q.IP.IsValid() && q.Key != "":
		return key{}, fmt.Errorf("%w: give ip or key, not both", registry.ErrBadQuery)
	case q.IP.IsValid():
		return h.mask(kindClient, q.IP.Unmap().WithZone("")), nil
	case q.Key != "":
		if mayBeAddr(q.Key) {
			if a, err := netip.ParseAddr(q.Key); err == nil {
				return h.mask(kindAddr, a.Unmap().WithZone("")), nil
			}
		}
		return key{kind: kindText, text: q.Key}, nil
	}
	return key{}, fmt.Errorf("%w: ip or key is required", registry.ErrBadQuery)
}

// adminState reads the state of key k without changing it.
func (h *Handler) adminState(ctx context.Context, k key) (registry.ThrottleClient, error) {
	c := registry.ThrottleClient{
		Zone:   h.zoneName,
		ID:     string(k.appendText(nil)),
		Engine: h.engine(),
		Source: "memory",
		Rates:  make([]registry.ThrottleClientRate, len(h.Rate)),
	}
	switch k.kind {
	case kindText:
		c.Kind, c.Client = "key", k.text
	case kindAddr:
		c.Kind, c.Client = "key", netip.PrefixFrom(k.addr, k.bits).String()
	case kindClient:
		c.Kind, c.Client = "ip", netip.PrefixFrom(k.addr, k.bits).String()
	}
	limits := h.limits
	var used []int64
	if h.redis != nil {
		var err error
		used, err = h.peekRedis(ctx, k)
		if err == nil {
			c.Source = "redis"
			limits = h.redis.z.limitsNS()
		} else {
			c.Source = "local"
		}
	}
	if c.Source != "redis" {
		used = h.mem.peek(k, len(h.limits))
	}
	for i, l := range limits {
		u := max(used[i], 0)
		c.Rates[i] = registry.ThrottleClientRate{
			Name:       strings.Trim(h.names[i], `"`),
			Burst:      h.Rate[i].Burst,
			Remaining:  max((l.tolerance-u)/l.interval, 0),
			RetryAfter: seconds(max(u-l.tolerance+l.interval, 0)),
			FullIn:     seconds(u),
		}
	}
	if cc := h.concurrencyView(); cc != nil {
		c.Concurrent = cc.Concurrent()
		n, err := cc.InProgress(ctx, c.ID)
		if err != nil {
			return c, err
		}
		c.InProgress = n
	}
	return c, nil
}

// seconds turns nanoseconds into seconds, rounded up to the millisecond.
func seconds(ns int64) float64 {
	return math.Ceil(float64(ns)/1e6) / 1e3
}

// peek returns, for each of the n rates, how far key k's TAT runs ahead of
// now (0 for a key not held).
func (s *memStore) peek(k key, n int) []int64 {
	used := make([]int64, n)
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	now := s.now()
	sh.mu.Lock()
	if slot, ok := sh.t.find(h); ok {
		for i, tat := range sh.t.tats(slot) {
			if i < n {
				used[i] = max(tat-now, 0)
			}
		}
	}
	sh.mu.Unlock()
	return used
}

// forget resets key k: its TATs go back to the past, which makes it idle
// (what an absent key means); the sweeper or the next eviction drops it.
func (s *memStore) forget(k key) {
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	sh.mu.Lock()
	if slot, ok := sh.t.find(h); ok {
		clear(sh.t.tats(slot))
	}
	sh.mu.Unlock()
}

// keyCount is the number of keys the store holds.
func (s *memStore) keyCount() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.t.n
		sh.mu.Unlock()
	}
	return n
}

var _ registry.ThrottleZone = (*zoneView)(nil)
