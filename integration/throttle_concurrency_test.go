package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"
)

// Concurrency limits (`concurrent`), costs and settlements (`cost`,
// `cost_header`) through real Caddy instances, in memory and on real
// redis-server processes and a real 3-master Cluster.

// holdUpstream is a loopback upstream whose requests wait until released
// (or until their client goes away). /ws answers a WebSocket-style upgrade
// and holds the connection; /tokens?n= reports n in X-Tokens-Used, as a
// header or (with &trailer=1) as a trailer.
type holdUpstream struct {
	addr    string
	arrived atomic.Int64
	active  atomic.Int64
	mu      sync.Mutex
	release chan struct{}
}

func startHoldUpstream(t *testing.T) *holdUpstream {
	t.Helper()
	u := &holdUpstream{release: make(chan struct{})}
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(u.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		u.open()
		_ = srv.Close()
	})
	return u
}

// open releases every request waiting and every later one.
func (u *holdUpstream) open() {
	u.mu.Lock()
	defer u.mu.Unlock()
	select {
	case <-u.release:
	default:
		close(u.release)
	}
}

func (u *holdUpstream) gate() chan struct{} {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.release
}

func (u *holdUpstream) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/tokens":
		n := r.URL.Query().Get("n")
		if r.URL.Query().Get("trailer") != "" {
			w.Header().Set("Trailer", "X-Tokens-Used")
			_, _ = io.WriteString(w, "streamed answer")
			w.Header().Set("X-Tokens-Used", n)
			return
		}
		w.Header().Set("X-Tokens-Used", n)
		_, _ = io.WriteString(w, "answer")
		return
	case "/ws":
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		u.active.Add(1)
		defer u.active.Add(-1)
		<-u.gate()
		return
	}
	u.arrived.Add(1)
	u.active.Add(1)
	defer u.active.Add(-1)
	select {
	case <-u.gate():
	case <-r.Context().Done():
	}
	_, _ = io.WriteString(w, "done")
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// holdFlood sends n simultaneous requests spread over urls, releases the
// upstream once every request that can pass has arrived and the others
// were answered, and returns the statuses and one refusal's headers.
func holdFlood(t *testing.T, u *holdUpstream, urls []string, n, pass int, hdr func(i int) []string) (map[int]int, http.Header) {
	t.Helper()
	client := newHTTPClient(t)
	var mu sync.Mutex
	codes := map[int]int{}
	var refusal http.Header
	var answered atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var h []string
			if hdr != nil {
				h = hdr(i)
			}
			r := sendTo(t, client, urls[i%len(urls)]+"/hold", h...)
			answered.Add(1)
			mu.Lock()
			codes[r.status]++
			if r.status == 429 && refusal == nil {
				refusal = r.header
			}
			mu.Unlock()
		})
	}
	waitFor(t, 20*time.Second, "the refusals", func() bool { return answered.Load() >= int64(n-pass) })
	// Give a request that should not have passed the time to arrive.
	time.Sleep(100 * time.Millisecond)
	u.open()
	wg.Wait()
	return codes, refusal
}

