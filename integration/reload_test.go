package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// caddyProcess is a real caddy binary running a config, with its admin
// endpoint on a free loopback port.
type caddyProcess struct {
	admin string // host:port
	logs  *lockedBuffer
	pid   int
}

// startCaddy runs the binary on the given Caddyfile until the test ends.
func startCaddy(t *testing.T, caddyfile string) *caddyProcess {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cfg, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	run := startBinary(t, "", nil, "run", "--config", cfg, "--adapter", "caddyfile")
	return &caddyProcess{logs: run.logs, pid: run.cmd.Process.Pid}
}

// adminClient opens a connection per request: Caddy replaces its admin
// server on every config load, resetting kept-alive connections.
var adminClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// load POSTs a Caddyfile to the admin endpoint's /load.
func (p *caddyProcess) load(ctx context.Context, caddyfile string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+p.admin+"/load", strings.NewReader(caddyfile))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := adminClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: %d %s", resp.StatusCode, body)
	}
	return nil
}

func (p *caddyProcess) adminGet(t *testing.T, path string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+p.admin+path, nil)
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return string(body)
}

var (
	goroutineTotal = regexp.MustCompile(`^goroutine profile: total (\d+)`)
	heapInuse      = regexp.MustCompile(`(?m)^# HeapInuse = (\d+)$`)
)

// goroutines is the caddy process's goroutine count, from the admin
// endpoint's pprof.
func (p *caddyProcess) goroutines(t *testing.T) (int, string) {
	t.Helper()
	prof := p.adminGet(t, "/debug/pprof/goroutine?debug=1")
	m := goroutineTotal.FindStringSubmatch(prof)
	if m == nil {
		t.Fatalf("no goroutine total in:\n%.500s", prof)
	}
	n, _ := strconv.Atoi(m[1])
	return n, prof
}

// heap is the process's in-use heap after a forced garbage collection.
func (p *caddyProcess) heap(t *testing.T) int {
	t.Helper()
	prof := p.adminGet(t, "/debug/pprof/heap?gc=1&debug=1")
	m := heapInuse.FindStringSubmatch(prof)
	if m == nil {
		t.Fatalf("no HeapInuse in the heap profile")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// peerPorts counts the process's established TCP connections by remote
// port (Linux /proc), to tell which upstream an open connection goes to.
func (p *caddyProcess) peerPorts() map[int]int {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	ports := map[int]int{}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, _ := os.ReadFile(table)
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			if i := strings.LastIndexByte(f[2], ':'); i >= 0 {
				if port, err := strconv.ParseUint(f[2][i+1:], 16, 16); err == nil {
					ports[int(port)]++
				}
			}
		}
	}
	return ports
}

// reloadConfig renders one of the two configs the reload test alternates.
// Both use every directive: throttle (one shared zone in two handlers, a
// per-client key), jwt_auth (the same jwks_url), aggregate, cors when the
// binary has it, and reverse_proxy; they differ in an X-Config header and a
// few settings, so each load is a real change.
func reloadConfig(variant, admin, site, upstream, aggUpstream, jwksURL string, withCORS bool) string {
	leeway, aggTimeout := "30s", "2s"
	if variant == "B" {
		leeway, aggTimeout = "1m", "3s"
	}
	cors := ""
	if withCORS {
		cors = "cors {\n\t\torigins https://app.example\n\t}"
	}
	return fmt.Sprintf(`{
	admin %[1]s
	persist_config off
	grace_period 10s
}
http://%[2]s {
	bind 127.0.0.1
	header X-Config %[3]s
	%[4]s
	throttle /api/* {
		zone shared
		key {http.request.header.X-Client}
		rate 3/1h burst 3
	}
	throttle /agg {
		zone shared
		key {http.request.header.X-Client}
		rate 3/1h burst 3
	}
	jwt_auth {
		jwks_url %[5]s
		leeway %[6]s
		header X-User-Id sub
	}
	handle /agg {
		aggregate {
			backend user http://%[9]s/users/{http.auth.user.id}
			backend orders http://%[9]s/orders?user={http.auth.user.id}
			forward_headers X-User-Id X-Req-Id
			timeout %[8]s
		}
	}
	handle {
		# Caddy's reverse_proxy keeps an old config's idle upstream
		# connections after a reload until they time out (2m by
		# default): a short idle timeout lets the leak check below tell
		# them from connections that never go away.
		reverse_proxy %[7]s {
			transport http {
				keepalive 1s
			}
		}
	}
}
`, admin, site, variant, cors, jwksURL, leeway, upstream, aggTimeout, aggUpstream)
}

