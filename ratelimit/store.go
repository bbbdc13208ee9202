package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// limit is one compiled `rate` line in GCRA terms, in nanoseconds of the
// store's clock.
type limit struct {
	// interval is the emission interval T: the time one request "costs"
	// (period / events), at least 1ns.
	interval int64
	// tolerance is burst × T: how far ahead of now a key's theoretical
	// arrival time (TAT) may run after a request is admitted.
	tolerance int64
}

// verdict is what a store tells about one rate for one request. Durations
// are nanoseconds.
type verdict struct {
	// remaining is the number of requests left after this one.
	remaining int64
	// reset is the time until the next request would pass (remaining == 0)
	// or until the bucket is full again (remaining > 0).
	reset int64
	// wait is the time until a request would pass; zero when one would pass
	// now. It is what Retry-After is built from.
	wait int64
}

// epoch anchors the default clock: time.Since uses the monotonic clock, so
// decisions never jump with the wall clock. It is set once per process.
var epoch = time.Now()

func monotonicNow() int64 { return int64(time.Since(epoch)) }

// golden spreads the per-rate entries of one key across the hash space.
const golden = 0x9E3779B97F4A7C15

// memStore is the in-memory GCRA store: one timestamp (the TAT) per key and
// rate, in a fixed number of shards, each a hash table under its own mutex, so
// there is no global lock and decisions on one key are exact under any
// concurrency. Keys are stored as 64-bit seeded hashes, so every entry has
// the same size however long the key text is.
//
// An entry whose TAT is not after now is idle: its bucket is full again and
// it means exactly what an absent entry means, so dropping it never changes
// a decision. Memory is bounded by maxKeys: idle entries are swept
// periodically and whenever a shard is full; when a shard is full of active
// entries a new key is refused rather than an active key evicted (evicting
// would hand that client a fresh bucket). A known key whose slower rates
// went idle may exceed the bound by an eighth, so an active client is not
// refused for want of room; new keys never do.
type memStore struct {
	now    func() int64 // clock in nanoseconds; injected by tests
	seedA  uint64       // address hash seeds
	seedB  uint64
	seedS  maphash.Seed
	shards []shard
	shift  uint // shard index = hash >> shift

	// perShard is the number of keys each shard may hold; the entry bound
	// is perShard × rates.
	perShard atomic.Int64
	rates    atomic.Int64

	stop     chan struct{}
	stopOnce sync.Once
}

type shard struct {
	mu sync.Mutex
	t  table // hash of (key, rate index) -> TAT
	// fullUntil is, after a sweep found the shard full of active
	// entries, the earliest time one of them becomes idle: until then new
	// keys are refused without sweeping again.
	fullUntil int64
	_         [16]byte // pad to 64 bytes: shards on separate cache lines
}

// maxShards bounds the number of shards; minPerShard keeps small max_keys
// values from being split into shards too small to be fair.
const (
	maxShards   = 64
	minPerShard = 256
)

// newMemStore returns a store for up to maxKeys keys of nRates rates each,
// on the clock now (nanoseconds; nil for the monotonic clock).
func newMemStore(maxKeys, nRates int, now func() int64) *memStore {
	if now == nil {
		now = monotonicNow
	}
	n := 1
	for n < maxShards && maxKeys/(n*2) >= minPerShard {
		n *= 2
	}
	s := &memStore{
		now:    now,
		seedA:  randUint64(),
		seedB:  randUint64(),
		seedS:  maphash.MakeSeed(),
		shards: make([]shard, n),
		shift:  64,
		stop:   make(chan struct{}),
	}
	for n > 1 {
		s.shift--
		n >>= 1
	}
	s.configure(maxKeys, nRates)
	return s
}

// configure sets the bound from the most recently provisioned handler of
// the zone. The number of rates only grows, so entries of any handler
// sharing the zone fit.
func (s *memStore) configure(maxKeys, nRates int) {
	per := (int64(maxKeys) + int64(len(s.shards)) - 1) / int64(len(s.shards))
	s.perShard.Store(max(per, 1))
	for {
		cur := s.rates.Load()
		if int64(nRates) <= cur || s.rates.CompareAndSwap(cur, int64(nRates)) {
			return
		}
	}
}

