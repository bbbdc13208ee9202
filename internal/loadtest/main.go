// Command loadtest measures what the gateway's directives cost, through a
// real caddy binary, on loopback only, with bounded load. It starts
// upstreams in this process, one caddy with a site per scenario (the table
// in scenarios.go), and (when redis-server is installed) a Redis on a free
// port; then it sends the same number of keep-alive requests to every
// scenario in alternating rounds, after a warm-up, and prints one table:
// per scenario, throughput, p50/p99 latency, the caddy process's CPU time
// per request (utime+stime from /proc), the heap objects and bytes the
// caddy process allocates per request (its own memstats Mallocs and
// TotalAlloc, read from /debug/vars on its admin endpoint), and each
// against its baseline of the same run, with the allocation budget it is
// held to.
//
// A scenario and its baseline send the same request (the same
// Authorization, Origin or other header), so a delta measures the
// directive's work alone, not a bigger request.
//
//	go run ./internal/loadtest -caddy bin/caddy -n 5000 -c 16 -rounds 4
//
// With -pprof DIR, each scenario then gets another n requests between two
// allocation profiles (/debug/pprof/heap?gc=1, alloc_objects), saved as
// DIR/<scenario>.before.pb.gz and .after.pb.gz for `go tool pprof
// -sample_index=alloc_objects -diff_base`, and the program lists, per
// scenario, the functions whose allocations per request differ from its
// baseline's; -memprofilerate 1 makes those counts exact (and every figure
// of the table slower). Then each scenario runs under load for 5 s of CPU
// profile (/debug/pprof/profile), saved as DIR/<scenario>.cpu.pb.gz.
package main

import (
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

	"github.com/caddygateway/caddy-gateway/internal/procstat"
	"github.com/golang-jwt/jwt/v5"
)

type options struct {
	caddyBin       string
	n, conc        int
	rounds         int
	only           string
	pprofDir       string
	memProfileRate int
}