// TestReloadsUnderLoad sends 20 config reloads through a real caddy's admin
// endpoint during a steady load: no request fails other than the configured
// 401/429s, throttle state and JWKS keys carry across, and goroutines and
// heap come back to their starting level afterwards.
func TestReloadsUnderLoad(t *testing.T) {
	bin := caddyBinary(t)
	mods, err := exec.CommandContext(t.Context(), bin, "list-modules").Output()
	if err != nil {
		t.Fatal(err)
	}
	withCORS := strings.Contains(string(mods), "http.handlers.cors\n")
	if !withCORS {
		t.Log("this binary has no cors module yet: the configs leave it out")
	}

	up, aggUp := newEchoUpstream(t), newEchoUpstream(t)
	jwks := newJWKSServer(t)
	jwks.cacheControl = "max-age=3600"
	key := signingKey{kid: "reload", method: jwt.SigningMethodRS256, priv: rsaKey(t, 0)}
	jwks.setKeys(key.jwk())
	tok := key.sign(t, claims(nil))

	admin := fmt.Sprintf("127.0.0.1:%d", freePort())
	site := fmt.Sprintf("127.0.0.1:%d", freePort())
	configs := map[string]string{}
	for _, v := range []string{"A", "B"} {
		configs[v] = reloadConfig(v, admin, site, up.addr(), aggUp.addr(), jwks.URL+"/keys", withCORS)
	}
	p := startCaddy(t, configs["A"])
	p.admin = admin

	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 16},
	}
	var clientSeq atomic.Int64
	var reqSeq atomic.Int64
	sendID := func(ctx context.Context, id, path, clientKey string, withToken bool) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+site+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("X-Req-Id", id)
		if clientKey == "" {
			clientKey = "c" + strconv.FormatInt(clientSeq.Add(1), 10)
		}
		req.Header.Set("X-Client", clientKey)
		req.Header.Set("Origin", "https://app.example")
		if withToken {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp, nil
	}
	send := func(ctx context.Context, path, clientKey string, withToken bool) (*http.Response, error) {
		return sendID(ctx, strconv.FormatInt(reqSeq.Add(1), 10), path, clientKey, withToken)
	}

	// Up, with its key set loaded (503 until the first fetch lands).
	var resp *http.Response
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err = send(t.Context(), "/api/x", "", true)
		if err == nil && resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("caddy never answered 200: %v %v", resp, err)
		}
	}

	// One client exhausts its burst before the reloads.
	for i := range 3 {
		if resp, err := send(t.Context(), "/api/x", "victim", true); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("victim request %d: %v %v", i, resp, err)
		}
	}
	if resp, err := send(t.Context(), "/agg", "victim", true); err != nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("victim over its burst (shared zone, other handler): %v %v, want 429", resp, err)
	}

	// Steady load at about rps requests a second from workers goroutines.
	// Each request is a new client (its own throttle key) except every
	// tenth, which is the exhausted victim (429); every seventh has no
	// token (401); every third goes to the aggregate route.
	const rps, workers = 300, 8
	var (
		statuses sync.Map // int -> *atomic.Int64
		failures atomic.Int64
		resets   atomic.Int64
		resetIDs sync.Map // X-Req-Id -> error
		firstErr atomic.Value
		sent     atomic.Int64
	)
	count := func(code int) {
		c, _ := statuses.LoadOrStore(code, new(atomic.Int64))
		c.(*atomic.Int64).Add(1)
	}
	runLoad := func(ctx context.Context) *sync.WaitGroup {
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / rps)
		jobs := make(chan int64)
		wg.Go(func() {
			defer tick.Stop()
			defer close(jobs)
			for i := int64(0); ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					select {
					case jobs <- i:
					case <-ctx.Done():
						return
					}
				}
			}
		})
		for range workers {
			wg.Go(func() {
				for i := range jobs {
					path, clientKey, withToken := "/api/load", "", true
					if i%3 == 0 {
						path = "/agg"
					}
					if i%10 == 0 {
						clientKey = "victim"
					}
					if i%7 == 0 {
						withToken = false
					}
					sent.Add(1)
					// Not the test's context: a request in flight when
					// the load stops must still finish.
					id := strconv.FormatInt(reqSeq.Add(1), 10)
					resp, err := sendID(context.Background(), id, path, clientKey, withToken)
					if err != nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)) {
						// A connection closed under a request by the
						// server being replaced (Caddy core's
						// handover; the in-process harness retries
						// these too): counted, checked below never to
						// have reached an upstream, and sent again.
						resets.Add(1)
						resetIDs.Store(id, err.Error())
						resp, err = send(context.Background(), path, clientKey, withToken)
					}
					if err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					count(resp.StatusCode)
				}
			})
		}
		return &wg
	}

	// Warm-up under the same load, then the starting level. Each level is
	// taken right after a config load with no request since, so that the
	// idle upstream connections of the config that served the load (closed
	// by its Cleanup) are not counted: what remains is what outlives a
	// config.
	ctx, stop := context.WithTimeout(t.Context(), 2*time.Second)
	runLoad(ctx).Wait()
	stop()
	client.CloseIdleConnections()
	if err := p.load(t.Context(), configs["B"]); err != nil {
		t.Fatal(err)
	}
	if err := p.load(t.Context(), configs["A"]); err != nil {
		t.Fatal(err)
	}
	startG, startProf := p.settledGoroutines(t, 0)
	startHeap := p.heap(t)
	fetchesBefore := jwks.fetches.Load()

	// 20 reloads, alternating B and A, during the load. The fetch count is
	// taken after the two loads above, which carried the key set too.
	ctx, stop = context.WithCancel(t.Context())
	wg := runLoad(ctx)
	time.Sleep(300 * time.Millisecond)
	var reloadErr error
	for i := range 20 {
		v := "B"
		if i%2 == 1 {
			v = "A"
		}
		if err := p.load(t.Context(), configs[v]); err != nil {
			reloadErr = fmt.Errorf("reload %d (%s): %w", i+1, v, err)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	stop()
	wg.Wait()
	if reloadErr != nil {
		t.Fatal(reloadErr)
	}

	var summary []string
	statuses.Range(func(k, v any) bool {
		summary = append(summary, fmt.Sprintf("%d: %d", k, v.(*atomic.Int64).Load()))
		return true
	})
	t.Logf("load during reloads: %d requests; statuses %s; transport errors %d (after %d retries)", sent.Load(), strings.Join(summary, ", "), failures.Load(), resets.Load())
	if n := resets.Load(); n > 0 {
		t.Logf("%d connections were closed under a request by the server handover and retried", n)
		for _, u := range []*echoUpstream{up, aggUp} {
			u.mu.Lock()
			for _, r := range u.reqs {
				if e, ok := resetIDs.Load(r.Header.Get("X-Req-Id")); ok {
					t.Errorf("request %s reached an upstream, yet its client got %v", r.Header.Get("X-Req-Id"), e)
				}
			}
			u.mu.Unlock()
		}
	}
	if f := failures.Load(); f > 0 {
		t.Errorf("%d requests failed at the transport (first: %v)", f, firstErr.Load())
	}
	statuses.Range(func(k, v any) bool {
		switch k.(int) {
		case http.StatusOK, http.StatusUnauthorized, http.StatusTooManyRequests:
		default:
			t.Errorf("%d responses with status %d", v.(*atomic.Int64).Load(), k)
		}
		return true
	})
	if sent.Load() < 20*rps/10 {
		t.Errorf("only %d requests were sent: the load was not steady", sent.Load())
	}

	// The last config is A (20th reload); throttle state carried across every
	// reload: the victim is still limited, a new client is not.
	resp, err = send(t.Context(), "/api/x", "victim", true)
	if err != nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("victim after the reloads: %v %v, want 429 (zone state lost on reload?)", resp, err)
	} else if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 1000 {
		t.Errorf("victim's Retry-After %q: its bucket was reset", resp.Header.Get("Retry-After"))
	}
	if resp, err = send(t.Context(), "/api/x", "", true); err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("X-Config") != "A" {
		t.Errorf("new client after the reloads: %v %v, want 200 from config A", resp, err)
	}
	// The key set carried across: no fetch per reload.
	if got := jwks.fetches.Load(); got != fetchesBefore {
		t.Errorf("the JWKS server saw %d fetches during 20 reloads, want none", got-fetchesBefore)
	}

	// Goroutines and heap back to their starting level.
	client.CloseIdleConnections()
	if err := p.load(t.Context(), configs["B"]); err != nil {
		t.Fatal(err)
	}
	endG, endProf := p.settledGoroutines(t, startG)
	endHeap := p.heap(t)
	t.Logf("goroutines %d -> %d; heap in use %d KiB -> %d KiB", startG, endG, startHeap>>10, endHeap>>10)
	if endG > startG+goroutineMargin {
		port := func(u string) int { n, _ := strconv.Atoi(u[strings.LastIndexByte(u, ':')+1:]); return n }
		conns := p.peerPorts()
		t.Errorf("goroutines did not come back: %d at the start, %d after load and reloads; open connections: "+
			"%d to reverse_proxy's upstream, %d to aggregate's, %d to the JWKS server\nstart:\n%s\nend:\n%s",
			startG, endG, conns[port(up.URL)], conns[port(aggUp.URL)], conns[port(jwks.URL)],
			profileSummary(startProf), profileSummary(endProf))
	}
	if endHeap > startHeap+startHeap/2+4<<20 {
		t.Errorf("heap in use did not come back: %d KiB at the start, %d KiB after", startHeap>>10, endHeap>>10)
	}
}

