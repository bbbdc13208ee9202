package aggregate

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// maxDeltaSeconds caps a Cache-Control delta-seconds value (RFC 9111
// section 1.2.2).
const maxDeltaSeconds = 1 << 31

// freshness returns how long a 200 response with these headers may be
// served from a shared cache (RFC 9111): its s-maxage, else its max-age,
// less its Age. It returns 0 (not stored) without either, with no-store,
// no-cache or private (with or without field names), with Set-Cookie, with
// Vary: *, with a malformed or conflicting max-age or s-maxage, or with a
// malformed Age.
func freshness(h http.Header) time.Duration {
	if len(h["Set-Cookie"]) > 0 {
		return 0
	}
	for _, v := range h["Vary"] {
		for f := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(f) == "*" {
				return 0
			}
		}
	}
	maxAge, sMaxAge, ok := parseCacheControl(h["Cache-Control"])
	if !ok {
		return 0
	}
	lifetime := maxAge
	if sMaxAge >= 0 {
		lifetime = sMaxAge
	}
	if lifetime <= 0 {
		return 0
	}
	if ages := h["Age"]; len(ages) > 0 {
		age, ok := deltaSeconds(strings.TrimSpace(ages[0]))
		if !ok {
			return 0
		}
		lifetime -= age
	}
	if lifetime <= 0 {
		return 0
	}
	return time.Duration(lifetime) * time.Second
}

// parseCacheControl reads Cache-Control field values: it returns max-age
// and s-maxage in seconds (-1 when absent) and false when the response must
// not be stored (no-store, no-cache, private, or a max-age or s-maxage
// that is malformed or given twice with different values).
func parseCacheControl(values []string) (maxAge, sMaxAge int64, ok bool) {
	maxAge, sMaxAge = -1, -1
	for _, v := range values {
		for len(v) > 0 {
			var name, arg string
			name, arg, v = nextDirective(v)
			switch strings.ToLower(name) {
			case "no-store", "no-cache", "private":
				return 0, 0, false
			case "max-age", "s-maxage":
				n, good := deltaSeconds(arg)
				if !good {
					return 0, 0, false
				}
				p := &maxAge
				if len(name) == len("s-maxage") {
					p = &sMaxAge
				}
				if *p >= 0 && *p != n {
					return 0, 0, false
				}
				*p = n
			}
		}
	}
	return maxAge, sMaxAge, true
}

// nextDirective splits the first directive off a Cache-Control value:
// name, argument (token or quoted-string, unquoted) and the rest after the
// comma.
func nextDirective(v string) (name, arg, rest string) {
	v = strings.TrimLeft(v, " \t,")
	i := strings.IndexAny(v, "=,")
	if i < 0 {
		return strings.TrimSpace(v), "", ""
	}
	name = strings.TrimSpace(v[:i])
	if v[i] == ',' {
		return name, "", v[i+1:]
	}
	v = strings.TrimLeft(v[i+1:], " \t")
	if strings.HasPrefix(v, `"`) {
		var sb strings.Builder
		j := 1
		for ; j < len(v) && v[j] != '"'; j++ {
			if v[j] == '\\' && j+1 < len(v) {
				j++
			}
			sb.WriteByte(v[j])
		}
		if j >= len(v) {
			// unterminated: the whole rest is the argument, and malformed
			return name, v, ""
		}
		rest = v[j+1:]
		if k := strings.IndexByte(rest, ','); k >= 0 {
			if strings.TrimSpace(rest[:k]) != "" {
				return name, v, rest[k+1:] // junk after the quote: malformed
			}
			return name, sb.String(), rest[k+1:]
		}
		if strings.TrimSpace(rest) != "" {
			return name, v, ""
		}
		return name, sb.String(), ""
	}
	if k := strings.IndexByte(v, ','); k >= 0 {
		return name, strings.TrimSpace(v[:k]), v[k+1:]
	}
	return name, strings.TrimSpace(v), ""
}

// deltaSeconds parses 1*DIGIT, capped at 2^31.
func deltaSeconds(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := range len(s) {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < maxDeltaSeconds {
			n = n*10 + int64(c-'0')
		}
	}
	return min(n, maxDeltaSeconds), true
}

// cacheKey identifies one backend request: the method, the resolved URL and
// every header value sent, names sorted, the trace context excluded
// (it differs per request and changes nothing in the answer). Length
// prefixes keep two different requests from writing the same bytes; the
// SHA-256 keeps no credential in memory as a key.
type cacheKey [sha256.Size]byte

