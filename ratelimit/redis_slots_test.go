package ratelimit

import (
	"context"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyserver/caddy/v2"
)

// slotZone returns a Redis zone on srv with concurrent slots, cost units,
// debt (cost_header) and rates, on the client of a zone testRedisZone
// made.
func slotZone(t testing.TB, urls []string, cfg Redis, slots, units int64, debt bool, rates ...Rate) *redisZone {
	t.Helper()
	base, _ := testRedisZone(t, urls, cfg, rates...)
	cfg.URLs = urls
	cfg.provision()
	z, err := newRedisZone(redisZoneConfig{
		client: base.client, cfg: &cfg, zoneID: "s" + strconv.FormatInt(time.Now().UnixNano(), 36),
		zone: "test", rates: rates, units: units, slots: slots, debt: debt, maxKeys: 1000, logger: base.logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func noFailures() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "test_settle_failures_total", Help: "test"})
}

// TestRedisSlotsExact: 60 concurrent requests of one client with 6 slots:
// exactly 6 pass; once they finish, the lease set is empty.
func TestRedisSlotsExact(t *testing.T) {
	srv := redistest.Start(t)
	z := slotZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(5 * time.Second)}, 6, 1, false, rate(1000, time.Hour, 1000))
	var mu sync.Mutex
	var held []decision
	var refused atomic.Int64
	var wg sync.WaitGroup
	for range 60 {
		wg.Go(func() {
			out := make([]verdict, 1)
			res, d := z.acquire(context.Background(), "c", ask{units: 1, slots: 6}, out)
			if res != redisDecided {
				t.Errorf("outcome %d", res)
				return
			}
			if d.allowed {
				mu.Lock()
				held = append(held, d)
				mu.Unlock()
			} else if d.conc {
				refused.Add(1)
			} else {
				t.Errorf("refused by the rate: %+v", out[0])
			}
		})
	}
	wg.Wait()
	if len(held) != 6 || refused.Load() != 54 {
		t.Fatalf("%d passed, %d refused for want of a slot; want 6 and 54", len(held), refused.Load())
	}
	// A refusal for want of a slot took nothing from the rate.
	out := make([]verdict, 1)
	if _, d := z.acquire(context.Background(), "c", ask{units: 1}, out); !d.allowed || out[0].remaining != 1000-6-1 {
		t.Fatalf("rate after 6 admitted: %+v remaining %d, want 993", d, out[0].remaining)
	}
	keys := z.keys("c")
	if n := srv.MustCli("ZCARD", keys[len(keys)-1]); n != "6" {
		t.Fatalf("ZCARD %s, want 6", n)
	}
	for _, d := range held {
		z.finish(context.Background(), "c", d.lease, false, 0, noFailures())
	}
	if n := srv.MustCli("ZCARD", keys[len(keys)-1]); n != "0" {
		t.Fatalf("ZCARD %s after every request finished, want 0", n)
	}
	if n, err := z.inProgress(context.Background(), "c"); err != nil || n != 0 {
		t.Fatalf("in progress %d %v", n, err)
	}
}

// TestRedisLeaseExpiresWithoutRenewal: slots whose holder stops renewing
// (a crashed instance) come back within the lease; renewed ones stay.
func TestRedisLeaseExpiresWithoutRenewal(t *testing.T) {
	srv := redistest.Start(t)
	cfg := Redis{Timeout: caddy.Duration(5 * time.Second), Lease: caddy.Duration(time.Second)}
	crashed := slotZone(t, []string{srv.URL()}, cfg, 2, 1, false)
	for range 2 {
		if _, d := crashed.acquire(context.Background(), "k", ask{units: 1, slots: 2}, nil); !d.allowed {
			t.Fatal("slot refused")
		}
	}
	// Another instance of the zone (same Redis keys), with its renewer.
	live := slotZone(t, []string{srv.URL()}, cfg, 2, 1, false)
	live.base = crashed.base
	live.startRenewer()
	t.Cleanup(live.closeLeases)
	if _, d := live.acquire(context.Background(), "k", ask{units: 1, slots: 2}, nil); d.allowed || !d.conc {
		t.Fatalf("third slot: %+v, want refused for want of a slot", d)
	}
	time.Sleep(1100 * time.Millisecond)
	_, d := live.acquire(context.Background(), "k", ask{units: 1, slots: 2}, nil)
	if !d.allowed {
		t.Fatal("slots of a holder that stopped renewing did not come back within the lease")
	}
	// The renewer keeps the live slot beyond its lease.
	time.Sleep(1500 * time.Millisecond)
	if n, _ := live.inProgress(context.Background(), "k"); n != 1 {
		t.Fatalf("in progress %d after 1.5 leases with renewal, want 1", n)
	}
	live.finish(context.Background(), "k", d.lease, false, 0, noFailures())
	if n, _ := live.inProgress(context.Background(), "k"); n != 0 {
		t.Fatalf("in progress %d after finish", n)
	}
}

