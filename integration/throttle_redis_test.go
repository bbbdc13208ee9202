package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// Throttle on Redis, through real Caddy instances (the in-process one and
// the caddy binary) against real redis-server processes and a real 3-master
// Redis Cluster, all on free loopback ports.

// binaryCaddy runs the caddy binary on a free port with the site body, and
// returns the site's base URL and its log. env adds environment variables.
func binaryCaddy(t *testing.T, siteBody string, env ...string) (string, *lockedBuffer) {
	t.Helper()
	base, run := binaryCaddyRun(t, siteBody, env...)
	return base, run.logs
}

// binaryCaddyRun is binaryCaddy, returning the running process.
func binaryCaddyRun(t *testing.T, siteBody string, env ...string) (string, *caddyRun) {
	t.Helper()
	port, readyPort := freePort(), freePort()
	dir := t.TempDir()
	// A second site answers readiness checks, so that they do not count
	// in the throttled one (both load at once).
	conf := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tskip_install_trust\n}\nhttp://127.0.0.1:%d {\n%s\n}\nhttp://127.0.0.1:%d {\n\trespond \"ready\"\n}\n", port, siteBody, readyPort)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	run := startBinary(t, "", env, "run", "--config", path, "--adapter", "caddyfile")
	logs := run.logs
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", readyPort), nil)
		c, err := (&http.Client{Timeout: time.Second}).Do(req)
		if err == nil {
			_ = c.Body.Close()
			return base, run
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy binary did not serve: %v\n%s", err, logs.String())
		}
	}
}

// result is what one request got.
type result struct {
	status  int
	header  http.Header
	elapsed time.Duration
}

// sendTo sends a GET to url with the header pairs and returns its result.
func sendTo(t *testing.T, client *http.Client, url string, headers ...string) result {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return result{}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return result{status: resp.StatusCode, header: resp.Header, elapsed: time.Since(start)}
}

// newHTTPClient returns a client of the test's own, whose connections
// never outlive it: a connection kept alive to a server of an earlier
// config could stall a request across a reload.
func newHTTPClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// fleet runs the same site on the in-process Caddy and on the caddy binary
// and returns both base URLs.
func fleet(t *testing.T, siteBody string) (inproc *caddytest.Tester, urls []string) {
	t.Helper()
	tc := gateway(t, "", siteBody)
	bin, _ := binaryCaddy(t, siteBody)
	return tc, []string{siteURL(""), bin}
}

