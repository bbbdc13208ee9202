package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Zones are process-wide state that outlives a config: every test names its
// own zone.

func TestThrottleConcurrentBurst(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "upstream")
	}))
	defer upstream.Close()
	tc := gateway(t, "", fmt.Sprintf(`
	throttle {
		zone concurrent
		rate 1/1h burst 10
	}
	reverse_proxy %s`, strings.TrimPrefix(upstream.URL, "http://")))

	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			resp, err := sendRetrying(tc.Client, get(t, "/"))
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[200] != 10 || codes[429] != 90 {
		t.Fatalf("statuses %v, want exactly 10 × 200 and 90 × 429", codes)
	}
}

func TestThrottleTwoRatesRefusalConsumesNothing(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone tworates
		rate 100/1h burst 5
		rate 2/1h burst 2
	}
	respond "ok"`)
	for i := range 2 {
		if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i+1, resp.StatusCode)
		}
	}
	for i := range 5 {
		resp, _ := do(t, tc, get(t, "/"))
		if resp.StatusCode != 429 {
			t.Fatalf("refusal %d: status %d", i+1, resp.StatusCode)
		}
		// The first rate still has 3 of 5 left: refusals took nothing.
		if got := resp.Header.Get("RateLimit"); !strings.HasPrefix(got, `"tworates";r=3;`) || !strings.Contains(got, `"tworates-2";r=0;t=1800`) {
			t.Fatalf("refusal %d: RateLimit %q, want first rate r=3 and second r=0;t=1800", i+1, got)
		}
	}
}

func TestThrottleRetryAfter(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone retry
		rate 1/1s burst 1
	}
	respond "ok"`)
	do(t, tc, get(t, "/"))
	resp, _ := do(t, tc, get(t, "/"))
	if resp.StatusCode != 429 {
		t.Fatalf("second request: %d, want 429", resp.StatusCode)
	}
	secs, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || secs != 1 {
		t.Fatalf("Retry-After %q, want 1", resp.Header.Get("Retry-After"))
	}
	time.Sleep(time.Duration(secs) * time.Second)
	if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != 200 {
		t.Fatalf("after waiting Retry-After: %d", resp.StatusCode)
	}
}

func TestThrottleSpoofedForwardedForIgnored(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone spoof
		rate 1/1h burst 1
	}
	respond "ok"`)
	if resp, _ := do(t, tc, get(t, "/", "X-Forwarded-For", "198.51.100.1")); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	for _, xff := range []string{"198.51.100.2", "2001:db8::1", ""} {
		if resp, _ := do(t, tc, get(t, "/", "X-Forwarded-For", xff)); resp.StatusCode != 429 {
			t.Fatalf("X-Forwarded-For %q from an untrusted peer got %d, want 429", xff, resp.StatusCode)
		}
	}
}

func TestThrottleTrustedProxies(t *testing.T) {
	tc := gateway(t, `servers {
		trusted_proxies static 127.0.0.1/8 ::1/128
	}`, `
	throttle {
		zone trusted
		rate 1/1h burst 1
	}
	respond "ok"`)
	for _, step := range []struct {
		xff  string
		want int
	}{
		{"198.51.100.1", 200},
		{"198.51.100.1", 429},
		{"198.51.100.2", 200}, // separate bucket
		{"2001:db8:1:2::1", 200},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", 429}, // same /64
		{"2001:db8:1:3::1", 200},                  // next /64
	} {
		if resp, _ := do(t, tc, get(t, "/", "X-Forwarded-For", step.xff)); resp.StatusCode != step.want {
			t.Fatalf("X-Forwarded-For %s: %d, want %d", step.xff, resp.StatusCode, step.want)
		}
	}
}

func TestThrottleExempt(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone exempt
		rate 1/1h burst 1
		exempt 10.0.0.0/8 127.0.0.0/8 ::1
	}
	respond "ok"`)
	for i := range 5 {
		resp, _ := do(t, tc, get(t, "/"))
		if resp.StatusCode != 200 {
			t.Fatalf("exempt request %d: %d", i+1, resp.StatusCode)
		}
		if resp.Header.Get("RateLimit") != "" {
			t.Fatal("exempt request counted")
		}
	}
}