// TestRedisClockSteppedBack: state a Redis clock stepped back one hour
// leaves (every TAT an hour ahead of the new now) locks a 10/1s client out
// for at most its own burst, and the refusal cache never waits longer
// either. Without the clamp the client would be refused for an hour.
func TestRedisClockSteppedBack(t *testing.T) {
	srv := redistest.Start(t)
	for _, debt := range []bool{false, true} {
		z := slotZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(5 * time.Second)}, 0, 1, debt, rate(10, time.Second, 10))
		id := "stepped-" + strconv.FormatBool(debt)
		now := redisMicros(t, srv)
		// Written before the step: TAT = then + a full burst; then is one
		// hour after the new now.
		tat := now + int64(time.Hour/time.Microsecond) + 1_000_000
		srv.MustCli("SET", z.keys(id)[0], strconv.FormatInt(tat, 10), "PX", "3700000")
		out := make([]verdict, 1)
		_, d := z.acquire(context.Background(), id, ask{units: 1}, out)
		bound := time.Second
		if debt {
			bound = 2 * time.Second
		}
		if d.allowed || time.Duration(out[0].wait) > bound {
			t.Fatalf("debt %v: after the step: allowed %v, wait %s; want refused for at most %s", debt, d.allowed, time.Duration(out[0].wait), bound)
		}
		// The refusal cache holds it no longer.
		sh := z.refused.shard(id)
		sh.mu.Lock()
		r := sh.m[id]
		sh.mu.Unlock()
		if time.Duration(r.until-r.at) > bound {
			t.Fatalf("refusal cached for %s, want at most %s", time.Duration(r.until-r.at), bound)
		}
		time.Sleep(time.Duration(out[0].wait) + 20*time.Millisecond)
		if _, d := z.acquire(context.Background(), id, ask{units: 1}, out); !d.allowed {
			t.Fatalf("debt %v: refused after its wait", debt)
		}
	}
}

// TestRedisClockSteppedBackLeases: a lease scored an hour ahead (written
// before Redis's clock stepped back one hour, by an instance that then
// crashed) does not hold its slot for the hour.
func TestRedisClockSteppedBackLeases(t *testing.T) {
	srv := redistest.Start(t)
	z := slotZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(5 * time.Second)}, 1, 1, false)
	keys := z.keys("stepped")
	aheadMS := redisMicros(t, srv)/1000 + int64(time.Hour/time.Millisecond) + 30_000
	srv.MustCli("ZADD", keys[len(keys)-1], strconv.FormatInt(aheadMS, 10), "crashed:1")
	if _, d := z.acquire(context.Background(), "stepped", ask{units: 1, slots: 1}, nil); !d.allowed {
		t.Fatal("a lease left an hour ahead by a clock step holds its slot")
	}
}

// redisMicros returns Redis's clock in microseconds.
func redisMicros(t *testing.T, srv *redistest.Server) int64 {
	f := strings.Fields(srv.MustCli("TIME"))
	s, _ := strconv.ParseInt(f[0], 10, 64)
	us, _ := strconv.ParseInt(f[1], 10, 64)
	return s*1_000_000 + us
}

