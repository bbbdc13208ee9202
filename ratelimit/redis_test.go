package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/caddygateway/caddy-gateway/internal/redistest"
	"github.com/redis/rueidis"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
)

// testRedisZone returns the Redis side of a handler with rates on urls,
// its client connected (or its first attempt over), and the log.
func testRedisZone(t testing.TB, urls []string, cfg Redis, rates ...Rate) (*redisZone, *observer.ObservedLogs) {
	t.Helper()
	return testRedisZoneOpt(t, urls, cfg, nil, rates...)
}

// testRedisZoneOpt is testRedisZone with the client options changed by
// edit (when not nil) before connecting.
func testRedisZoneOpt(t testing.TB, urls []string, cfg Redis, edit func(*rueidis.ClientOption), rates ...Rate) (*redisZone, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)
	cfg.URLs = urls
	cfg.provision()
	if err := cfg.check("test"); err != nil {
		t.Fatal(err)
	}
	resolved, opt, err := cfg.resolve(caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(&opt)
	}
	c := newRedisClient(opt, resolved, time.Duration(cfg.Timeout), cfg.Prefix, logger)
	t.Cleanup(func() { _ = c.Destruct(); c.wait() })
	c.waitReady(5 * time.Second)
	// On a loaded machine the first PING may miss its deadline: give a
	// Redis that is up the time to be seen up.
	for deadline := time.Now().Add(2 * time.Second); !c.root.up.Load() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	for i := range rates {
		if rates[i].Burst == 0 {
			rates[i].Burst = rates[i].Events
		}
	}
	z, err := newRedisZone(redisZoneConfig{
		client: c, cfg: &cfg, zoneID: "t" + strconv.FormatInt(time.Now().UnixNano(), 36),
		zone: "test", rates: rates, maxKeys: 1000, logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	return z, logs
}

func rate(events int, period time.Duration, burst int) Rate {
	return Rate{Events: events, Period: caddy.Duration(period), Burst: burst}
}

// TestRedisExactUnderConcurrency: 100 concurrent requests of one client
// against burst 20 admit exactly 20, and every verdict is consistent.
func TestRedisExactUnderConcurrency(t *testing.T) {
	srv := redistest.Start(t)
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(5 * time.Second)},
		rate(1, time.Hour, 20), rate(1000, time.Hour, 1000))
	var admitted, refused atomic.Int64
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			out := make([]verdict, 2)
			res, ok := z.take(context.Background(), "client", out)
			if res != redisDecided {
				t.Errorf("outcome %d, want a Redis decision", res)
				return
			}
			if ok {
				admitted.Add(1)
			} else {
				refused.Add(1)
				if out[0].remaining != 0 || out[0].wait <= 0 {
					t.Errorf("refused with verdict %+v", out[0])
				}
			}
		})
	}
	wg.Wait()
	if admitted.Load() != 20 || refused.Load() != 80 {
		t.Fatalf("admitted %d, refused %d; want 20 and 80", admitted.Load(), refused.Load())
	}
	// All-or-nothing: the second rate counted only the admitted ones.
	keys := z.keys("client")
	if got := srv.MustCli("PTTL", keys[1]); got == "-2" {
		t.Fatal("second rate's key missing")
	}
	out := make([]verdict, 2)
	z.refused = newRefusalCache(10) // ask Redis, not the cache
	if _, ok := z.take(context.Background(), "client", out); ok {
		t.Fatal("21st request admitted")
	}
	if out[1].remaining != 1000-20 {
		t.Fatalf("second rate remaining %d, want 980: refused requests consumed it", out[1].remaining)
	}
}

