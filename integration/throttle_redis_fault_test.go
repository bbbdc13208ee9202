package integration

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"
)

// Throttle on a Redis Cluster with one master frozen, through a real Caddy.

// TestThrottleRedisFrozenMaster: 30 clients load a Caddy throttling on a
// 3-master Cluster with `timeout 100ms` and `on_error allow`; one master is
// frozen (SIGSTOP) for 2.5 s. No request takes longer than the timeout +
// 50 ms from the first failure until the master resumes; the clients served by the two healthy
// masters are still decided by Redis (their responses carry RateLimit
// headers, and the healthy masters run the script for them); after the
// master resumes its clients are decided by Redis again.
func TestThrottleRedisFrozenMaster(t *testing.T) {
	// The healthy masters serve their slots while one is down (with full
	// coverage required, the Cluster refuses every key once it marks the
	// frozen master failed, after cluster-node-timeout; that moment itself
	// is kept out of the 2.5 s freeze).
	cl := redistest.StartCluster(t, "--cluster-require-full-coverage", "no", "--cluster-node-timeout", "10000")
	const timeout = 100 * time.Millisecond
	tc := gateway(t, "", fmt.Sprintf(`
	throttle {
		zone frozen
		key {header.X-Client}
		rate 1/1s burst 1000000
		redis %s {
			timeout 100ms
			on_error allow
		}
	}
	respond "ok"`, strings.Join(cl.URLs(), " ")))
	client := newHTTPClient(t)
	const clients = 60
	for i := range clients {
		if resp, _ := do(t, tc, get(t, "/", "X-Client", "c"+strconv.Itoa(i))); resp.StatusCode != http.StatusOK || resp.Header.Get("RateLimit") == "" {
			t.Fatalf("client %d before the freeze: status %d, RateLimit %q", i, resp.StatusCode, resp.Header.Get("RateLimit"))
		}
	}
	// Which master serves each client: its key is `throttle:frozen{t:c<i>}:…`.
	owner := make([]int, clients)
	for i := range owner {
		owner[i] = -1
	}
	for n, node := range cl.Nodes {
		for k := range strings.FieldsSeq(node.MustCli("--scan", "--pattern", "throttle:frozen{*")) {
			tag, _, _ := strings.Cut(strings.TrimPrefix(k, "throttle:frozen{t:c"), "}")
			if i, err := strconv.Atoi(tag); err == nil && i < clients {
				owner[i] = n
			}
		}
	}
	const frozen = 1
	for i, n := range owner {
		if n < 0 {
			t.Fatalf("client %d: key on no master", i)
		}
	}

	type hit struct {
		start, end time.Time
		decided    bool
		client     int
	}
	var (
		mu   sync.Mutex
		hits []hit
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	const workers = 30
	for w := range workers {
		wg.Go(func() {
			var mine []hit
			defer func() {
				mu.Lock()
				hits = append(hits, mine...)
				mu.Unlock()
			}()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				i := (w + n*workers) % clients
				start := time.Now()
				r := sendTo(t, client, siteURL("/"), "X-Client", "c"+strconv.Itoa(i))
				if r.status != http.StatusOK {
					t.Errorf("status %d", r.status)
					return
				}
				mine = append(mine, hit{start, time.Now(), r.header.Get("RateLimit") != "", i})
				time.Sleep(time.Millisecond)
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	cl.ResetStats()
	freezeAt := time.Now()
	cl.Nodes[frozen].Freeze()
	time.Sleep(2500 * time.Millisecond)
	healthyCalls := 0
	for n, node := range cl.Nodes {
		if n != frozen {
			healthyCalls += node.CommandCalls("evalsha")
		}
	}
	resumeAt := time.Now()
	cl.Nodes[frozen].Resume()
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	var firstFail time.Time
	for _, h := range hits {
		if !h.decided && h.start.After(freezeAt) && (firstFail.IsZero() || h.end.Before(firstFail)) {
			firstFail = h.end
		}
	}
	if firstFail.IsZero() {
		t.Fatal("no request fell back with a master frozen")
	}
	var slow, healthy, healthyDecided, resumedDecided int
	var worst time.Duration
	for _, h := range hits {
		d := h.end.Sub(h.start)
		// The bound holds while the master is frozen; after it resumes,
		// the Cluster catches up and may fail calls of its own.
		if h.end.After(firstFail) && h.end.Before(resumeAt) {
			worst = max(worst, d)
			if d > timeout+50*time.Millisecond {
				slow++
				if slow <= 5 {
					t.Logf("slow: %v, started %v after the freeze, client on master %d (frozen %d), decided %v",
						d, h.start.Sub(freezeAt), owner[h.client], frozen, h.decided)
				}
			}
		}
		if owner[h.client] != frozen && h.start.After(freezeAt) && h.end.Before(resumeAt) {
			healthy++
			if h.decided {
				healthyDecided++
			}
		}
		if owner[h.client] == frozen && h.start.After(resumeAt.Add(1500*time.Millisecond)) && h.decided {
			resumedDecided++
		}
	}
	t.Logf("%d requests; first failure %v after the freeze; %d over timeout+50ms (max after it %v); healthy masters decided %d of %d, ran the script %d times",
		len(hits), firstFail.Sub(freezeAt), slow, worst, healthyDecided, healthy, healthyCalls)
	if slow > 0 {
		t.Errorf("%d requests took over timeout+50ms after the first failure (max %v)", slow, worst)
	}
	if healthy == 0 || healthyDecided*10 < healthy*9 || healthyCalls*10 < healthy*9 {
		t.Errorf("while a master was frozen, the healthy masters decided %d of %d requests of their clients (%d script calls)",
			healthyDecided, healthy, healthyCalls)
	}
	if resumedDecided == 0 {
		t.Error("the clients of the resumed master are not decided by Redis again")
	}
}