// inProgressMetric reads caddy_throttle_in_progress of zone from the
// in-process Caddy.
func inProgressMetric(t *testing.T, zone string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^caddy_throttle_in_progress\{zone="` + regexp.QuoteMeta(zone) + `"\} (\S+)$`)
	m := re.FindStringSubmatch(metricsText(t))
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestThrottleConcurrentMemoryExact: in memory on one instance, 30
// simultaneous requests of one client with concurrent 5: exactly 5 pass,
// the others are refused 429 with Retry-After 1 and the concurrency item;
// afterwards nothing is in progress.
func TestThrottleConcurrentMemoryExact(t *testing.T) {
	u := startHoldUpstream(t)
	gateway(t, "", fmt.Sprintf(`
	throttle {
		zone connmem
		concurrent 5
	}
	reverse_proxy %s`, u.addr))
	codes, refusal := holdFlood(t, u, []string{siteURL("")}, 30, 5, nil)
	if codes[200] != 5 || codes[429] != 25 {
		t.Fatalf("statuses %v, want exactly 5 × 200 and 25 × 429", codes)
	}
	if refusal.Get("Retry-After") != "1" || refusal.Get("RateLimit") != `"connmem-concurrency";r=0` ||
		refusal.Get("RateLimit-Policy") != `"connmem-concurrency";q=5;qu="concurrent-requests"` {
		t.Fatalf("refusal headers %v", refusal)
	}
	if v := inProgressMetric(t, "connmem"); v != 0 {
		t.Fatalf("caddy_throttle_in_progress %v after every request finished, want 0", v)
	}
	if !strings.Contains(metricsText(t), `caddy_throttle_refusals_total{reason="concurrency",zone="connmem"} 25`) {
		t.Fatalf("refusals by reason not counted:\n%s", grepLines(metricsText(t), "refusals_total"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestThrottleConcurrentRedisFleetExact: two Caddy instances (in-process
// and the binary) on one Redis: 40 simultaneous requests of one client with
// concurrent 5 pass exactly 5 in total; the lease set is empty afterwards.
func TestThrottleConcurrentRedisFleetExact(t *testing.T) {
	srv := redistest.Start(t)
	u := startHoldUpstream(t)
	_, urls := fleet(t, fmt.Sprintf(`
	throttle {
		zone connfleet
		concurrent 5
		rate 1000/1h
		redis %s {
			timeout 5s
		}
	}
	reverse_proxy %s`, srv.URL(), u.addr))
	codes, refusal := holdFlood(t, u, urls, 40, 5, nil)
	if codes[200] != 5 || codes[429] != 35 {
		t.Fatalf("statuses %v, want exactly 5 × 200 and 35 × 429 over two instances", codes)
	}
	if !strings.Contains(refusal.Get("RateLimit"), `"connfleet-concurrency";r=0`) || refusal.Get("Retry-After") != "1" {
		t.Fatalf("refusal headers %v", refusal)
	}
	for k := range strings.FieldsSeq(srv.MustCli("KEYS", "throttle:connfleet{*}:c")) {
		if n := srv.MustCli("ZCARD", k); n != "0" {
			t.Fatalf("%s leases left in %s", n, k)
		}
	}
	// The refusals took nothing from the rate: 5 units spent of 1000.
	if r := sendTo(t, newHTTPClient(t), urls[0]+"/hold"); !strings.Contains(r.header.Get("RateLimit"), `"connfleet";r=994;`) {
		t.Fatalf("RateLimit %q, want r=994: refusals for want of a slot took from the rate", r.header.Get("RateLimit"))
	}
}

// TestThrottleConcurrentClusterFleetExact: the same on a 3-master Redis
// Cluster, for several clients spread over the masters: each gets exactly
// its 3 slots.
func TestThrottleConcurrentClusterFleetExact(t *testing.T) {
	cl := redistest.StartCluster(t)
	u := startHoldUpstream(t)
	_, urls := fleet(t, fmt.Sprintf(`
	throttle {
		zone connclu
		key {header.X-Client}
		concurrent 3
		redis %s {
			timeout 5s
		}
	}
	reverse_proxy %s`, strings.Join(cl.URLs(), " "), u.addr))
	const clients = 6
	codes, _ := holdFlood(t, u, urls, 60, 3*clients, func(i int) []string { return []string{"X-Client", "c" + strconv.Itoa(i%clients)} })
	if codes[200] != 3*clients || codes[429] != 60-3*clients {
		t.Fatalf("statuses %v, want exactly %d × 200 (3 per client)", codes, 3*clients)
	}
	if got := u.arrived.Load(); got != 3*clients {
		t.Fatalf("%d requests reached the upstream, want %d", got, 3*clients)
	}
}

// TestThrottleConcurrentSlotsNeverLeak: requests cancelled mid-flight give
// their slots back, in memory and on Redis (without waiting for the lease):
// the counts return to zero and the next requests get every slot again.
func TestThrottleConcurrentSlotsNeverLeak(t *testing.T) {
	srv := redistest.Start(t)
	for _, engine := range []string{"memory", "redis"} {
		t.Run(engine, func(t *testing.T) {
			u := startHoldUpstream(t)
			zone := "leak" + engine
			redis := ""
			if engine == "redis" {
				redis = fmt.Sprintf("redis %s {\n\t\t\ttimeout 5s\n\t\t}", srv.URL())
			}
			gateway(t, "", fmt.Sprintf(`
	throttle {
		zone %s
		concurrent 4
		%s
	}
	reverse_proxy %s`, zone, redis, u.addr))
			ctx, cancel := context.WithCancel(context.Background())
			client := newHTTPClient(t)
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, siteURL("/hold"), nil)
					if resp, err := client.Do(req); err == nil {
						_ = resp.Body.Close()
					}
				})
			}
			waitFor(t, 10*time.Second, "4 requests at the upstream", func() bool { return u.active.Load() == 4 })
			if r := sendTo(t, client, siteURL("/hold")); r.status != 429 {
				t.Fatalf("fifth request: %d, want 429", r.status)
			}
			if v := inProgressMetric(t, zone); v != 4 {
				t.Fatalf("in progress %v, want 4", v)
			}
			cancel()
			wg.Wait()
			waitFor(t, 5*time.Second, "the cancelled requests to finish", func() bool { return inProgressMetric(t, zone) == 0 })
			if engine == "redis" {
				for k := range strings.FieldsSeq(srv.MustCli("KEYS", "throttle:"+zone+"{*}:c")) {
					if n := srv.MustCli("ZCARD", k); n != "0" {
						t.Fatalf("%s leases left after the clients went away", n)
					}
				}
			}
			codes, _ := holdFlood(t, u, []string{siteURL("")}, 6, 4, nil)
			if codes[200] != 4 || codes[429] != 2 {
				t.Fatalf("after cancellations: %v, want 4 × 200 and 2 × 429", codes)
			}
		})
	}
}

// TestThrottleConcurrentCrashedInstance: a Caddy instance killed while its
// requests hold every slot: the other instance is refused until the leases
// run out, then gets the slots back, within the lease.
func TestThrottleConcurrentCrashedInstance(t *testing.T) {
	srv := redistest.Start(t)
	u := startHoldUpstream(t)
	body := fmt.Sprintf(`
	throttle {
		zone crash
		concurrent 3
		redis %s {
			timeout 5s
			lease 2s
		}
	}
	reverse_proxy %s`, srv.URL(), u.addr)
	gateway(t, "", body)
	bin, run := binaryCaddyRun(t, body)
	client := newHTTPClient(t)
	for range 3 {
		go func() {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, bin+"/hold", nil)
			if resp, err := client.Do(req); err == nil {
				_ = resp.Body.Close()
			}
		}()
	}
	waitFor(t, 10*time.Second, "3 requests held by the binary", func() bool { return u.active.Load() == 3 })
	// Longer than a lease: the live instance renews them meanwhile.
	time.Sleep(2500 * time.Millisecond)
	if r := sendTo(t, client, siteURL("/hold")); r.status != 429 {
		t.Fatalf("with every slot held by a live instance for over a lease: %d, want 429", r.status)
	}
	_ = run.cmd.Process.Kill()
	<-run.done
	killed := time.Now()
	u.open()
	for {
		r := sendTo(t, client, siteURL("/hold"))
		if r.status == 200 {
			break
		}
		if time.Since(killed) > 3*time.Second {
			t.Fatalf("slots of the killed instance not back within the lease (2s): %d", r.status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("slots back %s after the kill", time.Since(killed).Round(time.Millisecond))
	waitFor(t, 5*time.Second, "an empty lease set", func() bool {
		for k := range strings.FieldsSeq(srv.MustCli("KEYS", "throttle:crash{*}:c")) {
			if srv.MustCli("ZCARD", k) != "0" {
				return false
			}
		}
		return true
	})
}

// TestThrottleConcurrentWebSocket: an upgraded connection gives its slot
// back once the upgrade is answered, while it stays open.
func TestThrottleConcurrentWebSocket(t *testing.T) {
	u := startHoldUpstream(t)
	gateway(t, "", fmt.Sprintf(`
	throttle {
		zone ws
		concurrent 1
	}
	reverse_proxy %s`, u.addr))
	conn, err := (&net.Dialer{}).DialContext(context.Background(), "tcp", strings.TrimPrefix(siteURL(""), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	status, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(status, "101") {
		t.Fatalf("upgrade answer %q %v", status, err)
	}
	client := newHTTPClient(t)
	u.open() // plain requests pass straight through
	for i := range 3 {
		if r := sendTo(t, client, siteURL("/hold")); r.status != 200 {
			t.Fatalf("request %d beside an open WebSocket: %d, want 200", i, r.status)
		}
	}
	if v := inProgressMetric(t, "ws"); v != 0 {
		t.Fatalf("in progress %v with only a WebSocket open, want 0", v)
	}
}

// TestThrottleCostAndSettlement: a static cost, a placeholder cost (400 on
// a bad value, which takes nothing) and cost_header settlement from a
// header and a trailer, in memory and on Redis: the headers count units.
func TestThrottleCostAndSettlement(t *testing.T) {
	srv := redistest.Start(t)
	u := startHoldUpstream(t)
	for _, engine := range []string{"memory", "redis"} {
		t.Run(engine, func(t *testing.T) {
			redis := ""
			if engine == "redis" {
				redis = fmt.Sprintf("redis %s {\n\t\t\ttimeout 5s\n\t\t}", srv.URL())
			}
			zone := "tok" + engine
			gateway(t, "", fmt.Sprintf(`
	handle /weighted {
		throttle {
			zone w%[1]s
			rate 10/1h
			cost {header.X-Cost}
			%[2]s
		}
		respond "ok"
	}
	handle {
		throttle {
			zone %[1]s
			key {header.X-Client}
			rate 100/1h
			cost 10
			cost_header X-Tokens-Used
			%[2]s
		}
		rewrite * /tokens?{query}
		reverse_proxy %[3]s
	}`, zone, redis, u.addr))
			client := newHTTPClient(t)
			for _, bad := range []string{"0", "11", "x", ""} {
				if r := sendTo(t, client, siteURL("/weighted"), "X-Cost", bad); r.status != 400 {
					t.Fatalf("cost %q: %d, want 400", bad, r.status)
				}
			}
			if r := sendTo(t, client, siteURL("/weighted"), "X-Cost", "7"); r.status != 200 || !strings.Contains(r.header.Get("RateLimit"), ";r=3;") {
				t.Fatalf("cost 7 after bad ones: %d %q", r.status, r.header.Get("RateLimit"))
			}
			remaining := func(r result) int {
				m := regexp.MustCompile(`"` + zone + `";r=(\d+);`).FindStringSubmatch(r.header.Get("RateLimit"))
				if m == nil {
					t.Fatalf("RateLimit %q", r.header.Get("RateLimit"))
				}
				n, _ := strconv.Atoi(m[1])
				return n
			}
			// 10 up front, the response reports 35: 65 left, shown on
			// the next response (10 more up front: 55).
			if r := sendTo(t, client, siteURL("/?n=35"), "X-Client", "a"); r.status != 200 || remaining(r) != 90 {
				t.Fatalf("first: %d r=%d, want 200 and 90", r.status, remaining(r))
			}
			if r := sendTo(t, client, siteURL("/?n=2"), "X-Client", "a"); remaining(r) != 55 {
				t.Fatalf("after a report of 35: r=%d, want 55", remaining(r))
			}
			// That one reported 2 (8 given back); a trailer reports 60.
			if r := sendTo(t, client, siteURL("/?n=60&trailer=1"), "X-Client", "a"); remaining(r) != 53 {
				t.Fatalf("after a report of 2: r=%d, want 53", remaining(r))
			}
			// 35 + 2 + 60 = 97 spent: 3 left, not enough for 10.
			r := sendTo(t, client, siteURL("/?n=1"), "X-Client", "a")
			if r.status != 429 {
				t.Fatalf("after reports of 35, 2 and 60: %d r=%d, want 429", r.status, remaining(r))
			}
		})
	}
}
