package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// logFilter is the log filter docs/operations.md and README.md document:
// it removes the key's header and query parameter from Caddy's request
// dumps.
const logFilter = `format filter {
			wrap json
			fields {
				request>uri query {
					delete api_key
				}
				request>headers>X-Api-Key delete
			}
		}`

// The access log, written through the documented filter, records the
// identity as user_id and never the key; the debug-level log (where the
// gateway's own lines and Caddy's request dumps go) holds neither key nor
// digest.
func TestAPIKeyAccessLogHasUserIDNeverTheKey(t *testing.T) {
	dir := t.TempDir()
	access, debug := filepath.Join(dir, "access.log"), filepath.Join(dir, "debug.log")
	tc := gateway(t, "log {\n\t\tlevel DEBUG\n\t\toutput file "+debug+"\n\t\t"+logFilter+"\n\t}", `
	log {
		output file `+access+`
		`+logFilter+`
	}
	api_key {
		keys_file `+standardStore(t)+`
		from_header X-API-Key
		from_query api_key
	}
	respond "ok"`)
	for _, req := range [][]string{{"/a", ciKey}, {"/b?x=1&api_key=" + partnerKey, ""}, {"/c", expiredKey}, {"/d", ciKey + "-wrong"}} {
		r := get(t, req[0])
		if req[1] != "" {
			r.Header.Set("X-API-Key", req[1])
		}
		do(t, tc, r)
	}
	var logText string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		data, _ := os.ReadFile(access)
		logText = string(data)
		if strings.Count(logText, "\n") >= 4 {
			break
		}
	}
	if !strings.Contains(logText, `"user_id":"ci-bot"`) || !strings.Contains(logText, `"user_id":"partner-acme"`) {
		t.Fatalf("access log has no user_id:\n%s", logText)
	}
	debugText, _ := os.ReadFile(debug)
	if !strings.Contains(string(debugText), "key accepted") || !strings.Contains(string(debugText), "key refused") {
		t.Fatalf("debug log lacks the gateway's lines:\n%s", debugText)
	}
	for name, text := range map[string]string{"access log": logText, "debug log": string(debugText)} {
		for _, secret := range []string{ciKey, partnerKey, expiredKey, sha256Hex(ciKey), sha256Hex(partnerKey), sha256Hex(expiredKey), sha256Hex(ciKey)[:16]} {
			if strings.Contains(strings.ToLower(text), strings.ToLower(secret)) {
				t.Errorf("%s holds a key or digest (%.12s...)", name, secret)
			}
		}
		if strings.Contains(text, "cgw_") {
			t.Errorf("%s holds key text", name)
		}
	}
}
