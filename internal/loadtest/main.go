// Command loadtest measures what the gateway's directives cost, through a
// real caddy binary, on loopback only, with bounded load. It starts
// upstreams in this process, one caddy with a site per scenario, and (when
// redis-server is installed) a Redis on a free port; then it sends the same
// number of requests to every scenario in alternating rounds and prints, per
// scenario, throughput, p50/p99 latency, the caddy process's CPU time per
// request (utime+stime from /proc), and each against the baseline of the
// same run.
//
// Every scenario, the baseline included, gets the same request: GET with
// the same Authorization header (an RS256 token), so a ratio measures the
// gateway's work alone, not a bigger request.
//
//	go run ./internal/loadtest -caddy bin/caddy -n 5000 -c 16 -rounds 3
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func main() {
	caddyBin := flag.String("caddy", "bin/caddy", "caddy binary built with the gateway")
	n := flag.Int("n", 5000, "requests per scenario per round")
	conc := flag.Int("c", 16, "concurrent clients")
	rounds := flag.Int("rounds", 3, "alternating rounds")
	limit := flag.Duration("timeout", 5*time.Minute, "hard limit for the whole run")
	only := flag.String("only", "", "comma-separated scenario names to run (the baseline always runs)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	if err := run(ctx, *caddyBin, *n, *conc, *rounds, *only); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// scenario is one site of the caddy under test.
type scenario struct {
	name    string
	about   string
	site    string // directives of the site, before its terminal handler
	against string // name of the scenario it is compared with
	addr    string
	res     []result
	cpu     time.Duration // caddy CPU time spent while this scenario ran
	redis   *redisServer  // calls per request are reported when set
	calls   int64
	rcpu    time.Duration // redis-server CPU time while this scenario ran
	skip    string
}

func run(ctx context.Context, caddyBin string, n, conc, rounds int, only string) error {
	dir, err := os.MkdirTemp("", "caddy-gateway-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	up, err := startUpstream(ctx)
	if err != nil {
		return err
	}
	defer up.Close()
	upAddr := up.Addr

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	pubFile := filepath.Join(dir, "rs256.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		return err
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"sub": "load-user", "role": "admin", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(),
	}).SignedString(key)
	if err != nil {
		return err
	}

	throttle := "throttle {\n\t\trate 1000000/1s burst 1000000\n\t}"
	jwtAuth := fmt.Sprintf("jwt_auth {\n\t\tpublic_key %s\n\t\theader X-User-Id sub\n\t\theader X-User-Role role\n\t}", pubFile)
	proxy := "reverse_proxy " + upAddr
	scenarios := []*scenario{
		{name: "baseline", about: "reverse_proxy alone", site: proxy},
		{name: "throttle", about: "throttle (memory) + reverse_proxy", site: throttle + "\n\t" + proxy, against: "baseline"},
		{name: "jwt_auth", about: "jwt_auth RS256, 2 identity headers + reverse_proxy", site: jwtAuth + "\n\t" + proxy, against: "baseline"},
		{name: "stack", about: "throttle + jwt_auth RS256 + reverse_proxy", site: throttle + "\n\t" + jwtAuth + "\n\t" + proxy, against: "baseline"},
		{name: "slowest", about: "reverse_proxy to aggregate's slowest backend (5ms)", site: "rewrite * /slow\n\t" + proxy},
		{name: "aggregate", about: "aggregate of 3 backends (0, 2, 5ms)", against: "slowest", site: fmt.Sprintf(`aggregate {
		backend fast http://%[1]s/fast
		backend mid http://%[1]s/mid
		backend slow http://%[1]s/slow
	}`, upAddr)},
	}

	// Throttle on Redis, against throttle in memory, when the binary and
	// the machine can.
	redisSc := &scenario{name: "throttle_redis", about: "throttle (Redis zone) + reverse_proxy", against: "throttle"}
	scenarios = append(scenarios, redisSc)
	var redis *redisServer
	if reason := redisUnsupported(ctx, caddyBin, dir); reason != "" {
		redisSc.skip = reason
	} else if redis, err = startRedis(ctx); err != nil {
		redisSc.skip = "redis-server: " + err.Error()
	} else {
		defer redis.stop()
		redisSc.redis = redis
		redisSc.site = fmt.Sprintf("throttle {\n\t\tzone load_redis\n\t\trate 1000000/1s burst 1000000\n\t\tredis redis://%s {\n\t\t\ton_error deny\n\t\t}\n\t}\n\t%s", redis.addr, proxy)
	}

	if only != "" {
		keep := map[string]bool{"baseline": true}
		for s := range strings.SplitSeq(only, ",") {
			keep[strings.TrimSpace(s)] = true
		}
		for _, sc := range scenarios {
			if keep[sc.name] && sc.against != "" {
				keep[sc.against] = true
			}
		}
		scenarios = slices.DeleteFunc(scenarios, func(sc *scenario) bool { return !keep[sc.name] })
	}

	admin := freeAddr()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "{\n\tadmin %s\n\tpersist_config off\n}\n", admin)
	for _, sc := range scenarios {
		if sc.skip != "" {
			continue
		}
		sc.addr = freeAddr()
		// The header tells this caddy's answers from those of another
		// process that took a port between freeAddr and caddy's bind.
		fmt.Fprintf(&cfg, "http://%s {\n\tbind 127.0.0.1\n\theader X-Load-Scenario %s\n\t%s\n}\n", sc.addr, sc.name, sc.site)
	}
	cfgFile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, caddyBin, "run", "--config", cfgFile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	pid := cmd.Process.Pid

	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: conc * 2, MaxConnsPerHost: conc * 2},
		Timeout:   10 * time.Second,
	}
	for _, sc := range scenarios {
		if sc.skip != "" {
			continue
		}
		if err := waitUp(ctx, client, "http://"+sc.addr+"/", tok, sc.name); err != nil {
			return fmt.Errorf("scenario %s: %w\ncaddy output:\n%s", sc.name, err, logs.String())
		}
	}

	// Warm-up: connections, caches and heap settle before anything is
	// measured.
	for _, sc := range scenarios {
		if sc.skip != "" {
			continue
		}
		if _, err := load(ctx, client, "http://"+sc.addr+"/", tok, max(n/5, conc), conc); err != nil {
			return fmt.Errorf("scenario %s, warm-up: %w", sc.name, err)
		}
	}

	tick := clockTick(ctx)
	fmt.Printf("caddy-gateway load: %d requests x %d rounds per scenario, %d concurrent clients, loopback; every request carries the same Authorization header (RS256 token)\n",
		n, rounds, conc)
	for round := range rounds {
		// Each round starts with the next scenario, so that none always
		// runs first (or right after the same neighbour).
		order := append(slices.Clone(scenarios[round%len(scenarios):]), scenarios[:round%len(scenarios)]...)
		for _, sc := range order {
			if sc.skip != "" {
				continue
			}
			var before, rcpu0 int64
			if sc.redis != nil {
				if before, err = sc.redis.scriptCalls(); err != nil {
					return err
				}
				if rcpu0, err = procCPU(sc.redis.cmd.Process.Pid); err != nil {
					return err
				}
			}
			cpu0, err := procCPU(pid)
			if err != nil {
				return err
			}
			r, err := load(ctx, client, "http://"+sc.addr+"/", tok, n, conc)
			if err != nil {
				return fmt.Errorf("scenario %s, round %d: %w", sc.name, round+1, err)
			}
			cpu1, err := procCPU(pid)
			if err != nil {
				return err
			}
			sc.cpu += time.Duration(cpu1-cpu0) * tick
			sc.res = append(sc.res, r)
			if sc.redis != nil {
				after, err := sc.redis.scriptCalls()
				if err != nil {
					return err
				}
				sc.calls += after - before
				rcpu1, err := procCPU(sc.redis.cmd.Process.Pid)
				if err != nil {
					return err
				}
				sc.rcpu += time.Duration(rcpu1-rcpu0) * tick
			}
		}
	}
	report(scenarios, n*rounds)
	return nil
}

