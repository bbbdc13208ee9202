package ratelimit

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clock is a manual clock for a memStore.
type clock struct{ t atomic.Int64 }

func (c *clock) now() int64              { return c.t.Load() }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

func testStore(maxKeys, nRates int) (*memStore, *clock) {
	c := new(clock)
	c.t.Store(int64(time.Hour)) // any start
	return newMemStore(maxKeys, nRates, c.now), c
}

func lim(events int, period time.Duration, burst int) limit {
	t := int64(period) / int64(events)
	return limit{interval: t, tolerance: t * int64(burst)}
}

func textKey(s string) key { return key{kind: kindText, text: s} }

// bg is the context of store calls in tests.
var bg = context.Background()

func TestGCRABurstThenRate(t *testing.T) {
	s, c := testStore(100, 1)
	ls := []limit{lim(10, time.Second, 5)} // one every 100ms, bursts of 5
	out := make([]verdict, 1)
	k := textKey("a")

	for i := range 5 {
		ok, _ := s.take(bg, k, ls, out)
		if !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
		if want := int64(4 - i); out[0].remaining != want {
			t.Errorf("request %d: remaining %d, want %d", i+1, out[0].remaining, want)
		}
	}
	// After 5 at once the bucket is empty: the next passes in 100ms.
	if out[0].reset != int64(100*time.Millisecond) {
		t.Errorf("reset after burst = %v, want 100ms", time.Duration(out[0].reset))
	}
	ok, _ := s.take(bg, k, ls, out)
	if ok {
		t.Fatal("6th request passed")
	}
	if out[0].wait != int64(100*time.Millisecond) || out[0].remaining != 0 {
		t.Errorf("refusal verdict %+v, want wait 100ms, remaining 0", out[0])
	}
	c.advance(99 * time.Millisecond)
	if ok, _ := s.take(bg, k, ls, out); ok {
		t.Fatal("passed 1ms before its time")
	}
	if out[0].wait != int64(time.Millisecond) {
		t.Errorf("wait = %v, want 1ms", time.Duration(out[0].wait))
	}
	c.advance(time.Millisecond)
	if ok, _ := s.take(bg, k, ls, out); !ok {
		t.Fatal("refused at its time")
	}
	// A quiet time refills the bucket, never beyond the burst.
	c.advance(time.Hour)
	n := 0
	for {
		if ok, _ := s.take(bg, k, ls, out); !ok {
			break
		}
		n++
	}
	if n != 5 {
		t.Errorf("after a quiet hour %d passed, want the burst of 5", n)
	}
}

func TestGCRAResetWhenRemaining(t *testing.T) {
	s, _ := testStore(100, 1)
	ls := []limit{lim(1, time.Second, 10)}
	out := make([]verdict, 1)
	for range 3 {
		s.take(bg, textKey("a"), ls, out)
	}
	// 3 of 10 used: full again in 3s, 7 left.
	if out[0].remaining != 7 || out[0].reset != int64(3*time.Second) {
		t.Errorf("verdict %+v, want remaining 7, reset 3s", out[0])
	}
}

func TestAllOrNothing(t *testing.T) {
	s, c := testStore(100, 2)
	ls := []limit{lim(10, time.Second, 10), lim(2, time.Minute, 2)}
	out := make([]verdict, 2)
	k := textKey("a")
	for range 2 {
		if ok, _ := s.take(bg, k, ls, out); !ok {
			t.Fatal("refused within both limits")
		}
	}
	if out[0].remaining != 8 {
		t.Fatalf("first rate remaining %d, want 8", out[0].remaining)
	}
	// The second rate refuses: the first must not be charged.
	for range 20 {
		if ok, _ := s.take(bg, k, ls, out); ok {
			t.Fatal("passed beyond the second rate")
		}
		if out[0].remaining != 8 {
			t.Fatalf("refused request consumed from the first rate: remaining %d, want 8", out[0].remaining)
		}
		if out[1].remaining != 0 || out[1].wait != int64(30*time.Second) {
			t.Fatalf("second rate verdict %+v, want remaining 0, wait 30s", out[1])
		}
	}
	c.advance(30 * time.Second)
	if ok, _ := s.take(bg, k, ls, out); !ok {
		t.Fatal("refused after the second rate refilled one")
	}
	if out[0].remaining != 9 { // 30s refilled the first rate entirely; this one used 1
		t.Errorf("first rate remaining %d, want 9", out[0].remaining)
	}
}

