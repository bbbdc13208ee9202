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
// redis-server, reporting ops/s and the p50/p99 latency of one check.
// Clients are distinct keys that are always admitted.
func BenchmarkRedisTake(b *testing.B) {
	srv := redistest.Start(b)
	z, _ := testRedisZone(b, []string{srv.URL()}, Redis{Timeout: caddy.Duration(time.Second)},
		rate(1_000_000_000, time.Second, 1_000_000_000))
	for _, callers := range []int{1, 16, 64} {
		b.Run("callers="+strconv.Itoa(callers), func(b *testing.B) {
			ids := make([]string, callers)
			for i := range ids {
				ids[i] = "bench-" + strconv.Itoa(i)
			}
			lat := make([][]time.Duration, callers)
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
						if res, ok := z.take(context.Background(), ids[c], out); res != redisDecided || !ok {
							b.Errorf("outcome %d allowed %v", res, ok)
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
				b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}
