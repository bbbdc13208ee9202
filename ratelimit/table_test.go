package ratelimit

import (
	"math/rand/v2"
	"testing"
	"unsafe"
)

func TestShardSize(t *testing.T) {
	if n := unsafe.Sizeof(shard{}); n != 64 {
		t.Errorf("shard is %d bytes, want one 64-byte cache line", n)
	}
}

// The table agrees with a Go map under random inserts, updates and sweeps,
// with keys crowded into few home slots so probe runs wrap and shift.
func TestTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2)) //nolint:gosec // a fixed seed: the test must be reproducible
	var tb table
	ref := map[uint64]int64{}
	for step := range 200_000 {
		// Keys share their low bits often, and 0 appears (stored as 1, as
		// the real hash collision it stands for).
		k := uint64(rng.IntN(512)) << (rng.IntN(3) * 20)
		if rng.IntN(4) == 0 {
			// Homes in the last slots: runs wrap around the end.
			k = uint64(rng.IntN(512))<<20 | (0xFFFFF - uint64(rng.IntN(4)))
		}
		if k == 1 {
			k = 0
		}
		switch op := rng.IntN(10); {
		case op < 6:
			v := rng.Int64N(1000) + 1
			tb.set(k, v)
			ref[k] = v
		case op < 9:
			got, ok := tb.get(k)
			want, wok := ref[k]
			if ok != wok || got != want {
				t.Fatalf("step %d: get(%d) = %d,%v; want %d,%v", step, k, got, ok, want, wok)
			}
		default:
			now := rng.Int64N(1000)
			next := tb.sweep(now)
			wantNext := int64(1<<63 - 1)
			for rk, v := range ref {
				if v <= now {
					delete(ref, rk)
				} else {
					wantNext = min(wantNext, v)
				}
			}
			if next != wantNext {
				t.Fatalf("step %d: sweep next %d, want %d", step, next, wantNext)
			}
		}
		if tb.n != len(ref) {
			t.Fatalf("step %d: %d entries, want %d", step, tb.n, len(ref))
		}
	}
	for k, v := range ref {
		if got, ok := tb.get(k); !ok || got != v {
			t.Fatalf("final get(%d) = %d,%v; want %d", k, got, ok, v)
		}
	}
}
