package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// badStores are key stores that must each be a config error naming the
// file and the entry (when one is at fault), never a digest.
func badStores() []struct{ name, body, want string } {
	d, o := sha256Hex(ciKey), sha256Hex(partnerKey)
	good := `{"id":"ci-1","sha256":"` + d + `","identity":"ci-bot"}`
	return []struct{ name, body, want string }{
		{"malformed", `{"keys": [` + good + `,`, "not JSON: syntax error at line 1"},
		{"not JSON", "id,sha256\nci-1," + d + "\n", "not JSON"},
		{"duplicate id", `{"keys": [` + good + `, {"id":"ci-1","sha256":"` + o + `","identity":"x"}]}`, `entry 2 (id "ci-1"): duplicate id`},
		{"duplicate digest", `{"keys": [` + good + `, {"id":"ci-2","sha256":"` + strings.ToUpper(d) + `","identity":"x"}]}`, `entry 2 (id "ci-2"): duplicate sha256`},
		{"digest not 64 hex", `{"keys": [{"id":"ci-1","sha256":"` + d[:63] + `z","identity":"x"}]}`, `entry 1 (id "ci-1"): sha256 is not 64 hex digits`},
		{"unknown member", `{"keys": [{"id":"ci-1","sha256":"` + d + `","identity":"x","expiry":"2030-01-01T00:00:00Z"}]}`, `entry 1 (id "ci-1"): unknown member "expiry"`},
		{"empty identity", `{"keys": [{"id":"ci-1","sha256":"` + d + `","identity":""}]}`, `entry 1 (id "ci-1"): empty identity`},
		{"control identity", `{"keys": [{"id":"ci-1","sha256":"` + d + `","identity":"ci\nbot"}]}`, `entry 1 (id "ci-1"): identity holds a control character`},
		{"reserved claim", `{"keys": [{"id":"ci-1","sha256":"` + d + `","identity":"x","claims":{"key_id":"k"}}]}`, `entry 1 (id "ci-1"): claims: "key_id" is reserved`},
	}
}

func apiKeySite(port int, store string) string {
	return fmt.Sprintf(`{
	admin localhost:%d
	persist_config off
}
http://localhost:%d {
	api_key {
		keys_file %s
	}
	respond "ok {http.auth.user.id}"
}
`, freePort(), port, store)
}

// caddy validate and caddy run refuse each bad store with an error naming
// the file and the entry; caddy adapt reads no key file at all.
func TestAPIKeyBadStoresValidateRunAdapt(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "absent.json")
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(apiKeySite(freePort(), missing)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCaddy(t, "adapt", "--config", cfg, "--adapter", "caddyfile"); err != nil || !strings.Contains(out, `"keys_file": "`+missing+`"`) && !strings.Contains(out, `"keys_file":"`+missing+`"`) {
		t.Fatalf("adapt with the key store absent: %v\n%s", err, out)
	}
	out, err := runCaddy(t, "validate", "--config", cfg, "--adapter", "caddyfile")
	if err == nil || !strings.Contains(out, "keys_file "+missing+": no such file or directory") {
		t.Fatalf("validate with a missing store: %v\n%s", err, out)
	}
	digest := regexp.MustCompile(`(?i)[0-9a-f]{16}`)
	for _, c := range badStores() {
		store := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".json")
		if err := os.WriteFile(store, []byte(c.body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg, []byte(apiKeySite(freePort(), store)), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"validate", "run"} {
			out, err := runCaddy(t, cmd, "--config", cfg, "--adapter", "caddyfile")
			out = strings.ReplaceAll(out, `\"`, `"`) // the error line is JSON
			if err == nil {
				t.Errorf("%s: caddy %s accepted the store", c.name, cmd)
				continue
			}
			if !strings.Contains(out, "keys_file "+store+": "+c.want) && !strings.Contains(out, "keys_file "+store+": entry") {
				t.Errorf("%s: caddy %s error does not name the file and entry (%q):\n%s", c.name, cmd, c.want, tail(out, 2000))
			} else if !strings.Contains(out, c.want) {
				t.Errorf("%s: caddy %s error lacks %q:\n%s", c.name, cmd, c.want, tail(out, 2000))
			}
			if m := digest.FindString(out); m != "" && strings.Contains(strings.ToLower(c.body), strings.ToLower(m)) {
				t.Errorf("%s: caddy %s output holds digest text %q", c.name, cmd, m)
			}
		}
	}
}