// With the clock frozen, exactly burst requests pass however many
// goroutines race for one key.
func TestConcurrencyExact(t *testing.T) {
	s, _ := testStore(1000, 1)
	ls := []limit{lim(1, time.Minute, 37)}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			out := make([]verdict, 1)
			for range 50 {
				if ok, _ := s.take(bg, textKey("hot"), ls, out); ok {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := admitted.Load(); n != 37 {
		t.Fatalf("admitted %d, want exactly the burst of 37", n)
	}
}

// With the real clock, admitted never exceeds burst + rate × elapsed.
func TestConcurrencyRealClock(t *testing.T) {
	s := newMemStore(1000, 1, nil)
	ls := []limit{lim(1000, time.Second, 20)} // one per ms
	start := time.Now()
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			out := make([]verdict, 1)
			for time.Since(start) < 50*time.Millisecond {
				if ok, _ := s.take(bg, textKey("hot"), ls, out); ok {
					admitted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	limit := 20 + int64(elapsed/time.Millisecond)
	if n := admitted.Load(); n > limit || n < 20 {
		t.Fatalf("admitted %d in %v, want between 20 and %d", n, elapsed, limit)
	}
}

func TestKeysAreSeparate(t *testing.T) {
	s, _ := testStore(100, 1)
	ls := []limit{lim(1, time.Minute, 1)}
	out := make([]verdict, 1)
	a := key{kind: kindClient, addr: netip.MustParseAddr("192.0.2.1"), bits: 32}
	b := key{kind: kindClient, addr: netip.MustParseAddr("192.0.2.2"), bits: 32}
	for _, k := range []key{a, b, textKey("192.0.2.1"), textKey("x"), {kind: kindAddr, addr: a.addr, bits: 32}} {
		if ok, _ := s.take(bg, k, ls, out); !ok {
			t.Fatalf("first request of %+v refused", k)
		}
	}
	if ok, _ := s.take(bg, a, ls, out); ok {
		t.Fatal("second request of a passed")
	}
}

// A full store makes room for every new key: idle keys go first, then the
// key closest to idle; a client that spent most of its burst stays while
// keys closer to idle exist.
func TestFloodPolicy(t *testing.T) {
	s, c := testStore(10, 1)
	ls := []limit{lim(1, time.Second, 5)} // one a second, bursts of 5
	out := make([]verdict, 1)
	active := textKey("active")
	for range 4 {
		s.take(bg, active, ls, out)
	}
	// 9 keys with one request each: idle 1s from now.
	for i := range 9 {
		if ok, _ := s.take(bg, textKey(fmt.Sprint("k", i)), ls, out); !ok {
			t.Fatalf("key %d refused below max_keys", i)
		}
	}
	// Full: every new key is admitted, the store stays within max_keys,
	// and the active client (4 of 5 spent, 4s from idle) is never the one
	// to go while the others are closer to idle.
	for i := range 1000 {
		if i%100 == 0 {
			c.advance(10 * time.Millisecond)
		}
		if ok, _ := s.take(bg, textKey(fmt.Sprint("flood", i)), ls, out); !ok {
			t.Fatalf("new key %d refused for want of room", i)
		}
		if n := s.entries(); n > 10 {
			t.Fatalf("store grew to %d keys beyond max_keys 10", n)
		}
	}
	// Its bucket was kept: 4 spent, 0.1s refilled: exactly 1 passes.
	n := 0
	for {
		if ok, _ := s.take(bg, active, ls, out); !ok {
			break
		}
		n++
	}
	if n != 1 {
		t.Fatalf("active client got %d requests after the flood, want 1 (bucket reset?)", n)
	}
}

// With nothing idle, the key closest to idle goes, and the client it
// belonged to regains at most what it still had to wait for.
func TestEvictsClosestToIdle(t *testing.T) {
	s, c := testStore(3, 1)
	ls := []limit{lim(1, time.Second, 10)}
	out := make([]verdict, 1)
	spend := func(k string, n int) {
		for range n {
			if ok, _ := s.take(bg, textKey(k), ls, out); !ok {
				t.Fatalf("%s refused", k)
			}
		}
	}
	spend("heavy", 9) // idle in 9s
	spend("light", 2) // idle in 2s
	spend("mid", 5)   // idle in 5s
	c.advance(time.Second)
	spend("new", 1) // full: "light" (1s from idle) goes
	for _, k := range []string{"heavy", "mid", "new"} {
		if _, ok := s.shardOf(textKey(k)).t.find(s.hash(textKey(k))); !ok {
			t.Fatalf("%s evicted instead of the key closest to idle", k)
		}
	}
	if _, ok := s.shardOf(textKey("light")).t.find(s.hash(textKey("light"))); ok {
		t.Fatal("the key closest to idle was kept")
	}
	// Idle keys go before any active one.
	c.advance(4 * time.Second) // "new" idle; "mid" idle; "heavy" 4s left
	spend("newer", 1)
	spend("newest", 1)
	if _, ok := s.shardOf(textKey("heavy")).t.find(s.hash(textKey("heavy"))); !ok {
		t.Fatal("an active key evicted while idle keys existed")
	}
}

func TestSweepDropsOnlyIdle(t *testing.T) {
	s, c := testStore(1000, 1)
	ls := []limit{lim(1, time.Second, 10)}
	out := make([]verdict, 1)
	for i := range 100 {
		s.take(bg, textKey(strconv.Itoa(i)), ls, out)
	}
	for range 5 {
		s.take(bg, textKey("busy"), ls, out) // 6 used in total: full in 6s
	}
	c.advance(2 * time.Second)
	s.sweepAll()
	if n := s.entries(); n != 1 {
		t.Fatalf("after sweep %d keys left, want only the busy one", n)
	}
}

// Long keys are stored as fixed-size hashes.
func TestLongKeysFixedSize(t *testing.T) {
	s, _ := testStore(1000, 1)
	ls := []limit{lim(1, time.Second, 10)}
	out := make([]verdict, 1)
	long := string(make([]byte, 1<<20))
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range 500 {
		s.take(bg, textKey(long+strconv.Itoa(i)), ls, out)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 1<<20 {
		t.Fatalf("500 keys of 1 MiB grew the heap by %d bytes", grown)
	}
}

// A flood of a million distinct keys keeps the store within max_keys and
// memory flat, and locks no one out: every new key is admitted, and a client
// hammering through the flood keeps its (spent) bucket.
func TestMillionKeysFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const maxKeys = 100_000
	s, c := testStore(maxKeys, 1)
	ls := []limit{lim(10, time.Second, 20)} // a key is idle 100ms after its request
	out := make([]verdict, 1)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()
	rssBase := rss()
	var k [4]byte
	var atHalf uint64
	active := textKey("active")
	admitted := 0
	for i := range 1_000_000 {
		// 100ns per request: 1M arrivals in 100ms, none idle before
		// 100ms: the store runs full of active keys.
		c.advance(100 * time.Nanosecond)
		k[0], k[1], k[2], k[3] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		ip := netip.AddrFrom4(k)
		if ok, _ := s.take(bg, key{kind: kindClient, addr: ip, bits: 32}, ls, out); !ok {
			t.Fatalf("new key %d refused", i)
		}
		if i%1000 == 0 {
			if ok, _ := s.take(bg, active, ls, out); ok {
				admitted++
			}
		}
		if i == 499_999 {
			atHalf = heap()
		}
	}
	// burst 20 + 10/s × 100ms = 21; an eviction would hand it 20 more.
	if admitted < 20 || admitted > 22 {
		t.Errorf("client hammering through the flood admitted %d times, want 21 (evicted?)", admitted)
	}
	end := heap()
	n := s.entries()
	t.Logf("1M distinct keys, max_keys %d: %d held, none refused; heap above baseline: %.1f MiB at 500k, %.1f MiB at 1M; process RSS %s -> %s",
		maxKeys, n, float64(atHalf-base)/(1<<20), float64(end-base)/(1<<20), rssBase, rss())
	if n > maxKeys {
		t.Fatalf("store holds %d keys, beyond max_keys %d", n, maxKeys)
	}
	if end > atHalf+atHalf/4 {
		t.Fatalf("heap not flat: %d bytes at 500k keys, %d at 1M", atHalf-base, end-base)
	}
	if end-base > 32<<20 {
		t.Fatalf("heap grew %d bytes for %d keys", end-base, maxKeys)
	}
}

func BenchmarkTakeOneKey(b *testing.B) {
	s := newMemStore(DefaultMaxKeys, 1, nil)
	ls := []limit{lim(1_000_000_000, time.Second, 1_000_000_000)}
	k := key{kind: kindClient, addr: netip.MustParseAddr("192.0.2.1"), bits: 32}
	b.ReportAllocs()
	defer cpuPerOp(b)()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]verdict, 1)
		for pb.Next() {
			s.take(bg, k, ls, out)
		}
	})
}

