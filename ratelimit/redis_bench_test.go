package ratelimit

import (
	"bufio"
	"context"
	"crypto/sha1" //nolint:gosec // G505: EVALSHA names a script by its SHA-1
	"encoding/hex"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/procstat"
	"github.com/caddygateway/caddy-gateway/internal/redistest"
	"github.com/caddygateway/caddy-gateway/internal/resp"

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
	b.Run(name+"/callers="+strconv.Itoa(callers), func(b *testing.B) {
		ids := make([]string, callers)
		outs := make([][]verdict, callers)
		lat := make([][]time.Duration, callers)
		for i := range ids {
			ids[i] = "bench-" + strconv.Itoa(i)
			outs[i] = make([]verdict, 1)
			// Preallocated: allocations are the checks' own.
			lat[i] = make([]time.Duration, 0, b.N/callers+b.N/4+16)
		}
		elapsed := roundTrips(b, callers, func(c int) bool {
			t0 := time.Now()
			if !take(ids[c], outs[c]) {
				return false
			}
			lat[c] = append(lat[c], time.Since(t0))
			return true
		})
		all := slices.Concat(lat...)
		slices.Sort(all)
		if len(all) > 0 {
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ops/s")
			b.ReportMetric(float64(all[len(all)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(all[len(all)*99/100].Nanoseconds()), "p99-ns")
		}
	})
}

// BenchmarkRedisRoundTrip puts the CPU that throttle's Redis check costs
// this process (cpu-ns/op: utime+stime per check; redis-server's own is
// apart) beside the floor of that check, at 1 to 64 concurrent callers:
//   - raw: the very command throttle sends (EVALSHA of its script, the
//     same keys and arguments) written and its reply read on a net.Conn
//     of its own per caller, with no client library and no goroutine but
//     the caller's: one write(2), one read(2) and the netpoller;
//   - take: throttle's check, through the rueidis client it uses.
//
// It also reports the read(2) and write(2) calls per check
// (/proc/self/io), which is where the CPU goes.
func BenchmarkRedisRoundTrip(b *testing.B) {
	srv := redistest.Start(b)
	r := rate(1_000_000_000, time.Second, 1_000_000_000)
	z, _ := testRedisZone(b, []string{srv.URL()}, Redis{Timeout: caddy.Duration(time.Second)}, r)
	var out [1]verdict
	if res, ok := z.take(context.Background(), "warm-up", out[:]); res != redisDecided || !ok { // loads the script
		b.Fatal("the warm-up check was not admitted")
	}
	sum := sha1.Sum([]byte(gcraScript)) //nolint:gosec // G401: the script's name for EVALSHA, not a secret
	sha := hex.EncodeToString(sum[:])
	for _, callers := range []int{1, 4, 16, 64} {
		b.Run("raw/callers="+strconv.Itoa(callers), func(b *testing.B) {
			conns := make([]net.Conn, callers)
			replies := make([]*bufio.Reader, callers)
			cmds := make([][]byte, callers)
			for i := range conns {
				c, err := new(net.Dialer).DialContext(b.Context(), "tcp", srv.Addr())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				conns[i], replies[i] = c, bufio.NewReader(c)
				keys := z.appendKeys(nil, "raw-"+strconv.Itoa(i))
				cmds[i] = resp.Command(slices.Concat([]string{"EVALSHA", sha, strconv.Itoa(len(keys))}, keys, z.args)...)
			}
			want := "*" + strconv.Itoa(len(z.limits)+2) + "\r\n"
			roundTrips(b, callers, func(c int) bool {
				if _, err := conns[c].Write(cmds[c]); err != nil {
					return false
				}
				// An array of integers: its header, then one line each.
				head, err := replies[c].ReadSlice('\n')
				if err != nil || string(head) != want {
					return false
				}
				for range len(z.limits) + 2 {
					if line, err := replies[c].ReadSlice('\n'); err != nil || line[0] != ':' {
						return false
					}
				}
				return true
			})
		})
		b.Run("take/callers="+strconv.Itoa(callers), func(b *testing.B) {
			ids := make([]string, callers)
			for i := range ids {
				ids[i] = "take-" + strconv.Itoa(i)
			}
			roundTrips(b, callers, func(c int) bool {
				var out [1]verdict
				res, ok := z.take(context.Background(), ids[c], out[:])
				return res == redisDecided && ok
			})
		})
	}
}

// roundTrips runs b.N calls of do, spread over callers goroutines,
// reports the process CPU and system calls per call, and returns the wall
// time the calls took, with the timer stopped.
func roundTrips(b *testing.B, callers int, do func(caller int) bool) time.Duration {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	sys := syscallsPerOp(b) // reads /proc before the timer starts
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuPerOp(b)
	start := time.Now()
	for c := range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if !do(c) {
					b.Error("a check was refused, not decided, or failed")
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer() // reading /proc allocates: not the calls' own
	cpu()
	sys()
	return elapsed
}

// syscallsPerOp reports the read and write system calls of this process
// per operation (/proc/self/io syscr and syscw), when Linux tells them.
func syscallsPerOp(b *testing.B) func() {
	b.Helper()
	before, err := procstat.IO(os.Getpid())
	return func() {
		if after, err1 := procstat.IO(os.Getpid()); err == nil && err1 == nil {
			d := after.Sub(before)
			b.ReportMetric(float64(d.Reads)/float64(b.N), "reads/op")
			b.ReportMetric(float64(d.Writes)/float64(b.N), "writes/op")
		}
	}
}