func makeCacheKey(method, url string, hdr http.Header) cacheKey {
	var names [16]string
	keys := names[:0]
	for name := range hdr {
		if name != "Traceparent" && name != "Tracestate" {
			keys = append(keys, name)
		}
	}
	slices.Sort(keys)
	d := sha256.New()
	var n [8]byte
	write := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		d.Write(n[:])
		d.Write([]byte(s))
	}
	write(method)
	write(url)
	for _, name := range keys {
		write(name)
		vals := hdr[name]
		binary.BigEndian.PutUint64(n[:], uint64(len(vals)))
		d.Write(n[:])
		for _, v := range vals {
			write(v)
		}
	}
	var k cacheKey
	d.Sum(k[:0])
	return k
}

// entry is one stored answer: the backend's value (after target) of a 200.
type entry struct {
	value   []byte
	expires time.Time
}

// flightResult is what one shared backend call gives every request that
// waited for it.
type flightResult struct {
	status int
	code   string
	value  []byte // owned, never pooled
}

// responseCache is one backend's shared cache, kept across reloads that
// leave the backend unchanged (a caddy.UsagePool value).
type responseCache struct {
	lru   *lru.Cache[cacheKey, *entry]
	bytes atomic.Int64
	max   int

	mu      sync.Mutex // guards flights and every Add
	flights map[cacheKey]*flight
	group   singleflight.Group
}

// flight is the interest in one shared call: the call's context is
// canceled when the last request waiting for it has gone.
type flight struct {
	ctx     context.Context
	cancel  context.CancelFunc
	waiters int
}

func newResponseCache(maxEntries int) (*responseCache, error) {
	c := &responseCache{max: maxEntries, flights: make(map[cacheKey]*flight)}
	var err error
	c.lru, err = lru.NewWithEvict(maxEntries, func(_ cacheKey, e *entry) {
		c.bytes.Add(-int64(len(e.value)))
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Destruct drops every entry; the pool calls it when no config holds the
// backend any more.
func (c *responseCache) Destruct() error {
	c.lru.Purge()
	return nil
}

// get returns the fresh entry for k, or nil. An expired entry is dropped:
// nothing is ever served stale.
func (c *responseCache) get(k cacheKey, now time.Time) *entry {
	e, ok := c.lru.Get(k)
	if !ok {
		return nil
	}
	if !now.Before(e.expires) {
		c.lru.Remove(k)
		return nil
	}
	return e
}

// put stores value for ttl.
func (c *responseCache) put(k cacheKey, value []byte, ttl time.Duration) {
	e := &entry{value: value, expires: time.Now().Add(ttl)}
	c.mu.Lock()
	// Remove first: Add replacing a value would not tell the eviction
	// callback, and the byte count would drift.
	c.lru.Remove(k)
	c.bytes.Add(int64(len(value)))
	c.lru.Add(k, e)
	c.mu.Unlock()
}

// do runs fetch once for every concurrent request of key k: the first one
// starts it, the others wait for its result. The call is not tied to the
// request that started it: it runs until its result is there, the
// deadline of the request that started it (its budget) passes, or every
// waiting request has gone. A request whose own context ends stops waiting
// at once.
func (c *responseCache) do(ctx context.Context, k cacheKey, fetch func(context.Context) flightResult) flightResult {
	c.mu.Lock()
	f := c.flights[k]
	if f == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{ctx: fctx, cancel: cancel}
		c.flights[k] = f
	}
	f.waiters++
	c.mu.Unlock()
	defer c.leave(k, f)

	deadline, hasDeadline := ctx.Deadline()
	ch := c.group.DoChan(string(k[:]), func() (any, error) {
		callCtx := f.ctx
		if hasDeadline {
			var cancel context.CancelFunc
			callCtx, cancel = context.WithDeadline(callCtx, deadline)
			defer cancel()
		}
		return fetch(callCtx), nil
	})
	select {
	case r := <-ch:
		return r.Val.(flightResult)
	case <-ctx.Done():
		return flightResult{code: failureCode(ctx, ctx.Err())}
	}
}

// leave drops one waiter of f; the last one cancels the call and makes the
// next request of k start a new one.
func (c *responseCache) leave(k cacheKey, f *flight) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f.waiters--
	if f.waiters > 0 {
		return
	}
	f.cancel()
	if c.flights[k] == f {
		delete(c.flights, k)
		c.group.Forget(string(k[:]))
	}
}

// stats returns the number of entries and the bytes of their values.
func (c *responseCache) stats() (int, int64) {
	return c.lru.Len(), c.bytes.Load()
}

// cacheMaxEntriesLimit bounds max_entries: every entry may hold max_body.
const cacheMaxEntriesLimit = 1 << 20

// defaultCacheEntries is max_entries when `cache` has no argument.
const defaultCacheEntries = 1000