func BenchmarkTakeManyKeys(b *testing.B) {
	const n = 1 << 16
	s := newMemStore(DefaultMaxKeys, 1, nil)
	ls := []limit{lim(1_000_000_000, time.Second, 1_000_000_000)}
	keys := make([]key, n)
	out := make([]verdict, 1)
	for i := range keys {
		keys[i] = key{kind: kindClient, addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), bits: 32}
		s.take(bg, keys[i], ls, out)
	}
	var seq atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]verdict, 1)
		i := seq.Add(7919)
		for pb.Next() {
			i++
			s.take(bg, keys[i%n], ls, out)
		}
	})
}

func BenchmarkTakeTwoRates(b *testing.B) {
	s := newMemStore(DefaultMaxKeys, 2, nil)
	ls := []limit{lim(1_000_000_000, time.Second, 1_000_000_000), lim(1_000_000_000, time.Hour, 1_000_000_000)}
	k := textKey("api-key-0123456789")
	b.ReportAllocs()
	defer cpuPerOp(b)()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]verdict, 2)
		for pb.Next() {
			s.take(bg, k, ls, out)
		}
	})
}

// rss returns the process's resident set size as Linux reports it, or "?".
func rss() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// entries returns the number of entries s holds.
func (s *memStore) entries() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.t.n
		sh.mu.Unlock()
	}
	return n
}