// TestRedisKeysExpireWhenFull: every key gets a TTL of the time until its
// bucket is full again, and is gone after it. The fast rate refills in 2s,
// so that a slow machine cannot see it expire before its TTL is read; the
// TTL is checked against bounds measured around the request, the expiry by
// polling with a generous deadline.
func TestRedisKeysExpireWhenFull(t *testing.T) {
	srv := redistest.Start(t)
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(5 * time.Second)},
		rate(1, 2*time.Second, 2), rate(1, time.Hour, 5))
	out := make([]verdict, 2)
	start := time.Now()
	if _, ok := z.take(context.Background(), "exp", out); !ok {
		t.Fatal("first request refused")
	}
	keys := z.keys("exp")
	for i, k := range keys {
		if !strings.Contains(k, "{exp}") || !strings.HasPrefix(k, DefaultRedisPrefix) {
			t.Fatalf("key %q lacks the prefix or the hash tag", k)
		}
		pttl, _ := strconv.Atoi(srv.MustCli("PTTL", k))
		// One unit of a burst: the time to refill it; at least 3/4 of
		// it, less what passed since the request was sent: Redis stamps
		// expiries with a clock cached per turn of its event loop, which
		// lags behind by milliseconds on a loaded machine (a TTL of half
		// the refill time still fails).
		want := []int{2000, 3_600_000}[i]
		least := want*3/4 - int(time.Since(start).Milliseconds())
		if pttl <= 0 || pttl > want || pttl < least {
			t.Fatalf("key %d: PTTL %d, want in [%d, %d]", i, pttl, max(least, 1), want)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); srv.MustCli("EXISTS", keys[0]) != "0"; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("key of the fast rate still exists 30s after its bucket refilled (PTTL %s)", srv.MustCli("PTTL", keys[0]))
		}
	}
	if got := srv.MustCli("EXISTS", keys[1]); got != "1" {
		t.Fatal("key of the slow rate expired with the fast one")
	}
}

// TestRedisJunkIsARequestError: keys someone else wrote (text, another
// type) give an error for that request, decided by on_error, write nothing,
// and do not mark Redis as down.
func TestRedisJunkIsARequestError(t *testing.T) {
	srv := redistest.Start(t)
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{}, rate(1, time.Second, 3), rate(10, time.Second, 10))
	for _, junk := range [][]string{
		{"SET", "KEY0", "not-a-number"},
		{"SET", "KEY0", "nan"},
		{"SET", "KEY0", "inf"},
		{"SET", "KEY1", "1e300"},
		{"HSET", "KEY1", "f", "v"},
	} {
		id := "junk-" + strings.Join(junk, "-")
		keys := z.keys(id)
		args := append([]string{}, junk...)
		args[1] = keys[junk[1][3]-'0']
		srv.MustCli(args...)
		out := make([]verdict, 2)
		res, _ := z.take(context.Background(), id, out)
		if res != redisFallbackLocal {
			t.Errorf("%v: outcome %d, want the local fallback", junk, res)
		}
		for i, k := range keys {
			if args[1] == k {
				continue
			}
			if srv.MustCli("EXISTS", k) != "0" {
				t.Errorf("%v: key %d written although the request failed", junk, i)
			}
		}
		if _, c := z.client.get(id); c == nil {
			t.Fatalf("%v: a request's own error marked Redis down", junk)
		}
	}
}