func TestThrottleDryRun(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone dry
		rate 1/1h burst 1
		dry_run
	}
	respond "ok"`)
	for i := range 3 {
		resp, _ := do(t, tc, get(t, "/"))
		if resp.StatusCode != 200 {
			t.Fatalf("dry run request %d: %d", i+1, resp.StatusCode)
		}
		if got := resp.Header.Get("RateLimit"); got != `"dry";r=0;t=3600` {
			t.Fatalf("dry run request %d: RateLimit %q", i+1, got)
		}
	}
}

func TestThrottleReloadKeepsState(t *testing.T) {
	site := func(version string) string {
		return fmt.Sprintf(`
	header X-Config %s
	route /named {
		throttle {
			zone reload
			rate 1/1h burst 2
		}
	}
	route /unnamed {
		throttle {
			rate 1/1h burst 2
			key reload-unnamed
		}
	}
	respond "ok"`, version)
	}
	tc := gateway(t, "", site("1"))
	for _, p := range []string{"/named", "/unnamed"} {
		for range 2 {
			if resp, _ := do(t, tc, get(t, p)); resp.StatusCode != 200 {
				t.Fatalf("%s: %d", p, resp.StatusCode)
			}
		}
	}
	// A real reload: the config differs, the throttles do not.
	tc.InitServer(caddyfile("", site("2")), "caddyfile")
	for _, p := range []string{"/named", "/unnamed"} {
		resp, _ := do(t, tc, get(t, p))
		if resp.Header.Get("X-Config") != "2" {
			t.Fatal("config not reloaded")
		}
		if resp.StatusCode != 429 {
			t.Errorf("%s after reload: %d, want 429 (state kept)", p, resp.StatusCode)
		}
	}
}

func TestThrottleHeaders(t *testing.T) {
	for _, tt := range []struct {
		mode string
		want map[string]string
	}{
		{"", map[string]string{
			"RateLimit-Policy": `"hdr-ietf";q=3;w=18`,
			"RateLimit":        `"hdr-ietf";r=2;t=6`,
		}},
		{"legacy", map[string]string{
			"X-RateLimit-Limit":     "3",
			"X-RateLimit-Remaining": "2",
			"X-RateLimit-Reset":     "6",
		}},
		{"off", nil},
	} {
		t.Run("mode="+tt.mode, func(t *testing.T) {
			mode := ""
			zone := "hdr-ietf"
			if tt.mode != "" {
				mode = "headers " + tt.mode
				zone = "hdr-" + tt.mode
			}
			tc := gateway(t, "", fmt.Sprintf(`
	throttle {
		zone %s
		rate 10/1m burst 3
		%s
	}
	respond "ok"`, zone, mode))
			resp, _ := do(t, tc, get(t, "/"))
			for _, name := range []string{"RateLimit-Policy", "RateLimit", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} {
				if got, want := resp.Header.Get(name), tt.want[name]; got != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			do(t, tc, get(t, "/"))
			do(t, tc, get(t, "/"))
			resp, _ = do(t, tc, get(t, "/"))
			if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "6" {
				t.Fatalf("4th request: %d, Retry-After %q; want 429, 6", resp.StatusCode, resp.Header.Get("Retry-After"))
			}
			if tt.mode == "" && resp.Header.Get("RateLimit") != `"hdr-ietf";r=0;t=6` {
				t.Errorf("RateLimit on 429 = %q", resp.Header.Get("RateLimit"))
			}
		})
	}
}

// handle_errors shapes the 429; the rate-limit headers stay.
func TestThrottleHandleErrors(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone errors
		rate 1/1h burst 1
	}
	respond "ok"
	handle_errors 429 {
		respond "slow down: {err.status_code}"
	}`)
	do(t, tc, get(t, "/"))
	resp, body := do(t, tc, get(t, "/"))
	if resp.StatusCode != 429 || body != "slow down: 429" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("Retry-After") != "3600" || resp.Header.Get("RateLimit") != `"errors";r=0;t=3600` {
		t.Fatalf("headers lost: %v", resp.Header)
	}
}

