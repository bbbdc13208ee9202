package ratelimit

import (
	"math/rand/v2"
	"testing"
	"unsafe"
)

func TestShardSize(t *testing.T) {
	if n := unsafe.Sizeof(shard{}); n%64 != 0 {
		t.Errorf("shard is %d bytes, want whole 64-byte cache lines", n)
	}
}

// The table agrees with a Go map under random inserts, updates, evictions
// and sweeps, with keys crowded into few home slots so probe runs wrap and
// shift; eviction always takes a key closest to idle.
func TestTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2)) //nolint:gosec // a fixed seed: the test must be reproducible
	tb := newTable(2)
	ref := map[uint64][2]int64{}
	idle := func(v [2]int64) int64 { return max(v[0], v[1]) }
	for step := range 100_000 {
		// Keys share their low bits often, and 0 appears (stored as 1, as
		// the real hash collision it stands for).
		k := uint64(rng.IntN(128)) << (rng.IntN(3) * 20)
		if rng.IntN(4) == 0 {
			// Homes in the last slots: runs wrap around the end.
			k = uint64(rng.IntN(128))<<20 | (0xFFFFF - uint64(rng.IntN(4)))
		}
		if k == 1 {
			k = 0
		}
		switch op := rng.IntN(20); {
		case op < 12:
			// TATs only grow.
			i, ok := tb.find(k)
			if _, wok := ref[k]; ok != wok {
				t.Fatalf("step %d: find(%d) = %v, want %v", step, k, ok, wok)
			}
			if ok {
				v := ref[k]
				for r := range v {
					v[r] += rng.Int64N(100)
				}
				copy(tb.tats(i), v[:])
				ref[k] = v
			} else {
				v := [2]int64{rng.Int64N(1000) + 1, rng.Int64N(1000) + 1}
				tb.insert(k, v[:])
				ref[k] = v
			}
		case op < 18:
			i, ok := tb.find(k)
			want, wok := ref[k]
			if ok != wok || (ok && [2]int64(tb.tats(i)) != want) {
				t.Fatalf("step %d: find(%d) = %v; want %v,%v", step, k, ok, want, wok)
			}
		case op < 19:
			if len(ref) == 0 {
				continue
			}
			least := int64(1<<63 - 1)
			for _, v := range ref {
				least = min(least, idle(v))
			}
			gone := tb.evict()
			if gone == 1 {
				gone = 0 // stored as 1; key 1 itself is never used
			}
			v, ok := ref[gone]
			if !ok {
				t.Fatalf("step %d: evicted %d, not a key", step, gone)
			}
			if idle(v) != least {
				t.Fatalf("step %d: evicted a key idle at %d, but one is idle at %d", step, idle(v), least)
			}
			if _, ok := tb.find(gone); ok {
				t.Fatalf("step %d: evicted key still found", step)
			}
			delete(ref, gone)
		default:
			now := rng.Int64N(1000)
			tb.sweep(now)
			for rk, v := range ref {
				if idle(v) <= now {
					delete(ref, rk)
				}
			}
		}
		if tb.n != len(ref) || len(tb.heap)+tb.queue.n != len(ref) {
			t.Fatalf("step %d: %d keys, %d order entries; want %d", step, tb.n, len(tb.heap)+tb.queue.n, len(ref))
		}
	}
	for k, v := range ref {
		if i, ok := tb.find(k); !ok || [2]int64(tb.tats(i)) != v {
			t.Fatalf("final find(%d) = %v; want %v", k, ok, v)
		}
	}
}
