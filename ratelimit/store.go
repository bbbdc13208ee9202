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
	// inflight counts the slots each key holds (keys with `concurrent`),
	// only while it holds one: bounded by the requests in progress.
	inflight map[uint64]int32
	// pad to whole cache lines: shards on separate lines (not last: a
	// zero-size last field would be padded)
	_ [(64 - (16+unsafe.Sizeof(table{}))%64) % 64]byte
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

func (s *memStore) take(ctx context.Context, k key, limits []limit, out []verdict) (bool, error) {
	d, err := s.acquire(ctx, k, ask{units: 1}, limits, out)
	return d.allowed, err
}

// ask is what one request asks of a zone: units from every rate (its
// cost, at least 1) and, with slots > 0, one of at most slots requests of
// its key in progress.
type ask struct {
	units int64
	slots int64
}

// decision is a limiter's answer to one request.
type decision struct {
	allowed bool
	// conc: refused for want of a slot (the rates took nothing).
	conc bool
	// free is the number of slots left after this request (with slots).
	free int64
	// held: the request holds a slot of the in-memory store, to give back
	// with release.
	held bool
	// local: the rates were taken in the in-memory store (a memory zone,
	// or on_error local), so a settlement goes there.
	local bool
	// lease is the Redis lease of the slot the request holds, if any.
	lease *lease
	// id is the key's text in Redis (a Redis decision).
	id string
}

// acquire checks one request of key k, asking q, against the slots and
// every limit, and only when all of them admit it takes a slot and q.units
// from every limit, in one step under the shard's lock: a request refused by
// either takes nothing from the other.
func (s *memStore) acquire(_ context.Context, k key, q ask, limits []limit, out []verdict) (decision, error) {
	if len(limits) != s.rates || len(out) < len(limits) {
		return decision{}, errRatesMismatch
	}
	out = out[:len(limits):len(limits)]
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	t := &sh.t
	now := s.now()
	d := decision{allowed: true, local: true}

	sh.mu.Lock()
	var inUse int64
	if q.slots > 0 {
		inUse = int64(sh.inflight[h])
		if inUse >= q.slots {
			d.allowed, d.conc = false, true
		}
	}
	var (
		tats  []int64
		found bool
		slot  int
	)
	if len(limits) > 0 {
		if t.n >= int(s.perShard.Load()) {
			// Full: a new key will need the next victim's slot. Load it
			// now, so that its cache miss overlaps the lookup's.
			t.touchNext()
		}
		slot, found = t.find(h)
		if found {
			tats = t.tats(slot)
		}
	}
	rateOK := true
	for i, l := range limits {
		tat := now
		if found {
			tat = max(tats[i], now)
		}
		out[i].reset = tat //nolint:gosec // G602: out has one element per limit (resliced above); the TAT before this request, for now
		if tat+q.units*l.interval-now > l.tolerance {
			rateOK = false
		}
	}
	if !rateOK {
		d.allowed, d.conc = false, false
	}
	if d.allowed && len(limits) > 0 {
		if found {
			for i, l := range limits {
				tats[i] = out[i].reset + q.units*l.interval //nolint:gosec // G602: out has one element per limit
			}
		} else {
			// A new key always gets room: the key closest to idle goes.
			for bound := int(s.perShard.Load()); t.n >= bound; {
				t.evict()
			}
			var buf [4]int64
			fresh := buf[:0]
			for i, l := range limits {
				fresh = append(fresh, out[i].reset+q.units*l.interval) //nolint:gosec // G602: out has one element per limit
			}
			t.insert(h, fresh)
		}
	}
	if q.slots > 0 {
		if d.allowed {
			if sh.inflight == nil {
				sh.inflight = make(map[uint64]int32)
			}
			sh.inflight[h] = int32(inUse + 1)
			inUse++
			d.held = true
		}
		d.free = max(q.slots-inUse, 0)
	}
	sh.mu.Unlock()

	for i, l := range limits {
		tat := out[i].reset //nolint:gosec // G602: out has one element per limit
		if d.allowed {
			tat += q.units * l.interval
			out[i] = judge(tat-now, l) //nolint:gosec // G602: out has one element per limit
		} else {
			out[i] = judgeRefused(tat-now, q.units, l) //nolint:gosec // G602: out has one element per limit
		}
	}
	return d, nil
}

// release gives back a slot that acquire took for key k.
func (s *memStore) release(k key) {
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	sh.mu.Lock()
	if n := sh.inflight[h]; n > 1 {
		sh.inflight[h] = n - 1
	} else {
		delete(sh.inflight, h)
	}
	sh.mu.Unlock()
}

// inProgress returns the slots key k holds.
func (s *memStore) inProgress(k key) int64 {
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return int64(sh.inflight[h])
}

// settle moves every TAT of key k by delta units (charged when positive,
// given back when negative): what a request reported it cost, minus what it
// took up front. A TAT never moves back past now (a bucket is never fuller
// than full) nor forward past now + debtCap(l) (the debt a key may owe).
func (s *memStore) settle(k key, limits []limit, delta int64) {
	if delta == 0 || len(limits) != s.rates || len(limits) == 0 {
		return
	}
	h := s.hash(k)
	sh := &s.shards[h>>s.shift]
	t := &sh.t
	now := s.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	slot, found := t.find(h)
	if !found {
		if delta < 0 {
			return // idle: nothing to give back
		}
		for bound := int(s.perShard.Load()); t.n >= bound; {
			t.evict()
		}
		var buf [4]int64
		fresh := buf[:0]
		for _, l := range limits {
			fresh = append(fresh, settled(now, now, delta, l))
		}
		t.insert(h, fresh)
		return
	}
	tats := t.tats(slot)
	for i, l := range limits {
		tats[i] = settled(tats[i], now, delta, l)
	}
}

// settled returns the TAT tat moved by delta units at now, bounded.
func settled(tat, now, delta int64, l limit) int64 {
	tat = max(tat, now)
	ceiling := now + debtCap(l)
	// Bound delta first, so that the product cannot overflow.
	if limitUnits := debtCap(l)/l.interval + 1; delta > limitUnits {
		delta = limitUnits
	} else if delta < -limitUnits {
		delta = -limitUnits
	}
	return min(max(tat+delta*l.interval, now), max(ceiling, tat))
}

// debtCap is the farthest a key's TAT may run ahead of now after a
// settlement: its tolerance plus one more burst, so a key owes at most one
// burst of debt. The Redis script clamps what it reads to the same bound,
// so no state (a clock stepped back included) locks a client out longer.
func debtCap(l limit) int64 { return 2 * l.tolerance }

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

// judgeRefused computes the verdict of one rate for a request of units
// that was refused, from used, how far the key's TAT runs ahead of now: its
// wait is until that same request would pass.
func judgeRefused(used, units int64, l limit) verdict {
	v := judge(used, l)
	v.wait = max(used-l.tolerance+units*l.interval, 0)
	if v.remaining == 0 {
		v.reset = max(used-l.tolerance+l.interval, 0)
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