// TestRedisScriptFlushAndRestart: the script is loaded again after SCRIPT
// FLUSH without an error; after a restart the first call may fail (the
// connection died with the server), then Redis is used again within
// seconds.
func TestRedisScriptFlushAndRestart(t *testing.T) {
	srv := redistest.Start(t)
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{Timeout: caddy.Duration(time.Second)}, rate(100, time.Second, 100))
	out := make([]verdict, 1)
	for i := range 3 {
		srv.ScriptFlush()
		if res, ok := z.take(context.Background(), "f", out); res != redisDecided || !ok {
			t.Fatalf("after SCRIPT FLUSH %d: outcome %d allowed %v", i, res, ok)
		}
	}
	srv.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, _ := z.take(context.Background(), "f", out)
		if res == redisDecided {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis not used again within 5s of its restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisRefusalCache: once Redis refused a client, its requests are
// refused locally with the same verdicts until the wait is over.
func TestRedisRefusalCache(t *testing.T) {
	srv := redistest.Start(t)
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{}, rate(5, time.Second, 1), rate(100, time.Hour, 100))
	out := make([]verdict, 2)
	if _, ok := z.take(context.Background(), "c", out); !ok {
		t.Fatal("first request refused")
	}
	if _, ok := z.take(context.Background(), "c", out); ok {
		t.Fatal("second request admitted")
	}
	first := out[0]
	srv.ResetStats()
	for range 50 {
		if res, ok := z.take(context.Background(), "c", out); res != redisDecided || ok {
			t.Fatal("cached refusal not refused")
		}
		if out[0].remaining != 0 || out[0].wait > first.wait || out[0].wait <= 0 || out[1].remaining != 99 {
			t.Fatalf("cached verdicts %+v, first %+v", out, first)
		}
	}
	if n := srv.CommandCalls("evalsha") + srv.CommandCalls("eval"); n != 0 {
		t.Fatalf("%d script calls while the refusal was cached", n)
	}
	time.Sleep(time.Duration(first.wait) + 5*time.Millisecond)
	if _, ok := z.take(context.Background(), "c", out); !ok {
		t.Fatal("request after the wait refused")
	}
	if n := srv.CommandCalls("evalsha"); n != 1 {
		t.Fatalf("%d script calls after the wait, want 1", n)
	}
}