// Metrics are labelled by zone only.
func TestThrottleMetrics(t *testing.T) {
	tc := gateway(t, `metrics`, `
	throttle {
		zone metrics
		rate 1/1h burst 1
	}
	respond "ok"`)
	do(t, tc, get(t, "/"))
	do(t, tc, get(t, "/"))
	b := metricsText(t)
	for _, want := range []string{
		`caddy_throttle_allowed_total{zone="metrics"} 1`,
		`caddy_throttle_refused_total{zone="metrics"} 1`,
	} {
		if !strings.Contains(b, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// A flood of new keys through a full zone locks no one out: every new
// client is admitted (the keys closest to idle make room), and a client that
// spent most of its burst keeps its bucket while keys closer to idle exist.
func TestThrottleFloodLocksNoOneOut(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone evict
		key {header.X-Client}
		rate 1/1h burst 5
		max_keys 10
	}
	respond "ok"`)
	for range 5 {
		do(t, tc, get(t, "/", "X-Client", "active"))
	}
	if resp, _ := do(t, tc, get(t, "/", "X-Client", "active")); resp.StatusCode != 429 {
		t.Fatalf("active client not limited: %d", resp.StatusCode)
	}
	for i := range 100 {
		resp, _ := do(t, tc, get(t, "/", "X-Client", fmt.Sprint("flood-", i)))
		if resp.StatusCode != 200 {
			t.Fatalf("new client %d: %d, want 200 (refused for want of room?)", i, resp.StatusCode)
		}
	}
	if resp, _ := do(t, tc, get(t, "/", "X-Client", "active")); resp.StatusCode != 429 {
		t.Fatalf("active client got a fresh bucket after the flood: %d", resp.StatusCode)
	}
}

// A placeholder key: one bucket per API key whatever the client IP; an
// empty key falls back to the client IP.
func TestThrottleKeyPlaceholder(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone bykey
		key {header.X-API-Key}
		rate 1/1h burst 1
	}
	respond "ok"`)
	for _, step := range []struct {
		apiKey string
		want   int
	}{
		{"alpha", 200}, {"alpha", 429}, {"beta", 200}, {"", 200}, {"", 429},
	} {
		var h []string
		if step.apiKey != "" {
			h = []string{"X-API-Key", step.apiKey}
		}
		if resp, _ := do(t, tc, get(t, "/", h...)); resp.StatusCode != step.want {
			t.Fatalf("key %q: %d, want %d", step.apiKey, resp.StatusCode, step.want)
		}
	}
}

// Same zone name, same state (across routes); identical unnamed handlers
// stay private to each other.
func TestThrottleZoneSharing(t *testing.T) {
	tc := gateway(t, "", `
	route /shared-a {
		throttle {
			zone sharing
			rate 1/1h burst 1
		}
	}
	route /shared-b {
		throttle {
			zone sharing
			rate 1/1h burst 1
		}
	}
	route /private-a {
		throttle {
			rate 1/1h burst 1
			key private-sharing-test
		}
	}
	route /private-b {
		throttle {
			rate 1/1h burst 1
			key private-sharing-test
		}
	}
	respond "ok"`)
	for _, step := range []struct {
		path string
		want int
	}{
		{"/shared-a", 200},
		{"/shared-b", 429},
		{"/private-a", 200},
		{"/private-b", 200},
		{"/private-a", 429},
		{"/private-b", 429},
	} {
		resp, _ := do(t, tc, get(t, step.path))
		if resp.StatusCode != step.want {
			t.Fatalf("%s: %d, want %d", step.path, resp.StatusCode, step.want)
		}
		if strings.HasPrefix(step.path, "/private") && !strings.HasPrefix(resp.Header.Get("RateLimit"), `"throttle";`) {
			t.Errorf("unnamed zone named %q in RateLimit", resp.Header.Get("RateLimit"))
		}
	}
}

// loadCaddyfile posts a Caddyfile to the admin endpoint and returns the
// status and body of the answer (the harness's InitServer fails the test
// on a refused config; these tests want the refusal).
func loadCaddyfile(t *testing.T, extraGlobal, siteBody string) (int, string) {
	t.Helper()
	return adminPost(t, "/load", "text/caddyfile", caddyfile(extraGlobal, siteBody))
}

// sweepers counts the goroutines of live in-memory zones (one sweeper
// each); with want >= 0 it waits a little for stopped ones to exit, until
// at most want are left.
func sweepers(t *testing.T, want int) int {
	t.Helper()
	var n int
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		n = strings.Count(string(buf), "ratelimit.(*memStore).run(")
		if want < 0 || n <= want || time.Now().After(deadline) {
			return n
		}
	}
}