// TestRedisMemoryAgree: the same sequence of costs and settlements gives
// the same decisions and remaining units in memory and on Redis, and never
// lets more units through than the rate allows (with the period of an hour,
// refill during the test is below one unit).
func TestRedisMemoryAgree(t *testing.T) {
	srv := redistest.Start(t)
	type step struct {
		cost    int64
		settle  int64 // reported cost; -1 none
		allowed bool
	}
	for _, tc := range []struct {
		name  string
		burst int
		steps []step
	}{
		{"costs", 10, []step{{3, -1, true}, {3, -1, true}, {3, -1, true}, {3, -1, false}, {1, -1, true}, {1, -1, false}}},
		{"refunds", 10, []step{{5, 0, true}, {5, 1, true}, {5, -1, true}, {5, -1, false}, {3, -1, true}, {2, -1, false}, {1, -1, true}, {1, -1, false}}},
		{"debt", 10, []step{{1, 15, true}, {1, -1, false}, {10, -1, false}}},
		{"debt capped", 4, []step{{1, 1000, true}, {1, -1, false}}},
		{"full refund never above full", 6, []step{{6, 0, true}, {6, 0, true}, {6, -1, true}, {1, -1, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rate(1, time.Hour, tc.burst)
			z := slotZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(5 * time.Second)}, 0, 1, true, r)
			z.refused = newRefusalCache(16)
			clk := new(clock)
			clk.t.Store(int64(time.Hour))
			mem := newMemStore(1000, 1, clk.now)
			lims := []limit{compile(r)}
			k := key{kind: kindText, text: "agree"}
			var through int64 // units let through, as finally charged
			for i, s := range tc.steps {
				mo, ro := make([]verdict, 1), make([]verdict, 1)
				md, _ := mem.acquire(context.Background(), k, ask{units: s.cost}, lims, mo)
				z.refused = newRefusalCache(16) // ask Redis every time
				_, rd := z.acquire(context.Background(), "agree", ask{units: s.cost}, ro)
				if md.allowed != s.allowed || rd.allowed != s.allowed {
					t.Fatalf("step %d: memory %v, Redis %v, want %v", i, md.allowed, rd.allowed, s.allowed)
				}
				if mo[0].remaining != ro[0].remaining {
					t.Fatalf("step %d: remaining memory %d, Redis %d", i, mo[0].remaining, ro[0].remaining)
				}
				if !s.allowed {
					continue
				}
				charged := s.cost
				if s.settle >= 0 {
					mem.settle(k, lims, s.settle-s.cost)
					z.finish(context.Background(), "agree", nil, true, s.settle-s.cost, noFailures())
					charged = s.settle
				}
				through += charged
			}
			// Whatever went through, the rest of the burst is what both
			// still admit, and never more than the burst in total.
			left := func() int64 {
				var n int64
				for {
					o := make([]verdict, 1)
					d, _ := mem.acquire(context.Background(), k, ask{units: 1}, lims, o)
					if !d.allowed {
						return n
					}
					n++
				}
			}
			var rn int64
			for {
				o := make([]verdict, 1)
				z.refused = newRefusalCache(16)
				if _, d := z.acquire(context.Background(), "agree", ask{units: 1}, o); !d.allowed {
					break
				}
				rn++
			}
			mn := left()
			if mn != rn {
				t.Fatalf("units left: memory %d, Redis %d", mn, rn)
			}
			if mn > max(int64(tc.burst)-through, 0) {
				t.Fatalf("%d units charged and %d more admitted: more than the burst of %d", through, mn, tc.burst)
			}
		})
	}
}

// TestRedisSettleFailureCountedOnce: a settlement Redis cannot record is
// counted once, logged once, and not retried.
func TestRedisSettleFailureCountedOnce(t *testing.T) {
	srv := redistest.Start(t)
	z := slotZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(200 * time.Millisecond)}, 0, 1, true, rate(1, time.Hour, 10))
	srv.Kill()
	failures := noFailures()
	calls := value(z.metrics.calls)
	for range 3 {
		z.finish(context.Background(), "gone", nil, true, 3, failures)
	}
	if got := value(failures); got != 3 {
		t.Fatalf("%v failures counted, want 3 (one per settlement)", got)
	}
	if got := value(z.metrics.calls) - calls; got > 1 {
		t.Fatalf("%v calls for 3 settlements after Redis died, want at most 1 (no retries; the circuit opens)", got)
	}
}