func report(scenarios []*scenario, total int) {
	byName := map[string]*scenario{}
	merged := map[string]result{}
	for _, sc := range scenarios {
		byName[sc.name] = sc
		if sc.skip == "" {
			merged[sc.name] = merge(sc.res)
		}
	}
	cpuPer := func(sc *scenario) time.Duration { return sc.cpu / time.Duration(total) }
	fmt.Printf("\n%-15s %9s %9s %9s %11s   %-24s %s\n", "scenario", "req/s", "p50", "p99", "CPU/req", "vs", "ratio: req/s, p50, p99, CPU/req")
	for _, sc := range scenarios {
		if sc.skip != "" {
			fmt.Printf("%-15s skipped: %s\n", sc.name, sc.skip)
			continue
		}
		r := merged[sc.name]
		line := fmt.Sprintf("%-15s %9.0f %9v %9v %9.1fµs", sc.name, r.rps, r.pct(50).Round(time.Microsecond),
			r.pct(99).Round(time.Microsecond), float64(cpuPer(sc).Nanoseconds())/1e3)
		if b, ok := byName[sc.against]; ok && b.skip == "" {
			br := merged[b.name]
			line += fmt.Sprintf("   %-24s %.3f  %.3f  %.3f  %.3f", b.name, r.rps/br.rps,
				float64(r.pct(50))/float64(br.pct(50)), float64(r.pct(99))/float64(br.pct(99)),
				float64(cpuPer(sc))/float64(cpuPer(b)))
		}
		fmt.Println(line)
	}
	for _, sc := range scenarios {
		if sc.redis != nil && sc.skip == "" {
			fmt.Printf("\n%s: %.3f Redis script calls (EVALSHA+EVAL, INFO commandstats) per request; redis-server CPU %.1fµs per request (not in CPU/req above)\n",
				sc.name, float64(sc.calls)/float64(total), float64((sc.rcpu/time.Duration(total)).Nanoseconds())/1e3)
		}
	}
	fmt.Println("\nscenarios:")
	for _, sc := range scenarios {
		fmt.Printf("  %-15s %s\n", sc.name, sc.about)
	}
	fmt.Println("CPU/req is the caddy process's utime+stime while the scenario ran, divided by its requests (upstreams and this client run in another process).")
}