// `exempt private_ranges` (Caddy's list holds "::1" without a prefix
// length) loads through the admin API and exempts loopback and private
// clients; public ones are limited.
func TestThrottleExemptPrivateRanges(t *testing.T) {
	tc := gateway(t, `servers {
		trusted_proxies static 127.0.0.1/32
	}`, `
	throttle {
		zone private
		rate 1/1h burst 1
		exempt private_ranges
	}
	respond "ok"`)
	for _, client := range []string{"", "10.1.2.3", "192.168.7.7", "::1", "fd00::1"} {
		for i := range 3 {
			var h []string
			if client != "" {
				h = []string{"X-Forwarded-For", client}
			}
			resp, _ := do(t, tc, get(t, "/", h...))
			if resp.StatusCode != 200 || resp.Header.Get("RateLimit") != "" {
				t.Fatalf("private client %q request %d: %d, RateLimit %q; want exempt", client, i+1, resp.StatusCode, resp.Header.Get("RateLimit"))
			}
		}
	}
	do(t, tc, get(t, "/", "X-Forwarded-For", "192.0.2.1"))
	if resp, _ := do(t, tc, get(t, "/", "X-Forwarded-For", "192.0.2.1")); resp.StatusCode != 429 {
		t.Fatalf("public client: %d, want 429", resp.StatusCode)
	}
}

// The same config through the real binary: `caddy validate` and `caddy run`.
func TestThrottleExemptPrivateRangesBinary(t *testing.T) {
	dir := t.TempDir()
	port := freePort()
	cfg := filepath.Join(dir, "Caddyfile")
	err := os.WriteFile(cfg, fmt.Appendf(nil, `{
	admin off
	persist_config off
}
http://localhost:%d {
	throttle {
		rate 1/1h burst 1
		exempt private_ranges
	}
	respond "ok"
}
`, port), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runCaddy(t, "validate", "--config", cfg, "--adapter", "caddyfile"); err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("caddy validate: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	run := startBinary(t, "", nil, "run", "--config", cfg, "--adapter", "caddyfile")
	client := &http.Client{Timeout: 5 * time.Second}
	url := fmt.Sprintf("http://localhost:%d/", port)
	// get returns the status and RateLimit header of one GET.
	get := func() (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("RateLimit"), nil
	}
	var (
		status    int
		rateLimit string
	)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case <-run.done:
			t.Fatalf("caddy run exited: %v\n%s", run.err, run.logs.String())
		default:
		}
		status, rateLimit, err = get()
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("caddy run never answered: %v", err)
	}
	for i := range 3 {
		if i > 0 {
			if status, rateLimit, err = get(); err != nil {
				t.Fatal(err)
			}
		}
		if status != 200 || rateLimit != "" {
			t.Fatalf("loopback request %d: %d, RateLimit %q; want exempt", i+1, status, rateLimit)
		}
	}
}

// A configured key whose text is the client's address shares nothing with
// the client-IP fallback: one request from anyone sending X-Api-Key:
// 127.0.0.1 does not lock out 127.0.0.1 (nor, with ipv4_prefix 24, its /24).
func TestThrottleKeySpellingAnAddressLocksNoOneOut(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone keyspell
		key {http.request.header.X-Api-Key}
		rate 1/1h burst 1
		ipv4_prefix 24
	}
	respond "ok"`)
	for _, k := range []string{"127.0.0.1", "127.0.0.9", "::ffff:127.0.0.1"} {
		do(t, tc, get(t, "/", "X-Api-Key", k))
	}
	if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != 200 {
		t.Fatalf("client 127.0.0.1 without a key: %d, want 200 (locked out by a key spelling its address)", resp.StatusCode)
	}
	if resp, _ := do(t, tc, get(t, "/", "X-Api-Key", "127.0.0.1")); resp.StatusCode != 429 {
		t.Fatalf("the key itself: %d, want 429", resp.StatusCode)
	}
}

// exempt looks at the client IP only: a key spelling an exempt address is
// limited like any other.
func TestThrottleExemptIgnoresKeyText(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone exemptkey
		key {http.request.header.X-Api-Key}
		rate 1/1h burst 1
		exempt 10.0.0.0/8
	}
	respond "ok"`)
	do(t, tc, get(t, "/", "X-Api-Key", "10.0.0.1"))
	if resp, _ := do(t, tc, get(t, "/", "X-Api-Key", "10.0.0.1")); resp.StatusCode != 429 {
		t.Fatalf("key 10.0.0.1 from a non-exempt client: %d, want 429", resp.StatusCode)
	}
}