// TestRedisDownThenUp: a client created while Redis is down falls back at
// once, and uses Redis within seconds of it starting.
func TestRedisDownThenUp(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{OnError: OnErrorDeny}, rate(10, time.Second, 10))
	out := make([]verdict, 1)
	start := time.Now()
	if res, _ := z.take(context.Background(), "d", out); res != redisFallbackDeny {
		t.Fatalf("outcome %d, want deny", res)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("fallback took %v with Redis down", d)
	}
	srv.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if res, _ := z.take(context.Background(), "d", out); res == redisDecided {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis not used within 5s of starting")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisFrozenCircuit: with Redis frozen, a call waits at most the
// timeout, later calls go straight to the policy, and Redis is used again
// once resumed.
func TestRedisFrozenCircuit(t *testing.T) {
	srv := redistest.Start(t)
	const timeout = 200 * time.Millisecond
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{OnError: OnErrorAllow, Timeout: caddy.Duration(timeout)}, rate(1000, time.Second, 1000))
	out := make([]verdict, 1)
	if res, _ := z.take(context.Background(), "fz", out); res != redisDecided {
		t.Fatal("no decision before freezing")
	}
	srv.Freeze()
	defer srv.Resume()
	start := time.Now()
	if res, _ := z.take(context.Background(), "fz", out); res != redisFallbackAllow {
		t.Fatalf("outcome %d, want allow", res)
	}
	if d := time.Since(start); d > timeout+time.Second {
		t.Fatalf("call on a frozen Redis took %v", d)
	}
	start = time.Now()
	for range 100 {
		if res, _ := z.take(context.Background(), "fz", out); res != redisFallbackAllow {
			t.Fatalf("outcome %d, want allow", res)
		}
	}
	if d := time.Since(start); d > timeout {
		t.Fatalf("100 requests after the failure took %v: the circuit is not open", d)
	}
	srv.Resume()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if res, _ := z.take(context.Background(), "fz", out); res == redisDecided {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis not used within 5s of resuming")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisWrongPasswordRedacted: a wrong password leaves Redis unused
// (fallback) and is logged without the password.
func TestRedisWrongPasswordRedacted(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "right-pass")
	const secret = "s3cret-wrong-pass"
	z, logs := testRedisZone(t, []string{"redis://:" + secret + "@" + srv.Addr()}, Redis{}, rate(10, time.Second, 10))
	out := make([]verdict, 1)
	if res, _ := z.take(context.Background(), "w", out); res != redisFallbackLocal {
		t.Fatalf("outcome %d, want the local fallback", res)
	}
	var sawAuth bool
	for _, e := range logs.All() {
		text := e.Message
		for k, v := range e.ContextMap() {
			text += " " + k + "=" + toString(v)
		}
		if strings.Contains(text, secret) {
			t.Fatalf("password in log: %s", text)
		}
		if strings.Contains(text, "WRONGPASS") || strings.Contains(text, "NOAUTH") || strings.Contains(text, "invalid") {
			sawAuth = true
		}
	}
	if !sawAuth {
		t.Fatalf("no log says why Redis is not used: %v", logs.All())
	}
	// The right password works.
	right := "redis://:right-pass@" + srv.Addr() //nolint:gosec // a test password
	z2, _ := testRedisZone(t, []string{right}, Redis{}, rate(10, time.Second, 10))
	if res, _ := z2.take(context.Background(), "w", out); res != redisDecided {
		t.Fatalf("outcome %d with the right password", res)
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

func TestRedisURLErrorsRedacted(t *testing.T) {
	for _, urls := range [][]string{
		{"redis://user:p4ss%zz@host:6379"},
		{"http://user:p4ss@host"},
		{"redis://user:p4ss@host:6379/notadb"},
		{"redis://user:p4ss@a:1", "redis://other:p4ss@b:2"},
		{"redis://:p4ss@a:1/2", "redis://:p4ss@b:2/2"},
		{"redis://user:p4ss@"},
		{"redis://us@er:p4ss@/x y"},
	} {
		_, err := redisOptions(urls)
		if err == nil {
			t.Errorf("%v accepted", urls)
			continue
		}
		if strings.Contains(err.Error(), "p4ss") {
			t.Errorf("%v: password in error %q", urls, err)
		}
	}
	for _, urls := range [][]string{
		{"redis://127.0.0.1:6379"},
		{"rediss://user:pw@redis.example:6380/2"},
		{"redis://a:7000", "redis://b:7001", "redis://c:7002"},
		{"redis://:pw@sentinel1:26379?addr=sentinel2:26379&master_set=mymaster"},
		{"unix:///run/redis.sock?db=1"},
	} {
		if _, err := redisOptions(urls); err != nil {
			t.Errorf("%v refused: %v", urls, err)
		}
	}
	if got := redactURL("redis://u:pw@h:1/0"); got != "redis://u:xxxxx@h:1/0" { //nolint:gosec // a test URL
		t.Errorf("redactURL = %q", got)
	}
	if got := redactError(errors.New("dial redis://u:pw%2Fx@h failed"), "redis://u:pw/x@h"); strings.Contains(got, "pw") {
		t.Errorf("redactError = %q", got)
	}
}

// TestRedisPlaceholderURLs: URLs are placeholders expanded at load, and one
// may hold several.
func TestRedisPlaceholderURLs(t *testing.T) {
	t.Setenv("THROTTLE_TEST_REDIS", "redis://a:7000, redis://b:7001 redis://c:7002")
	rc := Redis{URLs: []string{"{env.THROTTLE_TEST_REDIS}"}}
	rc.provision()
	urls, opt, err := rc.resolve(caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	if len(urls) != 3 || len(opt.InitAddress) != 3 {
		t.Fatalf("urls %v, addresses %v", urls, opt.InitAddress)
	}
	rc = Redis{URLs: []string{"{env.THROTTLE_TEST_UNSET_VAR}"}}
	rc.provision()
	if _, _, err := rc.resolve(caddy.NewReplacer()); err == nil {
		t.Fatal("a placeholder expanding to nothing was accepted")
	}
}

// TestRedisScriptClock checks the script's GCRA on a controlled clock
// (miniredis: the one place a fake Redis is used, for its settable TIME).
func TestRedisScriptClock(t *testing.T) {
	m := miniredis.RunT(t)
	base := time.Unix(1_900_000_000, 0)
	m.SetTime(base)
	z, _ := testRedisZone(t, []string{"redis://" + m.Addr()}, Redis{Timeout: caddy.Duration(5 * time.Second)},
		rate(1, time.Second, 2))
	out := make([]verdict, 1)
	take := func() bool {
		t.Helper()
		z.refused = newRefusalCache(10)
		res, ok := z.take(context.Background(), "clk", out)
		if res != redisDecided {
			t.Fatalf("outcome %d", res)
		}
		return ok
	}
	if !take() || out[0].remaining != 1 || out[0].reset != int64(time.Second) {
		t.Fatalf("first: %+v", out[0])
	}
	if !take() || out[0].remaining != 0 || out[0].reset != int64(time.Second) {
		t.Fatalf("second: %+v", out[0])
	}
	if take() || out[0].wait != int64(time.Second) {
		t.Fatalf("third: %+v", out[0])
	}
	m.SetTime(base.Add(999 * time.Millisecond))
	if take() || out[0].wait != int64(time.Millisecond) {
		t.Fatalf("after 999ms: %+v", out[0])
	}
	m.SetTime(base.Add(time.Second))
	if !take() {
		t.Fatalf("after 1s: %+v", out[0])
	}
	// The key's TTL is the time until the bucket is full again: 2s.
	if ttl := m.TTL(z.keys("clk")[0]); ttl != 2*time.Second {
		t.Fatalf("TTL %v, want 2s", ttl)
	}
	// Far in the future the bucket is full: remaining = burst - 1.
	m.SetTime(base.Add(time.Hour))
	if !take() || out[0].remaining != 1 {
		t.Fatalf("after an hour: %+v", out[0])
	}
}

// TestRedisClusterExact: on a 3-master Cluster (all nodes as seeds), the
// rates of one client share a slot, decisions are exact per client, and
// clients spread over the masters.
func TestRedisClusterExact(t *testing.T) {
	cl := redistest.StartCluster(t)
	z, _ := testRedisZone(t, cl.URLs(), Redis{Timeout: caddy.Duration(5 * time.Second)},
		rate(1, time.Hour, 20), rate(1, time.Hour, 50))
	cl.ResetStats()
	const clients = 12
	var admitted [clients]atomic.Int64
	var wg sync.WaitGroup
	for i := range 100 * clients {
		wg.Go(func() {
			out := make([]verdict, 2)
			res, ok := z.take(context.Background(), "client-"+strconv.Itoa(i%clients), out)
			if res != redisDecided {
				t.Errorf("outcome %d", res)
			}
			if ok {
				admitted[i%clients].Add(1)
			}
		})
	}
	wg.Wait()
	for i := range admitted {
		if n := admitted[i].Load(); n != 20 {
			t.Errorf("client %d: admitted %d, want 20", i, n)
		}
	}
	used := 0
	for _, n := range cl.CallsPerNode("evalsha") {
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Fatalf("script calls per node %v: clients not spread over the masters", cl.CallsPerNode("evalsha"))
	}
}

// TestRedisClusterMasterDown: with a master of the Cluster killed (lost
// connections, then CLUSTERDOWN once the others notice), every request is
// answered by Redis or by the policy, within the timeout, without a panic.
func TestRedisClusterMasterDown(t *testing.T) {
	cl := redistest.StartCluster(t)
	const timeout = 200 * time.Millisecond
	z, _ := testRedisZone(t, cl.URLs(), Redis{Timeout: caddy.Duration(timeout)}, rate(1000, time.Second, 1000))
	cl.Nodes[1].Kill()
	outcomes := map[redisOutcome]int{}
	out := make([]verdict, 1)
	for deadline := time.Now().Add(3500 * time.Millisecond); time.Now().Before(deadline); {
		for i := range 20 {
			start := time.Now()
			res, _ := z.take(context.Background(), "c"+strconv.Itoa(i), out)
			if d := time.Since(start); d > timeout+time.Second {
				t.Fatalf("a check took %v", d)
			}
			outcomes[res]++
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("outcomes %v", outcomes)
	if outcomes[redisFallbackLocal] == 0 {
		t.Fatal("no request fell back with a master down")
	}
}

// TestRedisLongKeyHashed: a long key text is named in Redis by its hash,
// and distinct long keys stay distinct.
func TestRedisLongKeyHashed(t *testing.T) {
	srv := redistest.Start(t)
	z, _ := testRedisZone(t, []string{srv.URL()}, Redis{}, rate(1, time.Hour, 1))
	rl := &redisLimiter{z: z, local: newMemStore(10, 1, nil)}
	defer rl.local.Destruct()
	long := strings.Repeat("x", 10_000)
	out := make([]verdict, 1)
	for _, text := range []string{long + "a", long + "b"} {
		if ok, err := rl.take(context.Background(), key{kind: kindText, text: text}, nil, out); !ok || err != nil {
			t.Fatalf("first request of a long key: %v %v", ok, err)
		}
	}
	if ok, _ := rl.take(context.Background(), key{kind: kindText, text: long + "a"}, nil, out); ok {
		t.Fatal("second request of a long key admitted")
	}
	keys := strings.Fields(srv.MustCli("KEYS", z.base+"*"))
	if len(keys) != 2 {
		t.Fatalf("keys %d, want 2", len(keys))
	}
	for _, k := range keys {
		if len(k) > 200 {
			t.Fatalf("Redis key of %d bytes", len(k))
		}
	}
}

// TestRedisSentinel: a URL naming a Sentinel and a master set reaches the
// master, and decisions are exact there.
func TestRedisSentinel(t *testing.T) {
	master := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, master, "mymaster")
	z, _ := testRedisZone(t, []string{sentinel.URL() + "?master_set=mymaster"}, Redis{Timeout: caddy.Duration(5 * time.Second)},
		rate(1, time.Hour, 10))
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			out := make([]verdict, 1)
			if res, ok := z.take(context.Background(), "s", out); res != redisDecided {
				t.Errorf("outcome %d", res)
			} else if ok {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	if admitted.Load() != 10 {
		t.Fatalf("admitted %d, want 10", admitted.Load())
	}
	if master.MustCli("EXISTS", z.keys("s")[0]) != "1" {
		t.Fatal("the key is not on the master the Sentinel names")
	}
}

// TestRedisTLS: rediss:// speaks TLS and verifies the server's certificate
// (a self-signed one is refused unless skip_verify is given).
func TestRedisTLS(t *testing.T) {
	srv := redistest.StartTLS(t)
	z, logs := testRedisZone(t, []string{srv.URL()}, Redis{}, rate(1, time.Hour, 2))
	out := make([]verdict, 1)
	if res, _ := z.take(context.Background(), "tls", out); res != redisFallbackLocal {
		t.Fatalf("outcome %d with an untrusted certificate, want the local fallback", res)
	}
	if !strings.Contains(fmt.Sprint(logs.All()), "certificate") {
		t.Errorf("the log does not say the certificate was refused: %v", logs.All())
	}
	z, _ = testRedisZone(t, []string{srv.URL() + "?skip_verify=true"}, Redis{}, rate(1, time.Hour, 2))
	for i, want := range []bool{true, true, false} {
		z.refused = newRefusalCache(10)
		res, ok := z.take(context.Background(), "tls", out)
		if res != redisDecided || ok != want {
			t.Fatalf("request %d over TLS: outcome %d allowed %v", i, res, ok)
		}
	}
	if srv.MustCli("EXISTS", z.keys("tls")[0]) != "1" {
		t.Fatal("no key written over TLS")
	}
}
