package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"
)

// chromiumPath finds the Chromium that scripts/deps.sh installs.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if testing.Short() {
		t.Skip("chromium not installed (-short)")
	}
	t.Fatal("chromium not found: install it (scripts/deps.sh) to run the browser tests")
	return ""
}

// otherSecret signs tokens the gateway refuses (it verifies with jwtSecret).
const otherSecret = "another-secret-of-at-least-32-bytes!"

// aliceToken is an HS256 token for sub alice, valid for an hour, signed with
// secret.
func aliceToken(t *testing.T, secret string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "alice",
		"exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fetchResult is what the page's script reports about one fetch.
type fetchResult struct {
	OK       bool            `json:"ok"`    // the fetch resolved (any status)
	Error    string          `json:"error"` // else, the rejection: "TypeError: Failed to fetch"
	Status   int             `json:"status"`
	Body     json.RawMessage `json:"body"`
	ServedBy string          `json:"servedBy"` // an exposed response header
}

// browserFetch makes the page at pageURL, in the browser, fetch url with
// credentials and a bearer token, and reports what the script saw.
func browserFetch(t *testing.T, ctx context.Context, pageURL, url, bearer string) fetchResult {
	t.Helper()
	script := fmt.Sprintf(`(async () => {
	try {
		const r = await fetch(%q, {credentials: 'include', headers: {Authorization: 'Bearer ' + %q}});
		let body = null;
		try { body = await r.json(); } catch (e) {}
		return {ok: true, status: r.status, body: body, servedBy: r.headers.get('X-Served-By') || ''};
	} catch (e) {
		return {ok: false, error: e.name + ': ' + e.message};
	}
})()`, url, bearer)
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("browser: navigate to %s: %v", pageURL, err)
	}
	res, err := chromedp.Run(ctx, chromedp.Evaluate[fetchResult](script, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return res
}

// TestBrowserCORS runs headless Chromium: a page served from one loopback
// origin (http://127.0.0.1:<port>) calls the gateway on another
// (http://localhost:<port>) with fetch(..., {credentials: 'include'}) and an
// Authorization header, so every call is preflighted. The browser, not this
// test, decides whether the script may read the response.
func TestBrowserCORS(t *testing.T) {
	chromium := chromiumPath(t)

	var upstreamHits atomic.Int32
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Served-By", "users")
		// an upstream answering CORS on its own: the gateway's answer wins
		w.Header().Set("Access-Control-Allow-Origin", "*")
		_ = json.NewEncoder(w).Encode(map[string]string{"user": r.Header.Get("X-User-Id"), "method": r.Method})
	}))
	t.Cleanup(upstream.Close)

	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<!doctype html><title>spa</title><p>app</p>"))
	})
	app := httptest.NewServer(page) // the allowed origin
	t.Cleanup(app.Close)
	other := httptest.NewServer(page) // same host, another port: another origin
	t.Cleanup(other.Close)

	gateway(t, "", `
	cors /api/* {
		origins `+app.URL+`
		expose X-Served-By
		credentials
	}
	jwt_auth /api/* {
		secret `+jwtSecret+`
		header X-User-Id sub
	}
	reverse_proxy /api/* `+strings.TrimPrefix(upstream.URL, "http://"))

	good := aliceToken(t, jwtSecret)
	bad := aliceToken(t, otherSecret)

	ctx, stop := startBrowser(t, chromium)

	api := siteURL("/api/users/me")

	t.Run("allowed origin reads the JSON", func(t *testing.T) {
		res := browserFetch(t, ctx, app.URL+"/", api, good)
		if !res.OK || res.Status != http.StatusOK {
			t.Fatalf("fetch: %+v", res)
		}
		var body map[string]string
		if err := json.Unmarshal(res.Body, &body); err != nil || body["user"] != "alice" || body["method"] != "GET" {
			t.Fatalf("body %s (%v)", res.Body, err)
		}
		if res.ServedBy != "users" {
			t.Fatalf("exposed header X-Served-By read as %q", res.ServedBy)
		}
	})

	t.Run("bad token: the script reads 401", func(t *testing.T) {
		res := browserFetch(t, ctx, app.URL+"/", api, bad)
		if !res.OK || res.Status != http.StatusUnauthorized {
			t.Fatalf("fetch: %+v, want a readable 401", res)
		}
	})

	t.Run("disallowed origin: the fetch fails", func(t *testing.T) {
		before := upstreamHits.Load()
		res := browserFetch(t, ctx, other.URL+"/", api, good)
		if res.OK || !strings.HasPrefix(res.Error, "TypeError") {
			t.Fatalf("fetch: %+v, want a TypeError", res)
		}
		// the preflight was refused at the gateway: nothing reached the upstream
		if n := upstreamHits.Load() - before; n != 0 {
			t.Fatalf("upstream reached %d times", n)
		}
	})

	if n := upstreamHits.Load(); n != 1 {
		t.Errorf("upstream saw %d requests, want 1 (preflights and the 401 never reach it)", n)
	}
	stop()
}

