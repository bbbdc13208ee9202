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

// Eviction drops idle keys only: an active client keeps its (empty) bucket
// while new keys churn through a full store.
func TestEvictionKeepsActiveClient(t *testing.T) {
	s, c := testStore(10, 1)
	ls := []limit{lim(1, time.Second, 5)}
	out := make([]verdict, 1)
	active := textKey("active")
	for range 5 {
		s.take(bg, active, ls, out)
	}
	if ok, _ := s.take(bg, active, ls, out); ok {
		t.Fatal("active client not limited")
	}
	for i := range 9 {
		if ok, _ := s.take(bg, textKey(fmt.Sprint("k", i)), ls, out); !ok {
			t.Fatalf("key %d refused below max_keys", i)
		}
	}
	// Full of active keys: a new key is refused, nobody is evicted.
	if ok, _ := s.take(bg, textKey("new"), ls, out); ok {
		t.Fatal("new key admitted beyond max_keys")
	}
	if out[0].wait <= 0 {
		t.Errorf("full-store refusal without a wait: %+v", out[0])
	}
	if n := s.entries(); n != 10 {
		t.Fatalf("store holds %d keys, want 10", n)
	}
	// 2s later the 9 others are idle (full again) but the active client
	// still owes 3s: churn 1000 new keys through.
	c.advance(2 * time.Second)
	for i := range 1000 {
		s.take(bg, textKey(fmt.Sprint("churn", i)), ls, out)
		if s.entries() > 10 {
			t.Fatalf("store grew to %d keys beyond max_keys 10", s.entries())
		}
	}
	// The active client's bucket was not reset: it has refilled 2 of 5 in
	// 2s, so exactly 2 pass.
	n := 0
	for {
		if ok, _ := s.take(bg, active, ls, out); !ok {
			break
		}
		n++
	}
	if n != 2 {
		t.Fatalf("active client got %d requests after eviction churn, want 2 (bucket reset?)", n)
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
// memory flat.
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
	refused := 0
	var atHalf uint64
	for i := range 1_000_000 {
		// 1µs per request: 100k arrivals per 100ms, the store runs full.
		c.advance(time.Microsecond)
		k[0], k[1], k[2], k[3] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		ip := netip.AddrFrom4(k)
		if ok, _ := s.take(bg, key{kind: kindClient, addr: ip, bits: 32}, ls, out); !ok {
			refused++
		}
		if i == 499_999 {
			atHalf = heap()
		}
	}
	end := heap()
	n := s.entries()
	t.Logf("1M distinct keys, max_keys %d: %d held, %d refused as full; heap above baseline: %.1f MiB at 500k, %.1f MiB at 1M; process RSS %s -> %s",
		maxKeys, n, refused, float64(atHalf-base)/(1<<20), float64(end-base)/(1<<20), rssBase, rss())
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