// A reload with a bad store is refused, naming the file and the entry, and
// the running config keeps serving; a good reload (rotation) takes effect.
func TestAPIKeyReloadBadStoreKeepsServing(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "keys.json")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(store, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"keys": [` + keyEntry("ci-1", ciKey, "ci-bot", "") + `]}`)
	adminPort, port := freePort(), freePort()
	config := fmt.Sprintf(`{
	admin localhost:%d
	persist_config off
}
http://localhost:%d {
	api_key {
		keys_file %s
	}
	respond "ok {http.auth.user.id} {http.auth.user.key_id}"
}
`, adminPort, port, store)
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	run := startBinary(t, "", nil, "run", "--config", cfg, "--adapter", "caddyfile")
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	send := func(key string) (int, string) {
		t.Helper()
		var last error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, fmt.Sprintf("http://localhost:%d/", port), nil)
			req.Header.Set("X-API-Key", key)
			resp, err := client.Do(req)
			if err != nil {
				last = err
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(body)
		}
		t.Fatalf("gateway never answered: %v", last)
		return 0, ""
	}
	if status, body := send(ciKey); status != 200 || body != "ok ci-bot ci-1" {
		t.Fatalf("before reload: %d %q", status, body)
	}
	reload := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return runCaddyCtx(ctx, t, "reload", "--force", "--config", cfg, "--adapter", "caddyfile", "--address", fmt.Sprintf("localhost:%d", adminPort))
	}
	for _, c := range badStores() {
		write(c.body)
		out, err := reload()
		out = strings.NewReplacer(`\\\"`, `"`, `\"`, `"`).Replace(out) // JSON in JSON
		if err == nil || !strings.Contains(out, "keys_file "+store+": ") || !strings.Contains(out, c.want) {
			t.Errorf("%s: reload: %v\n%s", c.name, err, tail(out, 2000))
		}
		if status, body := send(ciKey); status != 200 || body != "ok ci-bot ci-1" {
			t.Fatalf("%s: the running config stopped serving after a failed reload: %d %q", c.name, status, body)
		}
	}
	// Rotation: the new key beside the old, then the old one removed.
	write(`{"keys": [` + keyEntry("ci-1", ciKey, "ci-bot", "") + "," + keyEntry("ci-2", ciKeyNew, "ci-bot", "") + `]}`)
	if out, err := reload(); err != nil {
		t.Fatalf("good reload: %v\n%s", err, out)
	}
	if status, body := send(ciKeyNew); status != 200 || body != "ok ci-bot ci-2" {
		t.Errorf("new key after reload: %d %q", status, body)
	}
	if status, _ := send(ciKey); status != 200 {
		t.Errorf("old key during rotation: %d", status)
	}
	write(`{"keys": [` + keyEntry("ci-2", ciKeyNew, "ci-bot", "") + `]}`)
	if out, err := reload(); err != nil {
		t.Fatalf("good reload: %v\n%s", err, out)
	}
	if status, _ := send(ciKey); status != 401 {
		t.Errorf("old key after its removal: %d", status)
	}
	for _, secret := range []string{ciKey, ciKeyNew, sha256Hex(ciKey), sha256Hex(ciKeyNew)} {
		if strings.Contains(strings.ToLower(run.logs.String()), strings.ToLower(secret)) {
			t.Errorf("caddy's output holds a key or digest")
		}
	}
}

func runCaddyCtx(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, caddyBinary(t), args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
