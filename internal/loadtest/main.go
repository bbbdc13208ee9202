// Command loadtest compares plain reverse_proxy with the gateway stack in
// one run, through a real caddy binary, on loopback only. It starts an
// upstream, runs caddy with two sites in front of it — one plain
// reverse_proxy, one with the gateway directives before the same
// reverse_proxy — sends the same bounded load to each in alternating rounds,
// and prints throughput, latency percentiles and the ratio.
//
//	go run ./internal/loadtest -caddy bin/caddy -n 20000 -c 32
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const secret = "loadtest-secret-0123456789abcdef0123"

func main() {
	caddyBin := flag.String("caddy", "bin/caddy", "caddy binary built with the gateway")
	n := flag.Int("n", 20000, "requests per site per round")
	conc := flag.Int("c", 32, "concurrent clients")
	rounds := flag.Int("rounds", 3, "alternating rounds")
	limit := flag.Duration("timeout", 3*time.Minute, "hard limit for the whole run")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	if err := run(ctx, *caddyBin, *n, *conc, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func freeAddr() string {
	l, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func run(ctx context.Context, caddyBin string, n, conc, rounds int) error {
	upstream := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})}
	ul, err := new(net.ListenConfig).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = upstream.Serve(ul) }()
	defer upstream.Close()

	mods, err := exec.CommandContext(ctx, caddyBin, "list-modules").Output()
	if err != nil {
		return fmt.Errorf("%s list-modules: %w", caddyBin, err)
	}
	stack := []string{"jwt_auth {\n\t\tsecret " + secret + "\n\t\theader X-User-Id sub\n\t}"}
	names := []string{"jwt_auth"}
	if strings.Contains(string(mods), "http.handlers.throttle\n") {
		stack = append([]string{"throttle {\n\t\trate 1000000/1s burst 1000000\n\t}"}, stack...)
		names = append([]string{"throttle"}, names...)
	}
	plain, gw, admin := freeAddr(), freeAddr(), freeAddr()
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	servers {
		metrics
	}
}
http://%s {
	bind 127.0.0.1
	reverse_proxy %s
}
http://%s {
	bind 127.0.0.1
	%s
	reverse_proxy %s
}
`, admin, plain, ul.Addr(), gw, strings.Join(stack, "\n\t"), ul.Addr())
	dir, err := os.MkdirTemp("", "caddy-gateway-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgFile := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, caddyBin, "run", "--config", cfgFile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "load-user", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc * 2, MaxConnsPerHost: conc * 2}, Timeout: 10 * time.Second}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+gw+"/", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy did not start")
		}
	}

	fmt.Printf("gateway stack: %s + reverse_proxy; %d requests x %d rounds per site, %d concurrent, loopback\n",
		strings.Join(names, " + "), n, rounds, conc)
	var plainRes, gwRes []result
	for range rounds {
		pr, err := load(ctx, client, "http://"+plain+"/", "", n, conc)
		if err != nil {
			return err
		}
		gr, err := load(ctx, client, "http://"+gw+"/", tok, n, conc)
		if err != nil {
			return err
		}
		plainRes, gwRes = append(plainRes, pr), append(gwRes, gr)
	}
	p, g := merge(plainRes), merge(gwRes)
	fmt.Printf("%-14s %10s %10s %10s %10s\n", "site", "req/s", "p50", "p90", "p99")
	for _, x := range []struct {
		name string
		r    result
	}{{"reverse_proxy", p}, {"gateway", g}} {
		fmt.Printf("%-14s %10.0f %10v %10v %10v\n", x.name, x.r.rps, x.r.pct(50), x.r.pct(90), x.r.pct(99))
	}
	fmt.Printf("ratio gateway/reverse_proxy: throughput %.3f, p50 %.3f, p99 %.3f\n",
		g.rps/p.rps, float64(g.pct(50))/float64(p.pct(50)), float64(g.pct(99))/float64(p.pct(99)))
	return nil
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
	var next atomic.Int64
	var failed atomic.Int64
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
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[i] = time.Since(t0)
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
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
		return result{}, fmt.Errorf("%s: %d of %d requests failed", url, f, n)
	}
	slices.Sort(lat)
	return result{lat: lat, rps: float64(n) / elapsed.Seconds()}, nil
}