// hash returns the 64-bit hash of k. Addresses go through a seeded mixer
// (cheaper than maphash for 16 bytes), one bijective round per word, with
// the kind and prefix length in the last, so that without the seeds no
// address of one kind or prefix can be made to collide with another; texts
// go through maphash with another seed, so no text can alias an address.
func (s *memStore) hash(k key) uint64 {
	if k.kind != kindText {
		a := k.addr.As16()
		hi := binary.BigEndian.Uint64(a[:8])
		lo := binary.BigEndian.Uint64(a[8:])
		x := fmix64(fmix64(s.seedA^hi) ^ lo)
		return fmix64(x ^ s.seedB ^ uint64(k.kind)<<8 ^ uint64(k.bits))
	}
	return maphash.String(s.seedS, k.text)
}

// randUint64 returns a random seed.
func randUint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	return binary.LittleEndian.Uint64(b[:])
}

// fmix64 is MurmurHash3's finalizer: a bijection that spreads every input
// bit over the output.
func fmix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func (s *memStore) take(_ context.Context, k key, limits []limit, out []verdict) (bool, error) {
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	now := s.now()

	sh.mu.Lock()
	allowed := true
	missing := 0
	for i, l := range limits {
		tat, ok := sh.t.get(h + uint64(i)*golden)
		if !ok {
			missing++
		}
		tat = max(tat, now)
		out[i].reset = tat // the TAT before this request, for now
		if tat+l.interval-now > l.tolerance {
			allowed = false
		}
	}
	var full bool
	if allowed && missing > 0 {
		bound := int(s.perShard.Load() * s.rates.Load())
		if missing < len(limits) {
			// A known key whose slower rates went idle: give it some slack
			// rather than refuse an active client.
			bound += bound / 8
		}
		if sh.t.n+missing > bound {
			if now < sh.fullUntil {
				full = true
			} else {
				sh.sweep(now)
				// The sweep may have dropped this key's idle entries.
				missing = 0
				for i := range limits {
					if _, ok := sh.t.get(h + uint64(i)*golden); !ok {
						missing++
					}
				}
				full = sh.t.n+missing > bound
			}
		}
		allowed = !full
	}
	if allowed {
		for i, l := range limits {
			tat := out[i].reset + l.interval
			sh.t.set(h+uint64(i)*golden, tat)
			// A new entry may become idle before the ones the last
			// sweep saw.
			sh.fullUntil = min(sh.fullUntil, tat)
		}
	}
	fullUntil := sh.fullUntil
	sh.mu.Unlock()

	if full {
		wait := max(fullUntil-now, 1)
		for i := range limits {
			out[i] = verdict{reset: wait, wait: wait}
		}
		return false, nil
	}
	for i, l := range limits {
		tat := out[i].reset
		if allowed {
			tat += l.interval
		}
		out[i] = judge(tat-now, l)
	}
	return allowed, nil
}

// judge computes the verdict of one rate from used, how far the key's TAT
// (after this request when it was admitted) runs ahead of now.
func judge(used int64, l limit) verdict {
	var v verdict
	v.remaining = max((l.tolerance-used)/l.interval, 0)
	// The next request passes once TAT - now <= tolerance - interval.
	v.wait = max(used-l.tolerance+l.interval, 0)
	if v.remaining > 0 {
		v.reset = used
	} else {
		v.reset = v.wait
	}
	return v
}

// sweep drops the idle entries of the shard and, when none is left to
// drop, remembers when the first active entry becomes idle. Called with the
// shard locked.
func (sh *shard) sweep(now int64) {
	sh.fullUntil = sh.t.sweep(now)
}

// sweepAll sweeps every shard, one at a time.
func (s *memStore) sweepAll() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.sweep(s.now())
		sh.mu.Unlock()
	}
}

// sweepInterval is how often the background sweeper drops idle entries.
const sweepInterval = 10 * time.Second

// run sweeps the store in the background until Destruct.
func (s *memStore) run(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.sweepAll()
		case <-s.stop:
			return
		}
	}
}

// Destruct stops the sweeper; the UsagePool calls it when the last handler
// using the zone is cleaned up.
func (s *memStore) Destruct() error {
	s.stopOnce.Do(func() { close(s.stop) })
	return nil
}
