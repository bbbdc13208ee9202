package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	binaryOnce sync.Once
	binaryPath string
	errBinary  error
)

// caddyBinary returns a caddy binary holding our modules: $CADDY_BIN when the
// test script built one (with xcaddy, as users do), else one built here with
// xcaddy the same way.
func caddyBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end binary tests skipped in -short mode")
	}
	binaryOnce.Do(func() {
		if p := os.Getenv("CADDY_BIN"); p != "" {
			binaryPath, errBinary = filepath.Abs(p)
			return
		}
		dir, err := os.MkdirTemp("", "caddy-gateway-bin-")
		if err != nil {
			errBinary = err
			return
		}
		binaryPath = filepath.Join(dir, "caddy")
		root, _ := filepath.Abs("..")
		cmd := exec.CommandContext(context.Background(), "go", "tool", "xcaddy", "build", "v2.11.9",
			"--output", binaryPath,
			"--with", "github.com/caddygateway/caddy-gateway@v0.0.0-00010101000000-000000000000="+root)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			errBinary = fmt.Errorf("xcaddy build: %w\n%s", err, out)
		}
	})
	if errBinary != nil {
		t.Fatal(errBinary)
	}
	return binaryPath
}

func runCaddy(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBinary(t), args...)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestE2EListModules(t *testing.T) {
	out, err := runCaddy(t, "list-modules")
	if err != nil {
		t.Fatalf("list-modules: %v\n%s", err, out)
	}
	for _, id := range []string{"http.handlers.jwt_auth", "http.handlers.aggregate", "http.handlers.throttle"} {
		if !strings.Contains(out, id+"\n") {
			t.Errorf("list-modules lacks %s", id)
		}
	}
}

func TestE2EExampleAdaptValidateFmt(t *testing.T) {
	out, err := runCaddy(t, "adapt", "--config", "Caddyfile.example", "--adapter", "caddyfile")
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, out)
	}
	if !json.Valid([]byte(out[strings.Index(out, "{"):])) {
		t.Fatalf("adapt did not print JSON:\n%s", out)
	}
	if !strings.Contains(out, `"handler":"jwt_auth"`) {
		t.Errorf("adapted example has no jwt_auth handler")
	}
	out, err = runCaddy(t, "validate", "--config", "Caddyfile.example", "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("validate: %v\n%s", err, out)
	}
	out, err = runCaddy(t, "fmt", "--diff", "Caddyfile.example")
	if err != nil {
		t.Fatalf("fmt --diff: %v\n%s", err, out)
	}
	for l := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(l, "- ") || strings.HasPrefix(l, "+ ") {
			t.Fatalf("Caddyfile.example is not formatted as caddy fmt wants:\n%s", out)
		}
	}
}

// TestE2EExampleRun runs Caddyfile.example with the real binary and sends
// real requests through the gateway on localhost:8080.
func TestE2EExampleRun(t *testing.T) {
	logs := startBinary(t, "..", nil, "run", "--config", "Caddyfile.example", "--adapter", "caddyfile").logs

	client := &http.Client{Timeout: 5 * time.Second}
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://localhost:8080/api/users/me", nil)
		resp, err = client.Do(req)
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("gateway never answered: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: status %d, want 401; body %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer realm=") {
		t.Errorf("WWW-Authenticate = %q", got)
	}

	token := demoToken(t)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://localhost:8080/api/users/me", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-User-Id", "spoofed")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with token: status %d, want 200; body %s", resp.StatusCode, body)
	}
	var echoed map[string]any
	if err := json.Unmarshal(body, &echoed); err != nil {
		t.Fatalf("demo service answer is not JSON: %v\n%s", err, body)
	}
	if echoed["user_id"] != "alice" || echoed["role"] != "admin" {
		t.Fatalf("identity not echoed: %s", body)
	}

	// The access log: a line per request, user_id from the verified token,
	// the Authorization header redacted, the token nowhere.
	var withToken, anonymous map[string]any
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		withToken, anonymous = nil, nil
		for _, entry := range accessLog(logs.String()) {
			req, _ := entry["request"].(map[string]any)
			if req["uri"] != "/api/users/me" {
				continue
			}
			hdrs, _ := req["headers"].(map[string]any)
			if hdrs["Authorization"] != nil {
				withToken = entry
			} else {
				anonymous = entry
			}
		}
		if withToken != nil && anonymous != nil {
			break
		}
	}
	if withToken == nil || anonymous == nil {
		t.Fatalf("no access log lines for the two requests (with token: %v, without: %v)", withToken != nil, anonymous != nil)
	}
	if withToken["user_id"] != "alice" || withToken["status"] != float64(200) {
		t.Errorf("access log line of the request with a token: user_id %v, status %v", withToken["user_id"], withToken["status"])
	}
	if got := withToken["request"].(map[string]any)["headers"].(map[string]any)["Authorization"]; fmt.Sprint(got) != "[REDACTED]" {
		t.Errorf("Authorization in the access log = %v, want [REDACTED]", got)
	}
	if anonymous["user_id"] != "" || anonymous["status"] != float64(401) {
		t.Errorf("access log line of the request without a token: user_id %v, status %v", anonymous["user_id"], anonymous["status"])
	}
	// Not the token, nor its signature or payload segment alone.
	parts := strings.Split(token, ".")
	for _, secret := range []string{token, parts[1], parts[2], exampleSecret()} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds %.12s...", secret)
		}
	}
}

// accessLog returns the access log entries (JSON lines) found in out.
func accessLog(out string) []map[string]any {
	var entries []map[string]any
	for line := range strings.SplitSeq(out, "\n") {
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && strings.HasPrefix(fmt.Sprint(m["logger"]), "http.log.access") {
			entries = append(entries, m)
		}
	}
	return entries
}

// caddyRun is a caddy binary process started by startBinary.
type caddyRun struct {
	cmd  *exec.Cmd
	logs *lockedBuffer // its stdout and stderr
	done chan struct{} // closed when it has exited; err is then set
	err  error
}

// startBinary runs the caddy binary under test with args (in dir, unless
// empty), its HOME and XDG_* directories in a temp dir and env added, until
// the test ends: then it is interrupted (killed after 10s), and its output
// is logged if the test failed.
func startBinary(t *testing.T, dir string, env []string, args ...string) *caddyRun {
	t.Helper()
	bin := caddyBinary(t)
	home := t.TempDir()
	cmd := exec.CommandContext(context.Background(), bin, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "XDG_DATA_HOME="+home), env...)
	p := &caddyRun{cmd: cmd, logs: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("caddy output (last 8 KiB):\n%s", tail(p.logs.String(), 8<<10))
		}
	})
	return p
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// lockedBuffer is a bytes.Buffer that a running process writes while the
// test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// exampleSecret is the HMAC secret Caddyfile.example runs with.
func exampleSecret() string {
	if s := os.Getenv("GATEWAY_JWT_SECRET"); s != "" {
		return s
	}
	return "demo-secret-change-me-0123456789abcdef"
}

// demoToken mints a token for the example with the binary's own
// `caddy jwt sign`, as the README tells a newcomer to.
func demoToken(t *testing.T) string {
	t.Helper()
	return signWithBinary(t, "--secret", exampleSecret(), "--iss", "caddy-gateway-demo", "--aud", "demo-api",
		"--sub", "alice", "--claim", "role=admin")
}