// TestRefusalCacheFullShardBounded: a full shard of waiting clients does
// not make store scan it: a new refusal is not cached, and stays cheap.
func TestRefusalCacheFullShardBounded(t *testing.T) {
	c := newRefusalCache(DefaultMaxKeys)
	limits := []redisLimit{newRedisLimit(rate(1, time.Hour, 1), false)}
	out := []verdict{{remaining: 0, reset: int64(time.Hour), wait: int64(time.Hour)}}
	fillShard(c, 0, limits, out)
	sh := &c.shards[0]
	n := len(sh.m)
	id := idInShard(c, 0, n+1)
	c.store(id, limits, out)
	if len(sh.m) != n {
		t.Fatalf("a full shard of waiting clients grew from %d to %d", n, len(sh.m))
	}
}

// fillShard stores waiting refusals in shard i until it is full.
func fillShard(c *refusalCache, i int, limits []redisLimit, out []verdict) {
	for j := 0; len(c.shards[i].m) < c.per; j++ {
		if id := "fill-" + strconv.Itoa(j); c.shard(id) == &c.shards[i] {
			c.store(id, limits, out)
		}
	}
}

// idInShard returns an id of shard i, the n-th such from "new-".
func idInShard(c *refusalCache, i, n int) string {
	for j := 0; ; j++ {
		if id := "new-" + strconv.Itoa(j); c.shard(id) == &c.shards[i] {
			if n--; n <= 0 {
				return id
			}
		}
	}
}

// BenchmarkRefusalStoreFullShard: a refusal stored into a shard full of
// clients still waiting, at the default max_keys (3,125 entries a shard).
func BenchmarkRefusalStoreFullShard(b *testing.B) {
	c := newRefusalCache(DefaultMaxKeys)
	limits := []redisLimit{newRedisLimit(rate(1, time.Hour, 1), false)}
	out := []verdict{{remaining: 0, reset: int64(time.Hour), wait: int64(time.Hour)}}
	fillShard(c, 0, limits, out)
	ids := make([]string, 64)
	for i := range ids {
		ids[i] = idInShard(c, 0, i+1)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.store(ids[i%len(ids)], limits, out)
		i++
	}
}

// TestRedisDownConcurrencyPolicies: with Redis dead, on_error local keeps
// a local semaphore of the same size (and settles in memory); allow lets
// requests pass without a slot; deny refuses them 503.
func TestRedisDownConcurrencyPolicies(t *testing.T) {
	srv := redistest.Start(t)
	for _, policy := range []string{OnErrorLocal, OnErrorAllow, OnErrorDeny} {
		t.Run(policy, func(t *testing.T) {
			h := &Handler{
				Zone: "down-" + policy, Concurrent: 2, Rate: []Rate{rate(1, time.Hour, 10)}, CostHeader: "X-Used",
				Redis: &Redis{URLs: []string{srv.URL()}, OnError: policy, Timeout: caddy.Duration(200 * time.Millisecond)},
			}
			provision(t, h)
			srv.Kill()
			t.Cleanup(srv.Restart)
			b := newBlocking()
			b.header = map[string]string{"X-Used": "4"}
			held := []<-chan *httptest.ResponseRecorder{serveAsync(h, "192.0.2.1", b), serveAsync(h, "192.0.2.1", b)}
			switch policy {
			case OnErrorDeny:
				for _, ch := range held {
					if w := <-ch; w.Code != 503 {
						t.Fatalf("deny: %d, want 503", w.Code)
					}
				}
				return
			default:
				<-b.started
				<-b.started
			}
			w, err := serveWith(h, "192.0.2.1", okHandler)
			want := 429
			if policy == OnErrorAllow {
				want = 200
			}
			if code(w, err) != want {
				t.Fatalf("third request with two in progress: %d, want %d", code(w, err), want)
			}
			close(b.release)
			for _, ch := range held {
				<-ch
			}
			if n := inflight(h.mem); n != 0 {
				t.Fatalf("%d local slots held after the requests finished", n)
			}
			if policy == OnErrorLocal {
				// 4 + 4 settled locally of 10: one more of 1 leaves 1.
				w, _ := serveWith(h, "192.0.2.1", okHandler)
				if got := w.Header().Get("RateLimit"); !strings.HasPrefix(got, `"down-local";r=1;`) {
					t.Fatalf("RateLimit %q: local settlements not applied", got)
				}
			}
		})
	}
}
