package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
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

// memStore is the in-memory GCRA store: one timestamp (the TAT) per key and
// rate, in a fixed number of shards, each a hash table under its own mutex, so
// there is no global lock and decisions on one key are exact under any
// concurrency. Keys are stored as 64-bit seeded hashes, so every key has the
// same size however long its text is.
//
// A key whose TATs are all not after now is idle: its buckets are full again
// and it means exactly what an absent key means, so dropping it never
// changes a decision. Memory is bounded by maxKeys, split evenly across the
// shards. When a shard is full and a new key arrives, the key of that shard
// closest to idle goes: an idle one when there is one, else the one that
// becomes idle first, so the client it belonged to regains at most what it
// still had to wait for. A new key is never refused for want of room, and a
// key that spent most of its burst is never dropped while keys of its shard
// are closer to idle. Idle keys are also swept in the background.
type memStore struct {
	now    func() int64 // clock in nanoseconds; injected by tests
	seedA  uint64       // address hash seeds
	seedB  uint64
	seedS  maphash.Seed
	shards []shard
	shift  uint // shard index = hash >> shift
	rates  int  // TATs per key: every handler of a zone has the same rates

	// perShard is the number of keys each shard may hold.
	perShard atomic.Int64

	stop     chan struct{}
	stopOnce sync.Once
}

type shard struct {
	mu sync.Mutex
	// pad to whole cache lines: shards on separate lines (not last: a
	// zero-size last field would be padded)
	_ [(64 - (8+unsafe.Sizeof(table{}))%64) % 64]byte
	t table
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
		rates:  nRates,
		stop:   make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].t = newTable(nRates)
	}
	for n > 1 {
		s.shift--
		n >>= 1
	}
	s.configure(maxKeys)
	return s
}

// configure sets the bound from the most recently provisioned handler of
// the zone. A smaller bound takes effect as new keys arrive.
func (s *memStore) configure(maxKeys int) {
	s.perShard.Store(max(int64(maxKeys)/int64(len(s.shards)), 1))
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
	if len(limits) != s.rates {
		return false, errRatesMismatch
	}
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	t := &sh.t
	now := s.now()

	sh.mu.Lock()
	if t.n >= int(s.perShard.Load()) {
		// Full: a new key will need the next victim's slot. Load it now,
		// so that its cache miss overlaps the lookup's.
		t.touchNext()
	}
	slot, found := t.find(h)
	var tats []int64
	if found {
		tats = t.tats(slot)
	}
	allowed := true
	for i, l := range limits {
		tat := now
		if found {
			tat = max(tats[i], now)
		}
		out[i].reset = tat // the TAT before this request, for now
		if tat+l.interval-now > l.tolerance {
			allowed = false
		}
	}
	if allowed {
		if found {
			for i, l := range limits {
				tats[i] = out[i].reset + l.interval
			}
		} else {
			// A new key always gets room: the key closest to idle goes.
			for bound := int(s.perShard.Load()); t.n >= bound; {
				t.evict()
			}
			var buf [4]int64
			fresh := buf[:0]
			for i, l := range limits {
				fresh = append(fresh, out[i].reset+l.interval)
			}
			t.insert(h, fresh)
		}
	}
	sh.mu.Unlock()

	for i, l := range limits {
		tat := out[i].reset
		if allowed {
			tat += l.interval
		}
		out[i] = judge(tat-now, l)
	}
	return allowed, nil
}

// errRatesMismatch: a handler's rates do not fit its zone's state (zone
// identity includes the rates, so this is a bug).
var errRatesMismatch = errors.New("throttle: rates do not match the zone's state")

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

// sweepAll sweeps every shard, one at a time.
func (s *memStore) sweepAll() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.t.sweep(s.now())
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