// floodCount sends n concurrent requests spread over urls (header pairs per
// request from hdr) and counts the statuses.
func floodCount(t *testing.T, urls []string, n int, hdr func(i int) []string) map[int]int {
	t.Helper()
	client := newHTTPClient(t)
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var h []string
			if hdr != nil {
				h = hdr(i)
			}
			r := sendTo(t, client, urls[i%len(urls)]+"/", h...)
			mu.Lock()
			codes[r.status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	return codes
}

// TestThrottleRedisFleetExact: two Caddy instances (in-process and the
// binary) on one Redis: 100 concurrent requests of one client against
// burst 20 admit exactly 20 in total.
func TestThrottleRedisFleetExact(t *testing.T) {
	srv := redistest.Start(t)
	_, urls := fleet(t, fmt.Sprintf(`
	throttle {
		zone fleet
		rate 1/1h burst 20
		redis %s {
			timeout 5s
		}
	}
	respond "ok"`, srv.URL()))
	codes := floodCount(t, urls, 100, nil)
	if codes[200] != 20 || codes[429] != 80 {
		t.Fatalf("statuses %v, want exactly 20 × 200 and 80 × 429 over two instances", codes)
	}
}

// TestThrottleRedisClusterFleetExact: the same on a 3-master Redis Cluster,
// with clients whose keys live on several masters.
func TestThrottleRedisClusterFleetExact(t *testing.T) {
	cl := redistest.StartCluster(t)
	_, urls := fleet(t, fmt.Sprintf(`
	throttle {
		zone clusterfleet
		key {header.X-Client}
		rate 1/1h burst 5
		rate 100/1h burst 100
		redis %s {
			timeout 5s
		}
	}
	respond "ok"`, strings.Join(cl.URLs(), " ")))
	cl.ResetStats()
	client := newHTTPClient(t)
	const clients = 8
	var admitted [clients]atomic.Int64
	var wg sync.WaitGroup
	for i := range 40 * clients {
		wg.Go(func() {
			r := sendTo(t, client, urls[i%2]+"/", "X-Client", "c"+strconv.Itoa(i%clients))
			if r.status == 200 {
				admitted[i%clients].Add(1)
			} else if r.status != 429 {
				t.Errorf("status %d", r.status)
			}
		})
	}
	wg.Wait()
	for i := range admitted {
		if n := admitted[i].Load(); n != 5 {
			t.Errorf("client c%d: %d admitted, want exactly 5", i, n)
		}
	}
	per := cl.CallsPerNode("evalsha")
	used := 0
	for _, n := range per {
		if n > 0 {
			used++
		}
	}
	if used < 2 {
		t.Fatalf("script calls per master %v: want clients spread over several masters", per)
	}
}

// redisSite is a site throttled on Redis at url with the extra lines.
func redisSite(zone, url, extra string) string {
	return fmt.Sprintf(`
	throttle {
		zone %s
		%s
		redis %s {
			timeout 2s
		}
	}
	respond "ok"`, zone, extra, url)
}

// TestThrottleRedisOneCallPerRequest: each admitted request costs exactly
// one script call (INFO commandstats).
func TestThrottleRedisOneCallPerRequest(t *testing.T) {
	srv := redistest.Start(t)
	tc := gateway(t, "", redisSite("onecall", srv.URL(), "key {header.X-Client}\n\t\trate 1000/1s burst 1000"))
	do(t, tc, get(t, "/", "X-Client", "warmup")) // loads the script
	srv.ResetStats()
	const n = 60
	codes := floodCount(t, []string{siteURL("")}, n, func(i int) []string { return []string{"X-Client", "c" + strconv.Itoa(i%7)} })
	if codes[200] != n {
		t.Fatalf("statuses %v", codes)
	}
	calls := srv.CommandCalls("evalsha") + srv.CommandCalls("eval")
	if calls != n {
		t.Fatalf("%d script calls for %d requests, want one each", calls, n)
	}
}

// TestThrottleRedisRefusedFloodCost: a refused client's flood costs Redis
// about one call per Retry-After, and every refusal carries the headers.
func TestThrottleRedisRefusedFloodCost(t *testing.T) {
	srv := redistest.Start(t)
	tc := gateway(t, "", redisSite("floodcost", srv.URL(), "rate 1/1s burst 1"))
	if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	srv.ResetStats()
	start := time.Now()
	refused, admitted := 0, 0
	for time.Since(start) < 2500*time.Millisecond {
		resp, _ := do(t, tc, get(t, "/"))
		switch resp.StatusCode {
		case 429:
			refused++
			if resp.Header.Get("Retry-After") != "1" || !strings.Contains(resp.Header.Get("RateLimit"), `"floodcost";r=0;t=1`) {
				t.Fatalf("refusal headers %v", resp.Header)
			}
		case 200:
			admitted++
		default:
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	calls := srv.CommandCalls("evalsha") + srv.CommandCalls("eval")
	t.Logf("%d refused, %d admitted, %d script calls in 2.5s", refused, admitted, calls)
	if refused < 50 {
		t.Fatalf("only %d refusals: the flood did not happen", refused)
	}
	// One call per second of wait (and one per admission), with slack.
	if calls > 2*admitted+3 {
		t.Fatalf("%d script calls for a flood of %d refused requests: refusals are not cached", calls, refused)
	}
}

// TestThrottleRedisKeysExpire: the keys of a client disappear once its
// bucket is full again. The buckets refill in 2s and 1s, so that a slow
// machine cannot see them expire before their TTLs are read; the TTLs are
// checked against bounds measured around the request, the expiry by polling
// with a generous deadline.
func TestThrottleRedisKeysExpire(t *testing.T) {
	srv := redistest.Start(t)
	tc := gateway(t, "", redisSite("expire", srv.URL(), "rate 1/2s burst 2\n\t\trate 1/1s burst 2"))
	start := time.Now()
	do(t, tc, get(t, "/"))
	keys := strings.Fields(srv.MustCli("KEYS", "throttle:*"))
	if len(keys) != 2 {
		t.Fatalf("keys %v, want one per rate", keys)
	}
	// A key ends in :<interval in µs>x<burst>; one request leaves its
	// bucket one interval short of full.
	refill := map[string]int{":2000000x2": 2000, ":1000000x2": 1000}
	for _, k := range keys {
		if !strings.HasPrefix(k, "throttle:expire{") {
			t.Errorf("key %q lacks the prefix, zone and hash tag", k)
		}
		want, ok := refill[k[strings.LastIndexByte(k, '}')+1:]]
		if !ok {
			t.Errorf("key %q: not one of the rates %v", k, refill)
			continue
		}
		// At least 3/4 of it, less what passed since the request was
		// sent: Redis stamps expiries with a clock cached per turn of its
		// event loop, which lags behind by milliseconds on a loaded
		// machine (a TTL of half the refill time still fails).
		least := want*3/4 - int(time.Since(start).Milliseconds())
		if pttl, _ := strconv.Atoi(srv.MustCli("PTTL", k)); pttl <= 0 || pttl > want || pttl < least {
			t.Errorf("key %q: PTTL %d, want in [%d, %d]ms", k, pttl, max(least, 1), want)
		}
	}
	// DBSIZE counts an expired key until Redis reclaims it: poll.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n := srv.MustCli("DBSIZE")
		if n == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s keys left 30s after the buckets refilled", n)
		}
	}
}

// TestThrottleRedisScriptFlushAndRestart: SCRIPT FLUSH and a restart of
// Redis give no error response, and Redis decides again afterwards.
func TestThrottleRedisScriptFlushAndRestart(t *testing.T) {
	srv := redistest.Start(t)
	tc := gateway(t, "", redisSite("flush", srv.URL(), "key {header.X-Client}\n\t\trate 100/1s burst 100"))
	for i := range 5 {
		srv.ScriptFlush()
		if resp, _ := do(t, tc, get(t, "/", "X-Client", "a")); resp.StatusCode != 200 {
			t.Fatalf("after SCRIPT FLUSH %d: status %d", i, resp.StatusCode)
		}
	}
	if n := srv.CommandCalls("eval"); n < 5 {
		t.Fatalf("%d EVAL calls after 5 flushes: the script was not reloaded", n)
	}
	srv.Restart()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, _ := do(t, tc, get(t, "/", "X-Client", "a"))
		if resp.StatusCode != 200 {
			t.Fatalf("after restart: status %d", resp.StatusCode)
		}
		if srv.CommandCalls("eval")+srv.CommandCalls("evalsha") > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis not used within 5s of its restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestThrottleRedisOutage: Redis killed, and frozen, under load, for each
// on_error policy: the policy holds, no request waits much longer than the
// timeout, and Redis decides again within seconds of coming back.
func TestThrottleRedisOutage(t *testing.T) {
	const timeout = 150 * time.Millisecond
	for _, mode := range []string{"kill", "freeze"} {
		for _, policy := range []string{"local", "allow", "deny"} {
			t.Run(mode+"/"+policy, func(t *testing.T) {
				srv := redistest.Start(t)
				zone := "outage-" + mode + "-" + policy
				tc := gateway(t, "", fmt.Sprintf(`
	throttle {
		zone %s
		key {header.X-Client}
		rate 5/1s burst 5
		redis %s {
			on_error %s
			timeout %s
		}
	}
	respond "ok"`, zone, srv.URL(), policy, timeout))
				_ = tc // the in-process Caddy serves siteURL
				// Load: 8 clients, each sending as fast as it can.
				client := newHTTPClient(t)
				var (
					mu    sync.Mutex
					phase atomic.Int32 // 0 before, 1 during the outage, 2 after
					stop  atomic.Bool
					wg    sync.WaitGroup
				)
				type tagged struct {
					result
					phase int32
				}
				var all []tagged
				for c := range 8 {
					wg.Go(func() {
						for !stop.Load() {
							p := phase.Load()
							r := sendTo(t, client, siteURL("/"), "X-Client", "c"+strconv.Itoa(c))
							mu.Lock()
							all = append(all, tagged{r, p})
							mu.Unlock()
							time.Sleep(5 * time.Millisecond)
						}
					})
				}
				time.Sleep(300 * time.Millisecond)
				phase.Store(1)
				if mode == "kill" {
					srv.Kill()
				} else {
					srv.Freeze()
				}
				time.Sleep(1500 * time.Millisecond)
				if mode == "kill" {
					srv.Restart()
				} else {
					srv.Resume()
				}
				backAt := time.Now()
				srv.ResetStats()
				var recovered time.Duration
				for time.Since(backAt) < 8*time.Second {
					if srv.CommandCalls("evalsha")+srv.CommandCalls("eval") > 0 {
						recovered = time.Since(backAt)
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				phase.Store(2)
				time.Sleep(200 * time.Millisecond)
				stop.Store(true)
				wg.Wait()

				if recovered == 0 {
					t.Fatal("Redis not used again within 8s of coming back")
				}
				t.Logf("Redis used again %v after coming back; %d requests", recovered, len(all))
				var slow int
				var slowest time.Duration
				codes := map[int32]map[int]int{0: {}, 1: {}, 2: {}}
				for _, r := range all {
					codes[r.phase][r.status]++
					slowest = max(slowest, r.elapsed)
					if r.elapsed > timeout+time.Second {
						slow++
						t.Errorf("a request took %v (timeout %v)", r.elapsed, timeout)
					}
				}
				t.Logf("statuses before %v, during %v, after %v; slowest request %v", codes[0], codes[1], codes[2], slowest)
				if slow > 0 {
					return
				}
				during := codes[1]
				switch policy {
				case "local":
					// The in-memory limiter holds the rate: no 5xx, and 429s
					// for clients sending 25 requests a second against 5/s.
					if during[503] > 0 || during[500] > 0 || during[429] == 0 {
						t.Fatalf("local policy during the outage: %v", during)
					}
				case "allow":
					if during[503] > 0 || during[500] > 0 || during[200] == 0 {
						t.Fatalf("allow policy during the outage: %v", during)
					}
				case "deny":
					if during[503] == 0 || during[500] > 0 {
						t.Fatalf("deny policy during the outage: %v", during)
					}
				}
				if policy == "deny" {
					for _, r := range all {
						if r.status == 503 && r.header.Get("Retry-After") == "" {
							t.Fatal("503 without Retry-After")
						}
					}
				}
			})
		}
	}
}

// TestThrottleRedisDownAtStart: Caddy starts while Redis is down, answers
// by its policy without waiting, and uses Redis once it is up.
func TestThrottleRedisDownAtStart(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	start := time.Now()
	tc := gateway(t, "metrics", fmt.Sprintf(`
	throttle {
		zone downatstart
		rate 1/1h burst 3
		redis %s {
			on_error deny
		}
	}
	respond "ok"`, srv.URL()))
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("loading took %v with Redis down", d)
	}
	client := newHTTPClient(t)
	r := sendTo(t, client, siteURL("/"))
	if r.status != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("with Redis down: status %d, Retry-After %q; want 503 with Retry-After", r.status, r.header.Get("Retry-After"))
	}
	metrics := metricsText(t)
	if want := `caddy_throttle_redis_fallbacks_total{policy="deny",zone="downatstart"} 1`; !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %s", want)
	}
	srv.Restart()
	deadline := time.Now().Add(8 * time.Second)
	for {
		resp, _ := do(t, tc, get(t, "/"))
		if resp.StatusCode == 200 {
			if !strings.Contains(resp.Header.Get("RateLimit"), `"downatstart";r=2`) {
				t.Fatalf("first admitted request: RateLimit %q", resp.Header.Get("RateLimit"))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis not used within 8s of starting")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestThrottleRedisWrongPassword: a wrong password is an error of Redis
// (the policy answers), logged, and the password appears nowhere.
func TestThrottleRedisWrongPassword(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "the-right-one")
	const secret = "Wr0ngSecretPassw0rd"
	url := "redis://default:" + secret + "@" + srv.Addr()
	base, logs := binaryCaddy(t, fmt.Sprintf(`
	throttle {
		zone wrongpass
		rate 1/1h burst 3
		redis %s {
			on_error deny
		}
	}
	respond "ok"`, url))
	client := newHTTPClient(t)
	r := sendTo(t, client, base+"/")
	if r.status != 503 {
		t.Fatalf("status %d with a wrong password, want 503 (deny)", r.status)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "WRONGPASS") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	out := logs.String()
	if !strings.Contains(out, "WRONGPASS") {
		t.Errorf("log does not say why Redis is unused:\n%s", out)
	}
	if strings.Contains(out, secret) {
		t.Fatalf("password in the log:\n%s", out)
	}
	if !strings.Contains(out, "redis://default:xxxxx@") {
		t.Errorf("log does not name the Redis with its password masked:\n%s", out)
	}
}

// TestThrottleRedisEnvPlaceholder: the URL comes from an environment
// variable, expanded at load.
func TestThrottleRedisEnvPlaceholder(t *testing.T) {
	srv := redistest.Start(t)
	t.Setenv("THROTTLE_IT_REDIS_URL", srv.URL())
	tc := gateway(t, "", `
	throttle {
		zone envurl
		rate 1/1h burst 2
		redis {env.THROTTLE_IT_REDIS_URL}
	}
	respond "ok"`)
	do(t, tc, get(t, "/"))
	keys := srv.MustCli("KEYS", "throttle:envurl*")
	if keys == "" {
		t.Fatal("no key in the Redis named by the environment variable")
	}
}

// TestThrottleRedisBehavesLikeMemory: the same requests get the same
// statuses and headers from a zone on Redis as from one in memory, for
// header modes, dry_run, exempt and keys.
func TestThrottleRedisBehavesLikeMemory(t *testing.T) {
	srv := redistest.Start(t)
	for i, extra := range []string{
		"rate 2/1h burst 3\n\t\trate 10/1h",
		"rate 2/1h burst 3\n\t\theaders legacy",
		"rate 1/1h burst 2\n\t\tdry_run",
		"rate 1/1h burst 2\n\t\texempt 127.0.0.1",
		"rate 1/1h burst 2\n\t\tkey {header.X-Client}",
		"rate 1/1h burst 2\n\t\theaders off",
	} {
		var got [2][]string
		for j, backend := range []string{"", fmt.Sprintf("redis %s", srv.URL())} {
			tc := gateway(t, "", fmt.Sprintf(`
	throttle {
		zone same%d-%d
		%s
		%s
	}
	respond "ok"`, i, j, extra, backend))
			for range 5 {
				resp, _ := do(t, tc, get(t, "/", "X-Client", "alice"))
				got[j] = append(got[j], fmt.Sprintf("%d %q %q %q %q %q", resp.StatusCode,
					strings.ReplaceAll(resp.Header.Get("RateLimit"), fmt.Sprintf("same%d-%d", i, j), "Z"),
					strings.ReplaceAll(resp.Header.Get("RateLimit-Policy"), fmt.Sprintf("same%d-%d", i, j), "Z"),
					resp.Header.Get("X-RateLimit-Remaining"), resp.Header.Get("X-RateLimit-Reset"), resp.Header.Get("Retry-After")))
			}
		}
		if strings.Join(got[0], "\n") != strings.Join(got[1], "\n") {
			t.Errorf("config %q:\nmemory:\n%s\nredis:\n%s", extra, strings.Join(got[0], "\n"), strings.Join(got[1], "\n"))
		}
	}
}

// TestThrottleRedisMetrics: Redis calls, local refusals and the latency
// histogram are exported, labelled by zone.
func TestThrottleRedisMetrics(t *testing.T) {
	srv := redistest.Start(t)
	tc := gateway(t, `metrics`, redisSite("redismetrics", srv.URL(), "rate 1/1h burst 1"))
	for range 3 {
		do(t, tc, get(t, "/"))
	}
	b := metricsText(t)
	for _, want := range []string{
		`caddy_throttle_redis_calls_total{zone="redismetrics"} 2`,
		`caddy_throttle_redis_local_refusals_total{zone="redismetrics"} 1`,
		`caddy_throttle_redis_call_duration_seconds_count{zone="redismetrics"} 2`,
		`caddy_throttle_allowed_total{zone="redismetrics"} 1`,
		`caddy_throttle_refused_total{zone="redismetrics"} 2`,
	} {
		if !strings.Contains(b, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestThrottleRedisReloadReusesConnections: a reload that keeps the URLs
// keeps the Redis connections (no reconnect storm) and the zone's state.
func TestThrottleRedisReloadReusesConnections(t *testing.T) {
	srv := redistest.Start(t)
	site := func(body string) string {
		return fmt.Sprintf(`
	throttle {
		zone reload
		key {header.X-Client}
		rate 1/1h burst 3
		redis %s
	}
	respond %q`, srv.URL(), body)
	}
	tc := gateway(t, "", site("one"))
	// Concurrent requests open every connection the client pipelines on.
	floodCount(t, []string{siteURL("")}, 32, func(i int) []string { return []string{"X-Client", "warm" + strconv.Itoa(i)} })
	do(t, tc, get(t, "/", "X-Client", "a"))
	// Connections the server accepted, this redis-cli's own included.
	conns := func() int {
		for l := range strings.SplitSeq(srv.MustCli("INFO", "stats"), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), "total_connections_received:"); ok {
				n, _ := strconv.Atoi(v)
				return n
			}
		}
		t.Fatal("no total_connections_received")
		return 0
	}
	before := conns()
	for _, body := range []string{"two", "three", "four"} {
		tc = gateway(t, "", site(body))
		resp, got := do(t, tc, get(t, "/", "X-Client", "a"))
		if body == "four" {
			if resp.StatusCode != 429 {
				t.Fatalf("fourth request: status %d, want 429 (state kept over reloads)", resp.StatusCode)
			}
		} else if got != body {
			t.Fatalf("reload not applied: %q", got)
		}
	}
	// One new connection is redis-cli's; a client per config would add at
	// least one per reload.
	if after := conns(); after-before-1 >= 3 {
		t.Fatalf("connections received: %d before three reloads, %d after (one is redis-cli's): the client reconnected", before, after)
	}
}
