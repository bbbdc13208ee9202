package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/caddygateway/caddy-gateway"
	"github.com/caddyserver/certmagic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// Ports of the in-process Caddy, chosen free once per test process so that
// several test processes on one machine never collide (caddytest's defaults
// are fixed ports).
var (
	adminPort int
	httpPort  int
	httpsPort int
)

func TestMain(m *testing.M) {
	// caddytest writes under $HOME/.config/caddy and XDG dirs: keep it in a
	// temporary directory.
	home, err := os.MkdirTemp("", "caddy-gateway-test-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, k := range []string{"HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"} {
		v := home
		if k != "HOME" {
			v = home + "/" + strings.ToLower(strings.TrimPrefix(k, "XDG_"))
		}
		os.Setenv(k, v)
	}
	// Caddy computes its default storage and autosave paths at package
	// init, before this runs: point them at the temp dir too.
	caddy.DefaultStorage = &certmagic.FileStorage{Path: filepath.Join(home, "data")}
	caddy.ConfigAutosavePath = filepath.Join(home, "autosave.json")
	adminPort, httpPort, httpsPort = freePort(), freePort(), freePort()
	code := m.Run()
	os.RemoveAll(home)
	os.Exit(code)
}

func freePort() int {
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// globalOptions is the global options block every in-process config starts
// with.
func globalOptions(extra string) string {
	return fmt.Sprintf(`{
	skip_install_trust
	admin localhost:%d
	http_port %d
	https_port %d
	grace_period 1ns
	persist_config off
	%s
}
`, adminPort, httpPort, httpsPort, extra)
}

// newTester returns a caddytest.Tester bound to this process's admin port.
func newTester(t *testing.T) *caddytest.Tester {
	t.Helper()
	return caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		AdminPort:          adminPort,
		Certificates:       []string{},
		TestRequestTimeout: 10 * time.Second,
		LoadRequestTimeout: 10 * time.Second,
	})
}

// gateway loads a Caddyfile whose only site is http://localhost:<httpPort>
// with the given site body, and returns the tester. extraGlobal goes into the
// global options block.
func gateway(t *testing.T, extraGlobal, siteBody string) *caddytest.Tester {
	t.Helper()
	tc := newTester(t)
	tc.InitServer(caddyfile(extraGlobal, siteBody), "caddyfile")
	// Connections kept alive to the previous config's server are of no use
	// now; drop them so the next request dials the new one.
	if tr, ok := tc.Client.Transport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
	return tc
}

// caddyfile renders a full Caddyfile for the test site.
func caddyfile(extraGlobal, siteBody string) string {
	return globalOptions(extraGlobal) + fmt.Sprintf("http://localhost:%d {\n%s\n}\n", httpPort, siteBody)
}

// siteURL is the URL of path on the test site.
func siteURL(path string) string {
	return fmt.Sprintf("http://localhost:%d%s", httpPort, path)
}

// do sends req through the tester's client and returns status, headers and
// body.
func do(t *testing.T, tc *caddytest.Tester, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := sendRetrying(tc.Client, req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return resp, string(body)
}

// sendRetrying sends req with client. Right after a config load the old
// server, sharing the listener, may accept a connection and reset it while
// it shuts down: the request never reached a handler, so a body-less
// request is sent again (up to three times).
func sendRetrying(client *http.Client, req *http.Request) (*http.Response, error) {
	resp, err := client.Do(req)
	for try := 0; err != nil && req.Body == nil && try < 3 &&
		(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)); try++ {
		time.Sleep(50 * time.Millisecond)
		resp, err = client.Do(req)
	}
	return resp, err
}

// get builds a GET request for path on the test site with the given header
// pairs ("Name", "value", ...).
func get(t *testing.T, path string, headers ...string) *http.Request {
	t.Helper()
	return request(t, http.MethodGet, path, headers...)
}

func request(t *testing.T, method, path string, headers ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, siteURL(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	return req
}

// adminPost posts body to the admin endpoint's path and returns the status
// and response body.
func adminPost(t *testing.T, path, contentType, body string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	status, data, err := adminTry(ctx, http.MethodPost, fmt.Sprintf("localhost:%d", adminPort), path, contentType, body)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	return status, data
}

// adminTry sends method path (with body, of contentType, unless body is
// empty) to the admin endpoint at admin, returning transport errors after
// ten attempts 50 ms apart. It opens a connection per attempt
// (adminClient): Caddy replaces its admin server on every load, failed
// ones included, and closes the connections the old one kept alive, so a
// request sent on one of those meets EOF (a POST is not retried by
// net/http).
func adminTry(ctx context.Context, method, admin, path, contentType, body string) (int, string, error) {
	var err error
	for try := range 10 {
		if try > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		var payload io.Reader = http.NoBody
		if body != "" {
			payload = strings.NewReader(body)
		}
		var req *http.Request
		req, err = http.NewRequestWithContext(ctx, method, "http://"+admin+path, payload)
		if err != nil {
			return 0, "", err
		}
		if body != "" {
			req.Header.Set("Content-Type", contentType)
		}
		var resp *http.Response
		resp, err = adminClient.Do(req)
		if err != nil {
			continue
		}
		data, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr != nil {
			err = rerr
			continue
		}
		return resp.StatusCode, string(data), nil
	}
	return 0, "", err
}

// metricsText returns the in-process Caddy's admin /metrics page.
func metricsText(t *testing.T) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, fmt.Sprintf("http://localhost:%d/metrics", adminPort), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
