package integration

import (
	"encoding/json"
	"strings"
	"testing"
)

// `caddy apikey new` prints a key and its store entry; the entry in a store
// makes the key work through api_key, and `caddy apikey hash` gives the same
// digest. hash refuses short keys.
func TestAPIKeyCommandNewAndHash(t *testing.T) {
	out, errOut, code := caddyCmd(t, "", "apikey", "new", "--id", "cmd-1", "--identity", "cmd-bot", "--claim", "plan=gold", "--claim", "quota=9007199254740993", "--expires", "1h")
	if code != 0 {
		t.Fatalf("apikey new: exit %d\n%s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "cgw_") || len(lines[0]) != 4+43 {
		t.Fatalf("apikey new printed %q", out)
	}
	key, entry := lines[0], lines[1]
	var e map[string]any
	if err := json.Unmarshal([]byte(entry), &e); err != nil || e["sha256"] != sha256Hex(key) || e["identity"] != "cmd-bot" || strings.Contains(entry, key[4:]) {
		t.Fatalf("entry %s (%v)", entry, err)
	}
	hashed, errOut, code := caddyCmd(t, key+"\n", "apikey", "hash")
	if code != 0 || strings.TrimSpace(hashed) != sha256Hex(key) {
		t.Fatalf("apikey hash: %d %q %s", code, hashed, errOut)
	}
	if _, errOut, code := caddyCmd(t, "short-key", "apikey", "hash"); code == 0 || !strings.Contains(errOut, "too short") {
		t.Fatalf("apikey hash of a short key: %d %s", code, errOut)
	}

	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	api_key {
		keys_file `+keyStore(t, entry)+`
		header X-Consumer-Id id
	}
	reverse_proxy `+up.addr()+` {
		header_up X-Quota {http.auth.user.quota}
	}`)
	resp, _ := do(t, tc, get(t, "/", "X-API-Key", key))
	if r := up.last(t); resp.StatusCode != 200 || r.Header.Get("X-Consumer-Id") != "cmd-bot" || r.Header.Get("X-Quota") != "9007199254740993" {
		t.Fatalf("key from apikey new: %d %v", resp.StatusCode, r.Header)
	}
}