func main() {
	var o options
	flag.StringVar(&o.caddyBin, "caddy", "bin/caddy", "caddy binary built with the gateway")
	flag.IntVar(&o.n, "n", 5000, "requests per scenario per round")
	flag.IntVar(&o.conc, "c", 16, "concurrent clients")
	flag.IntVar(&o.rounds, "rounds", 4, "alternating rounds")
	limit := flag.Duration("timeout", 10*time.Minute, "hard limit for the whole run")
	flag.StringVar(&o.only, "only", "", "comma-separated scenario names to run (with their baselines; the first baseline always runs)")
	flag.StringVar(&o.pprofDir, "pprof", "", "directory for allocation profiles around n more requests per scenario, and a per-function diff over each baseline")
	flag.IntVar(&o.memProfileRate, "memprofilerate", 0, "caddy's runtime.MemProfileRate (GODEBUG memprofilerate; 1 = every allocation; slows every figure)")
	flag.Parse()
	if o.n < 1 || o.conc < 1 || o.rounds < 1 {
		fmt.Fprintln(os.Stderr, "loadtest: -n, -c and -rounds must be at least 1")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
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
	e := &env{dir: dir, upstream: up.Addr}
	if e.pubFile, e.token, err = rs256Token(dir); err != nil {
		return err
	}
	if reason := redisUnsupported(ctx, o.caddyBin, dir); reason != "" {
		e.redisSkip = reason
	} else if redis, err := startRedis(ctx, dir); err != nil {
		e.redisSkip = "redis-server: " + err.Error()
	} else {
		defer redis.stop()
		e.redis = redis.addr
		e.redisSock = redis.sock
		e.redisServer = redis
	}

	all := scenarios(e)
	if err := checkTable(all); err != nil {
		return err
	}
	scs, err := selectScenarios(all, o.only)
	if err != nil {
		return err
	}
	if err := skipUnadaptable(ctx, o.caddyBin, dir, scs); err != nil {
		return err
	}

	adminAddr := freeAddr()
	cfgFile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgFile, []byte(caddyfile(adminAddr, scs, true)), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, o.caddyBin, "run", "--config", cfgFile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	if o.memProfileRate > 0 {
		cmd.Env = append(cmd.Env, "GODEBUG=memprofilerate="+strconv.Itoa(o.memProfileRate))
	}
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	pid := cmd.Process.Pid

	client := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: o.conc * 2, MaxConnsPerHost: o.conc * 2},
		Timeout:   10 * time.Second,
	}
	adm := &admin{base: "http://" + adminAddr, client: client}
	for _, sc := range scs {
		if sc.skip != "" {
			continue
		}
		if err := waitUp(ctx, client, sc); err != nil {
			return fmt.Errorf("scenario %s: %w\ncaddy output:\n%s", sc.name, err, logs.String())
		}
	}

	// Warm-up: connections, caches and heap settle before anything is
	// measured.
	for _, sc := range scs {
		if sc.skip != "" {
			continue
		}
		if _, err := load(ctx, client, sc, max(o.n/5, o.conc), o.conc); err != nil {
			return fmt.Errorf("scenario %s, warm-up: %w", sc.name, err)
		}
	}
	overhead, err := adm.readingOverhead(ctx)
	if err != nil {
		return fmt.Errorf("caddy admin: %w\ncaddy output:\n%s", err, logs.String())
	}

	tick := clockTick(ctx)
	fmt.Printf("caddy-gateway load: %d keep-alive requests x %d rounds per scenario after a warm-up, %d concurrent clients, loopback\n",
		o.n, o.rounds, o.conc)
	if o.memProfileRate > 0 {
		fmt.Printf("caddy runs with GODEBUG=memprofilerate=%d: times and CPU are not comparable with a normal run\n", o.memProfileRate)
	}
	for round := range o.rounds {
		// Each round starts with the next scenario, so that none always
		// runs first (or right after the same neighbour).
		order := append(slices.Clone(scs[round%len(scs):]), scs[:round%len(scs)]...)
		for _, sc := range order {
			if sc.skip != "" {
				continue
			}
			if err := measureRound(ctx, client, adm, e, sc, pid, tick, overhead, o); err != nil {
				return fmt.Errorf("scenario %s, round %d: %w", sc.name, round+1, err)
			}
		}
	}
	fmt.Println()
	printReport(os.Stdout, scs)

	if o.pprofDir != "" {
		if err := profile(ctx, client, adm, scs, o); err != nil {
			return err
		}
	}
	return nil
}

// measureRound sends one round of requests to a scenario and adds what the
// caddy process (and redis-server) spent on it.
func measureRound(ctx context.Context, client *http.Client, adm *admin, e *env, sc *scenario, pid int, tick time.Duration, overhead memStats, o options) error {
	var calls0, rcpu0 int64
	var err error
	if sc.redis {
		if calls0, err = e.redisServer.scriptCalls(); err != nil {
			return err
		}
		if rcpu0, err = procCPU(e.redisServer.cmd.Process.Pid); err != nil {
			return err
		}
	}
	ms0, err := adm.memStats(ctx)
	if err != nil {
		return err
	}
	cpu0, err := procCPU(pid)
	if err != nil {
		return err
	}
	io0, err := procstat.IO(pid)
	if err != nil {
		return err
	}
	r, err := load(ctx, client, sc, o.n, o.conc)
	if err != nil {
		return err
	}
	cpu1, err := procCPU(pid)
	if err != nil {
		return err
	}
	io1, err := procstat.IO(pid)
	if err != nil {
		return err
	}
	// The last responses are read; let their handlers return before the
	// reading, so that their allocations count here and not in the next
	// scenario.
	time.Sleep(20 * time.Millisecond)
	ms1, err := adm.memStats(ctx)
	if err != nil {
		return err
	}
	sc.m.addRound(r, time.Duration(cpu1-cpu0)*tick, io1.Sub(io0), ms0, ms1, overhead)
	if sc.redis {
		calls1, err := e.redisServer.scriptCalls()
		if err != nil {
			return err
		}
		rcpu1, err := procCPU(e.redisServer.cmd.Process.Pid)
		if err != nil {
			return err
		}
		sc.m.calls += calls1 - calls0
		sc.m.rcpu += time.Duration(rcpu1-rcpu0) * tick
	}
	return nil
}