// goroutineMargin is how many goroutines above the starting level still
// count as "back": timers and connection goroutines that come and go.
const goroutineMargin = 5

// settledGoroutines polls the goroutine count until it stops falling (or,
// with target > 0, reaches target+goroutineMargin), for up to 20 seconds.
func (p *caddyProcess) settledGoroutines(t *testing.T, target int) (int, string) {
	t.Helper()
	n, prof := p.goroutines(t)
	stable := 0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		if target > 0 && n <= target+goroutineMargin {
			return n, prof
		}
		time.Sleep(250 * time.Millisecond)
		m, mprof := p.goroutines(t)
		if m >= n {
			stable++
		} else {
			stable = 0
		}
		n, prof = m, mprof
		if target == 0 && stable >= 8 {
			break
		}
	}
	return n, prof
}

// profileSummary keeps the count and top frame lines of a debug=1
// goroutine profile.
func profileSummary(prof string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(prof))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	take := 0
	for sc.Scan() {
		line := sc.Text()
		switch {
		case len(line) > 0 && line[0] >= '0' && line[0] <= '9':
			b.WriteString(line + "\n")
			take = 3
		case take > 0 && strings.HasPrefix(line, "#\t"):
			b.WriteString(line + "\n")
			take--
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		b.WriteString(err.Error())
	}
	return b.String()
}