// One zone with different rates on two routes is a config error naming
// the zone; the running config stays.
func TestThrottleZoneWithTwoRatesRefused(t *testing.T) {
	tc := gateway(t, "", `
	header X-Config 1
	respond "ok"`)
	code, body := loadCaddyfile(t, "", `
	route /fast {
		throttle {
			zone tworated
			rate 100/1s
		}
	}
	route /slow {
		throttle {
			zone tworated
			rate 1/1h
		}
	}
	respond "ok"`)
	if code == 200 || !strings.Contains(body, `zone \"tworated\"`) || !strings.Contains(body, "different rates") {
		t.Fatalf("load: %d %s; want an error naming the zone", code, body)
	}
	// The same in JSON, where Provision tells.
	code, body = adminPost(t, "/load", "application/json", fmt.Sprintf(`{
	"admin": {"listen": "localhost:%d"},
	"apps": {"http": {"servers": {"srv0": {"listen": [":%d"], "routes": [
		{"match": [{"path": ["/fast"]}], "handle": [{"handler": "throttle", "zone": "tworated-json", "rate": [{"events": 100, "period": "1s"}]}]},
		{"match": [{"path": ["/slow"]}], "handle": [{"handler": "throttle", "zone": "tworated-json", "rate": [{"events": 1, "period": "1h"}]}]}
	]}}}}
}`, adminPort, httpPort))
	if code == 200 || !strings.Contains(body, `zone \"tworated-json\"`) || !strings.Contains(body, "different rates") {
		t.Fatalf("JSON load: %d %s; want an error naming the zone", code, body)
	}
	if resp, _ := do(t, tc, get(t, "/")); resp.Header.Get("X-Config") != "1" {
		t.Fatal("running config replaced")
	}
}

// A reload that changes a zone's rates starts the zone afresh: the new
// rate never reads state the old one wrote.
func TestThrottleReloadWithNewRatesStartsAfresh(t *testing.T) {
	site := func(rate string) string {
		return `
	throttle {
		zone rerated
		rate ` + rate + `
	}
	respond "ok"`
	}
	tc := gateway(t, "", site("1/1h burst 1"))
	do(t, tc, get(t, "/"))
	if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != 429 {
		t.Fatalf("slow rate: %d, want 429", resp.StatusCode)
	}
	tc.InitServer(caddyfile("", site("100/1s")), "caddyfile")
	resp, _ := do(t, tc, get(t, "/"))
	if resp.StatusCode != 200 || resp.Header.Get("RateLimit") != `"rerated";r=99;t=1` {
		t.Fatalf("after the reload: %d, RateLimit %q; want 200 and a fresh bucket", resp.StatusCode, resp.Header.Get("RateLimit"))
	}
}

// A reload that fails at a later handler releases the zones its throttles
// joined: no pool entry nor sweeper outlives the refused config.
func TestThrottleFailedReloadLeaksNoZone(t *testing.T) {
	tc := gateway(t, "", `
	throttle {
		zone failed-reload-kept
		rate 1/1h burst 1
	}
	respond "ok"`)
	do(t, tc, get(t, "/"))
	base := sweepers(t, -1)
	for i := range 5 {
		// A throttle with a new zone, then one that fails its checks.
		cfg := fmt.Sprintf(`{
	"admin": {"listen": "localhost:%d"},
	"apps": {"http": {"servers": {"srv0": {"listen": [":%d"], "routes": [{"handle": [
		{"handler": "throttle", "zone": "failed-reload-%d", "rate": [{"events": 1, "period": "1h"}]},
		{"handler": "throttle", "zone": "failed-reload-bad", "rate": []}
	]}]}}}}
}`, adminPort, httpPort, i)
		code, body := adminPost(t, "/load", "application/json", cfg)
		if code == 200 {
			t.Fatal("a config with a throttle without rates loaded")
		}
		if !strings.Contains(body, "at least one rate") {
			t.Fatalf("load error %q does not say why", body)
		}
	}
	if n := sweepers(t, base); n > base {
		t.Fatalf("%d zone sweepers after 5 failed reloads, %d before: zones leaked", n, base)
	}
	// The running config and its state are untouched.
	if resp, _ := do(t, tc, get(t, "/")); resp.StatusCode != 429 {
		t.Fatalf("running zone: %d, want 429 (state kept)", resp.StatusCode)
	}
}