// startBrowser starts headless Chromium with a fresh profile; stop kills it
// and fails the test if any of its processes outlives it (stop also runs at
// cleanup).
func startBrowser(t *testing.T, chromium string) (ctx context.Context, stop func()) {
	t.Helper()
	profile := t.TempDir()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(t.Context(),
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(profile),
	)
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancelAlloc() // kills the browser and waits for it
		waitNoChromium(t, profile)
	}
	t.Cleanup(stop)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(cancelTimeout)
	return ctx, stop
}

// waitNoChromium fails the test if a process started with the test's
// profile directory is still alive shortly after the browser was stopped.
func waitNoChromium(t *testing.T, profile string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := processesWith(profile)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("chromium processes still running after the test: %v", left)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// processesWith lists the PIDs whose command line mentions s (Linux /proc).
func processesWith(s string) []string {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []string
	for _, d := range dirs {
		cmd, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmd), s) {
			// a zombie has exited; it only waits to be reaped
			if stat, err := os.ReadFile(filepath.Join(d, "stat")); err == nil && strings.Contains(string(stat), ") Z ") {
				continue
			}
			pids = append(pids, filepath.Base(d))
		}
	}
	return pids
}

// TestBrowserCORSErrorPage (issue 18 item 5): the gateway's handle_errors
// proxies to an error-page service that sets its own CORS headers
// (Access-Control-Allow-Origin of its own, credentials, Vary: Origin). The
// page on the allowed origin still reads the 401 and its body: the response
// carries one Access-Control-Allow-Origin, the gateway's (a browser refuses
// a response with two, or with * on a credentialed fetch).
func TestBrowserCORSErrorPage(t *testing.T) {
	chromium := chromiumPath(t)

	page := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<!doctype html><title>spa</title><p>app</p>"))
	})
	app := httptest.NewServer(page)
	t.Cleanup(app.Close)

	var acao atomic.Value // what the error service answers as its own ACAO
	acao.Store("*")
	errorPages := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", acao.Load().(string))
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Add("Vary", "Origin")
		h.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "unauthorized", "page": "error-service", "path": r.URL.Path})
	}))
	t.Cleanup(errorPages.Close)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"user":"alice"}`))
	}))
	t.Cleanup(upstream.Close)

	gateway(t, "", `
	cors /api/* {
		origins `+app.URL+`
		credentials
	}
	jwt_auth /api/* {
		secret `+jwtSecret+`
	}
	reverse_proxy /api/* `+strings.TrimPrefix(upstream.URL, "http://")+`
	handle_errors {
		reverse_proxy `+strings.TrimPrefix(errorPages.URL, "http://")+`
	}`)

	bad := aliceToken(t, otherSecret)
	ctx, stop := startBrowser(t, chromium)
	api := siteURL("/api/users/me")
	// the service's own answer: *, which a credentialed fetch refuses, then
	// the page's own origin, which would be a second (duplicate) value
	for _, own := range []string{"*", app.URL, "https://other.example"} {
		acao.Store(own)
		res := browserFetch(t, ctx, app.URL+"/", api, bad)
		if !res.OK || res.Status != http.StatusUnauthorized {
			t.Fatalf("error service answering ACAO %q: fetch %+v, want a readable 401", own, res)
		}
		var body map[string]string
		if err := json.Unmarshal(res.Body, &body); err != nil || body["page"] != "error-service" || body["path"] != "/api/users/me" {
			t.Fatalf("error service answering ACAO %q: body %s (%v)", own, res.Body, err)
		}
	}
	stop()
}