// Keys of different kinds have different texts, even for one address.
func TestKeyTextKinds(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.0")
	seen := map[string]key{}
	for _, k := range []key{
		{kind: kindClient, addr: a, bits: 24},
		{kind: kindAddr, addr: a, bits: 24},
		{kind: kindClient, addr: a, bits: 32},
		textKey("192.0.2.0/24"),
		textKey("c:192.0.2.0/24"),
		{kind: kindClient},
	} {
		txt := string(k.appendText(nil))
		if prev, dup := seen[txt]; dup {
			t.Fatalf("%+v and %+v share the text %q", prev, k, txt)
		}
		seen[txt] = k
	}
}

// shardOf returns the shard of k.
func (s *memStore) shardOf(k key) *shard { return &s.shards[s.hash(k)>>s.shift] }

// fullStore returns a store of DefaultMaxKeys keys, one rate of 10/1h,
// filled with active keys (none idle for an hour).
func fullStore() (*memStore, []limit) {
	s := newMemStore(DefaultMaxKeys, 1, nil)
	ls := []limit{lim(10, time.Hour, 10)}
	out := make([]verdict, 1)
	for i := range 2 * DefaultMaxKeys {
		s.take(bg, key{kind: kindClient, addr: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), bits: 32}, ls, out)
	}
	return s, ls
}

// BenchmarkTakeFullTableNewKey: a new key arrives at a zone full of active
// keys (a flood's decision: one eviction and one insertion).
func BenchmarkTakeFullTableNewKey(b *testing.B) {
	s, ls := fullStore()
	var seq atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]verdict, 1)
		for pb.Next() {
			i := seq.Add(1)
			s.take(bg, key{kind: kindClient, addr: netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), bits: 32}, ls, out)
		}
	})
}

// BenchmarkTakeFullTableMixed: on a full zone, known keys that keep
// spending (so the eviction order goes stale) interleaved with new keys.
func BenchmarkTakeFullTableMixed(b *testing.B) {
	s, _ := fullStore()
	ls := []limit{lim(1_000_000_000, time.Hour, 1_000_000_000)}
	var seq atomic.Uint32
	b.ReportAllocs()
	b.ResetTimer()
	defer cpuPerOp(b)()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]verdict, 1)
		for pb.Next() {
			i := seq.Add(1)
			first := byte(10) // known
			if i%4 == 0 {
				first = 11 // new
			}
			s.take(bg, key{kind: kindClient, addr: netip.AddrFrom4([4]byte{first, byte(i >> 16), byte(i >> 8), byte(i)}), bits: 32}, ls, out)
		}
	})
}