// cpuProfileTime is how long each scenario's CPU profile runs.
const cpuProfileTime = 5 * time.Second

// profile saves allocation profiles before and after n more requests per
// scenario, and CPU profiles under load, and prints where each scenario
// allocates more than its baseline.
func profile(ctx context.Context, client *http.Client, adm *admin, scs []*scenario, o options) error {
	if err := os.MkdirAll(o.pprofDir, 0o755); err != nil {
		return err
	}
	fmt.Printf("\nallocation profiles in %s (%d requests per scenario between .before and .after):\n", o.pprofDir, o.n)
	for _, sc := range scs {
		if sc.skip != "" {
			continue
		}
		if err := adm.saveAllocs(ctx, o.pprofDir, sc.name+".before"); err != nil {
			return err
		}
		if _, err := load(ctx, client, sc, o.n, o.conc); err != nil {
			return fmt.Errorf("scenario %s, profile: %w", sc.name, err)
		}
		time.Sleep(20 * time.Millisecond)
		if err := adm.saveAllocs(ctx, o.pprofDir, sc.name+".after"); err != nil {
			return err
		}
		fmt.Printf("  go tool pprof -sample_index=alloc_objects -top -diff_base %[1]s/%[2]s.before.pb.gz %[1]s/%[2]s.after.pb.gz\n", o.pprofDir, sc.name)
	}
	// CPU: a profile of cpuProfileTime per scenario, under load all along.
	fmt.Printf("\nCPU profiles in %s (%s of load per scenario):\n", o.pprofDir, cpuProfileTime)
	for _, sc := range scs {
		if sc.skip != "" {
			continue
		}
		done := make(chan error, 1)
		go func() { done <- adm.saveCPU(ctx, cpuProfileTime, o.pprofDir, sc.name+".cpu") }()
		var perr error
		served, batch := 0, min(o.n, 2000)
	loop:
		for {
			select {
			case perr = <-done:
				break loop
			default:
			}
			if _, err := load(ctx, client, sc, batch, o.conc); err != nil {
				return fmt.Errorf("scenario %s, CPU profile: %w", sc.name, err)
			}
			served += batch
		}
		if perr != nil {
			return perr
		}
		// Divide a profile's samples by the requests to read them per request.
		fmt.Printf("  go tool pprof -top %s/%s.cpu.pb.gz  (about %d requests)\n", o.pprofDir, sc.name, served)
	}

	// Per scenario, where its allocations per request differ from its
	// baseline's: exact with -memprofilerate 1, an estimate otherwise.
	byName := indexByName(scs)
	flat := map[string]map[string]int64{}
	for _, sc := range scs {
		if sc.skip == "" {
			f, err := flatAllocs(ctx, o.pprofDir, sc.name)
			if err != nil {
				return err
			}
			flat[sc.name] = f
		}
	}
	exact := "memprofilerate 1: every allocation but the tiny ones (under 16 B, no pointers) that share a block, which memstats counts"
	if o.memProfileRate != 1 {
		exact = "sampled: run with -memprofilerate 1 for exact counts"
	}
	for _, sc := range scs {
		b := byName[sc.against]
		if sc.skip != "" || b == nil || b.skip != "" {
			continue
		}
		fmt.Printf("\n%s over %s, allocations per request by function (flat; %s):\n", sc.name, b.name, exact)
		for _, d := range allocDeltas(flat[b.name], flat[sc.name], o.n, 0.1) {
			fmt.Printf("  %+7.2f  %s\n", d.delta, d.fn)
		}
	}
	return nil
}

