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
	binaryErr  error
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
			binaryPath, binaryErr = filepath.Abs(p)
			return
		}
		dir, err := os.MkdirTemp("", "caddy-gateway-bin-")
		if err != nil {
			binaryErr = err
			return
		}
		binaryPath = filepath.Join(dir, "caddy")
		root, _ := filepath.Abs("..")
		cmd := exec.Command("go", "tool", "xcaddy", "build", "v2.11.9",
			"--output", binaryPath,
			"--with", "github.com/caddygateway/caddy-gateway@v0.0.0-00010101000000-000000000000="+root)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			binaryErr = fmt.Errorf("xcaddy build: %v\n%s", err, out)
		}
	})
	if binaryErr != nil {
		t.Fatal(binaryErr)
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
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "- ") || strings.HasPrefix(l, "+ ") {
			t.Fatalf("Caddyfile.example is not formatted as caddy fmt wants:\n%s", out)
		}
	}
}

// TestE2EExampleRun runs Caddyfile.example with the real binary and sends
// real requests through the gateway on localhost:8080.
func TestE2EExampleRun(t *testing.T) {
	bin := caddyBinary(t)
	home := t.TempDir()
	cmd := exec.Command(bin, "run", "--config", "Caddyfile.example", "--adapter", "caddyfile")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "XDG_DATA_HOME="+home)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("caddy output:\n%s", logs.String())
		}
	})

	client := &http.Client{Timeout: 5 * time.Second}
	var resp *http.Response
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err = client.Get("http://localhost:8080/api/users/me")
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
	req, _ := http.NewRequest(http.MethodGet, "http://localhost:8080/api/users/me", nil)
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
}

// demoToken mints a token for the example with the repo's own demo-token
// command, as the README tells a newcomer to.
func demoToken(t *testing.T) string {
	t.Helper()
	cmd := exec.Command("go", "run", "./cmd/demo-token", "-sub", "alice", "-role", "admin")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("demo-token: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}
