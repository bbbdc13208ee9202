package jwtauth

import (
	"crypto/sha256"
	"sync"
	"time"
	"unsafe"
)

const (
	// tokenCacheSize bounds the verified-token cache of one handler.
	tokenCacheSize = 10_000
	// tokenCacheMaxTTL bounds how long an entry lives, even for a token
	// whose exp is further away (or absent, with allow_no_exp).
	tokenCacheMaxTTL = 10 * time.Minute
	cacheShards      = 16
)

// tokenCache remembers tokens whose signature and claims were verified, so
// that a repeated token costs a hash instead of a signature check. It is
// keyed by the SHA-256 of the token (the token itself is not kept), bounded
// to tokenCacheSize entries, and an entry never outlives the token's exp.
// Entries carry the key-set generation they were verified under: when the
// keys change, every older entry is dropped.
type tokenCache struct {
	shards [cacheShards]cacheShard
}

type cacheShard struct {
	mu         sync.Mutex
	entries    map[[32]byte]cacheEntry
	generation uint64
}

type cacheEntry struct {
	grant   *grant
	expires time.Time
}

func newTokenCache() *tokenCache {
	c := new(tokenCache)
	for i := range c.shards {
		c.shards[i].entries = make(map[[32]byte]cacheEntry)
	}
	return c
}

func (c *tokenCache) shard(key *[32]byte) *cacheShard {
	return &c.shards[key[0]%cacheShards]
}

// get returns the grant of a verified token, if cached under the current
// key generation and not past its expiry.
func (c *tokenCache) get(key *[32]byte, generation uint64, now time.Time) (*grant, bool) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.generation != generation {
		if generation > s.generation {
			s.reset(generation)
		}
		return nil, false
	}
	e, ok := s.entries[*key]
	if !ok {
		return nil, false
	}
	if !now.Before(e.expires) {
		delete(s.entries, *key)
		return nil, false
	}
	return e.grant, true
}

// put stores a verified token's grant until expires.
func (c *tokenCache) put(key *[32]byte, g *grant, generation uint64, expires time.Time, now time.Time) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if generation < s.generation {
		return // verified under keys that have changed since
	}
	if generation > s.generation {
		s.reset(generation)
	}
	if len(s.entries) >= tokenCacheSize/cacheShards {
		// Drop expired entries; if none, one arbitrary entry.
		for k, e := range s.entries {
			if !now.Before(e.expires) {
				delete(s.entries, k)
			}
		}
		if len(s.entries) >= tokenCacheSize/cacheShards {
			for k := range s.entries {
				delete(s.entries, k)
				break
			}
		}
	}
	s.entries[*key] = cacheEntry{grant: g, expires: expires}
}

func (s *cacheShard) reset(generation uint64) {
	clear(s.entries)
	s.generation = generation
}

// tokenKey is the cache key of a token: its SHA-256, so that the cache
// never holds a token. The token's bytes are hashed in place (SHA-256
// only reads them), sparing a copy per request.
func tokenKey(token string) [32]byte {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
}
