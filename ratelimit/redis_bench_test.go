package ratelimit

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"

	"github.com/caddyserver/caddy/v2"
)

// BenchmarkRedisTake measures one Redis check (the script, auto-pipelined
// by the client) at 1, 16 and 64 concurrent callers against a real
// redis-server, reporting ops/s and the p50/p99 latency of one check, with
// the in-memory store under the same load as the baseline. Clients are
// distinct keys that are always admitted.
func BenchmarkRedisTake(b *testing.B) {
	srv := redistest.Start(b)
	r := rate(1_000_000_000, time.Second, 1_000_000_000)
	z, _ := testRedisZone(b, []string{srv.URL()}, Redis{Timeout: caddy.Duration(time.Second)}, r)
	mem := newMemStore(1000, 1, nil)
	defer mem.Destruct()
	limits := []limit{compile(r)}
	redisTake := func(id string, out []verdict) bool {
		res, ok := z.take(context.Background(), id, out)
		return res == redisDecided && ok
	}
	memTake := func(id string, out []verdict) bool {
		ok, _ := mem.take(context.Background(), key{kind: kindText, text: id}, limits, out)
		return ok
	}
	for _, backend := range []struct {
		name string
		take func(string, []verdict) bool
	}{{"memory", memTake}, {"redis", redisTake}} {
		for _, callers := range []int{1, 16, 64} {
			benchTake(b, backend.name, callers, backend.take)
		}
	}
}

func benchTake(b *testing.B, name string, callers int, take func(string, []verdict) bool) {
	b.Helper()
	{
		b.Run(name+"/callers="+strconv.Itoa(callers), func(b *testing.B) {
			ids := make([]string, callers)
			for i := range ids {
				ids[i] = "bench-" + strconv.Itoa(i)
			}
			lat := make([][]time.Duration, callers)
			for i := range lat { // preallocated: allocations are the checks' own
				lat[i] = make([]time.Duration, 0, b.N/callers+b.N/4+16)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for c := range callers {
				wg.Go(func() {
					out := make([]verdict, 1)
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						if !take(ids[c], out) {
							b.Error("refused or not decided")
							return
						}
						lat[c] = append(lat[c], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			if len(all) > 0 {
				b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
				b.ReportMetric(float64(all[len(all)/2].Nanoseconds()), "p50-ns")
				b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds()), "p99-ns")
			}
		})
	}
}