// startUpstream serves the JSON upstreams on loopback: / answers at once;
// /fast, /mid and /slow are aggregate's backends (0, 2 and 5ms).
func startUpstream(ctx context.Context) (*upstream, error) {
	l, err := new(net.ListenConfig).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	delays := map[string]time.Duration{"/mid": 2 * time.Millisecond, "/slow": 5 * time.Millisecond}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := delays[r.URL.Path]; d > 0 {
			time.Sleep(d)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})}
	go func() { _ = srv.Serve(l) }()
	return &upstream{Server: srv, Addr: l.Addr().String()}, nil
}

type upstream struct {
	*http.Server
	Addr string
}

func freeAddr() string {
	l, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitUp(ctx context.Context, client *http.Client, url, tok, name string) error {
	var last string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("X-Load-Scenario"); got != name {
			return fmt.Errorf("%s is answered by another server (X-Load-Scenario %q): run again", url, got)
		}
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
	}
	return fmt.Errorf("never answered 200 (%s)", last)
}

// redisUnsupported says why the binary cannot run throttle's redis block
// (empty when it can): `caddy adapt` of a config holding one.
func redisUnsupported(ctx context.Context, caddyBin, dir string) string {
	f := filepath.Join(dir, "redis-probe.Caddyfile")
	probe := "http://127.0.0.1:1 {\n\tthrottle {\n\t\tzone probe\n\t\trate 1/1s\n\t\tredis redis://127.0.0.1:1 {\n\t\t\ton_error deny\n\t\t}\n\t}\n}\n"
	if err := os.WriteFile(f, []byte(probe), 0o600); err != nil {
		return err.Error()
	}
	out, err := exec.CommandContext(ctx, caddyBin, "adapt", "--config", f, "--adapter", "caddyfile").CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		for line := range strings.SplitSeq(msg, "\n") {
			var entry struct{ Msg string }
			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg != "" {
				msg = entry.Msg
			}
		}
		return "this caddy binary does not know throttle's redis block yet: " + msg
	}
	return ""
}

// redisServer is a redis-server started on a free loopback port.
type redisServer struct {
	addr string
	cmd  *exec.Cmd
}

func startRedis(ctx context.Context) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("not installed (scripts/deps.sh installs it)")
	}
	addr := freeAddr()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &redisServer{addr: addr, cmd: cmd}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := r.command("PING"); err == nil {
			return r, nil
		}
	}
	r.stop()
	return nil, errors.New("did not answer PING")
}

func (r *redisServer) stop() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}

// scriptCalls is the number of EVALSHA and EVAL calls Redis has served.
func (r *redisServer) scriptCalls() (int64, error) {
	info, err := r.command("INFO", "commandstats")
	if err != nil {
		return 0, err
	}
	var total int64
	for line := range strings.SplitSeq(info, "\r\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		for field := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(field, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return 0, err
				}
				total += n
			}
		}
	}
	return total, nil
}

// command sends one command in RESP and returns a simple or bulk string
// reply.
func (r *redisServer) command(args ...string) (string, error) {
	d := net.Dialer{Timeout: time.Second}
	conn, err := d.DialContext(context.Background(), "tcp", r.addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return "", err
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 || n > 1<<20 {
			return "", fmt.Errorf("bad bulk length %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis: %s", line)
}

// procCPU is a process's utime+stime in clock ticks (/proc/<pid>/stat).
func procCPU(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces) start after ")".
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat: %q", s)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return utime + stime, nil
}

// clockTick is the length of one /proc clock tick (getconf CLK_TCK, 100 Hz
// when unknown).
func clockTick(ctx context.Context) time.Duration {
	out, err := exec.CommandContext(ctx, "getconf", "CLK_TCK").Output()
	if err == nil {
		if hz, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && hz > 0 {
			return time.Second / time.Duration(hz)
		}
	}
	return 10 * time.Millisecond
}

type result struct {
	lat []time.Duration
	rps float64
}

func (r result) pct(p int) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[(len(r.lat)-1)*p/100]
}

func merge(rs []result) result {
	var out result
	for _, r := range rs {
		out.lat = append(out.lat, r.lat...)
		out.rps += r.rps / float64(len(rs))
	}
	slices.Sort(out.lat)
	return out
}

func load(ctx context.Context, client *http.Client, url, token string, n, conc int) (result, error) {
	lat := make([]time.Duration, n)
	var next, failed atomic.Int64
	var firstFailure atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Header.Set("Authorization", "Bearer "+token)
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[i] = time.Since(t0)
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, "status "+resp.Status)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return result{}, err
	}
	if f := failed.Load(); f > 0 {
		return result{}, fmt.Errorf("%s: %d of %d requests failed (first: %v)", url, f, n, firstFailure.Load())
	}
	slices.Sort(lat)
	return result{lat: lat, rps: float64(n) / elapsed.Seconds()}, nil
}

// lockedBuffer collects the caddy process's output while it runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) < 1<<20 {
		b.buf = append(b.buf, p...)
	}
	return len(p), nil
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