// caddyfile is the config of the caddy under test: the admin endpoint and
// one site per scenario that runs.
func caddyfile(adminAddr string, scs []*scenario, withAdmin bool) string {
	var cfg strings.Builder
	if withAdmin {
		fmt.Fprintf(&cfg, "{\n\tadmin %s\n\tpersist_config off\n}\n", adminAddr)
	}
	for _, sc := range scs {
		if sc.skip != "" {
			continue
		}
		if sc.addr == "" {
			sc.addr = freeAddr()
		}
		// The header tells this caddy's answers from those of another
		// process that took a port between freeAddr and caddy's bind.
		fmt.Fprintf(&cfg, "http://%s {\nbind 127.0.0.1\nheader X-Load-Scenario %s\n%s\n}\n", sc.addr, sc.name, strings.Join(sc.site, "\n"))
	}
	return cfg.String()
}

// skipUnadaptable marks the scenarios this caddy binary cannot adapt (a
// directive it does not know, e.g. a binary older than the tree) as
// skipped, with caddy's message.
func skipUnadaptable(ctx context.Context, caddyBin, dir string, scs []*scenario) error {
	if adaptErr(ctx, caddyBin, dir, caddyfile("", scs, false)) == "" {
		return nil
	}
	for _, sc := range scs {
		if sc.skip != "" {
			continue
		}
		if msg := adaptErr(ctx, caddyBin, dir, caddyfile("", []*scenario{sc}, false)); msg != "" {
			sc.skip = "this caddy binary cannot adapt it: " + msg
		}
	}
	return ctx.Err()
}

// adaptErr runs `caddy adapt` on a config and returns its error message,
// or "".
func adaptErr(ctx context.Context, caddyBin, dir, cfg string) string {
	f := filepath.Join(dir, "probe.Caddyfile")
	if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
		return err.Error()
	}
	out, err := exec.CommandContext(ctx, caddyBin, "adapt", "--config", f, "--adapter", "caddyfile").CombinedOutput()
	if err == nil {
		return ""
	}
	msg := strings.TrimSpace(string(out))
	for line := range strings.SplitSeq(msg, "\n") {
		var entry struct{ Msg, Error string }
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg != "" {
			msg = entry.Msg
			if entry.Error != "" {
				msg += ": " + entry.Error
			}
		}
	}
	return msg
}

// redisUnsupported says why the binary cannot run throttle's redis block
// (empty when it can), so that no redis-server is started for nothing.
func redisUnsupported(ctx context.Context, caddyBin, dir string) string {
	probe := "http://127.0.0.1:1 {\n\tthrottle {\n\t\tzone probe\n\t\trate 1/1s\n\t\tredis redis://127.0.0.1:1 {\n\t\t\ton_error deny\n\t\t}\n\t}\n}\n"
	if msg := adaptErr(ctx, caddyBin, dir, probe); msg != "" {
		return "this caddy binary does not know throttle's redis block: " + msg
	}
	return ""
}

// rs256Token makes an RSA key, writes its public half to dir and returns
// the file and a token it verifies.
func rs256Token(dir string) (pubFile, token string, err error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", "", err
	}
	pubFile = filepath.Join(dir, "rs256.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		return "", "", err
	}
	token, err = jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"sub": "load-user", "role": "admin", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(),
	}).SignedString(key)
	return pubFile, token, err
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

// newRequest is the request every client of a scenario sends.
func newRequest(ctx context.Context, sc *scenario) *http.Request {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+sc.addr+"/", nil)
	req.Header = sc.header.Clone()
	return req
}

func waitUp(ctx context.Context, client *http.Client, sc *scenario) error {
	var last string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := client.Do(newRequest(ctx, sc))
		if err != nil {
			last = err.Error()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("X-Load-Scenario"); got != sc.name {
			return fmt.Errorf("%s is answered by another server (X-Load-Scenario %q): run again", sc.addr, got)
		}
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
	}
	return fmt.Errorf("never answered 200 (%s)", last)
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

// result is one round of one scenario: every request's latency and the
// round's throughput.
type result struct {
	lat []time.Duration
	rps float64
}

func load(ctx context.Context, client *http.Client, sc *scenario, n, conc int) (result, error) {
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
				req := newRequest(ctx, sc)
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
		return result{}, fmt.Errorf("%s: %d of %d requests failed (first: %v)", sc.addr, f, n, firstFailure.Load())
	}
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
