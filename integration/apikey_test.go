package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// API keys used by the api_key tests; the stores hold only their digests.
// Test keys, not credentials of anything.
//
//nolint:gosec // G101: test keys
const (
	ciKey      = "cgw_ci-key-0123456789abcdef0123456789abcdef"
	ciKeyNew   = "cgw_ci-key-rotated-0123456789abcdef012345"
	partnerKey = "cgw_partner-key-0123456789abcdef0123456789"
	expiredKey = "cgw_expired-key-0123456789abcdef012345678"
	futureKey  = "cgw_future-key-0123456789abcdef0123456789a"
	offKey     = "cgw_disabled-key-0123456789abcdef01234567"
)

func sha256Hex(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// keyStore writes a key store file with the given entries (raw JSON
// objects) and returns its path.
func keyStore(t *testing.T, entries ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(p, []byte(`{"keys": [`+strings.Join(entries, ",\n")+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func keyEntry(id, key, identity, extra string) string {
	e := `{"id":"` + id + `","sha256":"` + sha256Hex(key) + `","identity":"` + identity + `"`
	if extra != "" {
		e += "," + extra
	}
	return e + "}"
}

// standardStore is the store most api_key tests use: two keys of one
// identity (rotation), a partner with claims, and keys expired, not yet
// valid and disabled.
func standardStore(t *testing.T) string {
	t.Helper()
	return keyStore(t,
		keyEntry("ci-2026-11", ciKey, "ci-bot", `"claims":{"plan":"gold","quota":9007199254740993,"roles":["read","write"],"org":{"name":"acme","tier":2}}`),
		keyEntry("ci-2027-02", ciKeyNew, "ci-bot", `"claims":{"plan":"gold"}`),
		keyEntry("partner-1", partnerKey, "partner-acme", `"claims":{"plan":"silver"}`),
		keyEntry("old", expiredKey, "ci-bot", `"expires":"`+time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)+`"`),
		keyEntry("early", futureKey, "ci-bot", `"not_before":"`+time.Now().Add(time.Hour).UTC().Format(time.RFC3339)+`"`),
		// A digest in upper case works as well.
		`{"id":"off","sha256":"`+strings.ToUpper(sha256Hex(offKey))+`","identity":"ci-bot","disabled":true}`,
	)
}

func TestAPIKeyValidKeyInjectsIdentity(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	api_key {
		keys_file `+standardStore(t)+`
		header X-Consumer-Id id
		header x-key-id key_id
		header X-Plan plan
	}
	reverse_proxy `+up.addr()+` {
		header_up X-Quota {http.auth.user.quota}
		header_up X-Roles {http.auth.user.roles}
		header_up X-Org {http.auth.user.org}
		header_up X-Org-Tier {http.auth.user.org.tier}
	}`)
	for _, key := range []string{ciKey, ciKeyNew} {
		resp, _ := do(t, tc, get(t, "/", "X-API-Key", key,
			"X-Consumer-Id", "spoof", "x-consumer-id", "spoof2", "X_Consumer_Id", "spoof3", "X-Plan", "platinum"))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		r := up.last(t)
		want := map[string]string{"X-Consumer-Id": "ci-bot", "X-Plan": "gold"}
		if key == ciKey {
			want["X-Quota"], want["X-Roles"] = "9007199254740993", "read, write"
			want["X-Org"], want["X-Org-Tier"] = `{"name":"acme","tier":2}`, "2"
		}
		for name, want := range want {
			if got := identityHeaders(r, name); len(got) != 1 || got[0] != name+"="+want {
				t.Errorf("%s: upstream got %q, want %q", name, got, want)
			}
		}
		wantID := map[string]string{ciKey: "ci-2026-11", ciKeyNew: "ci-2027-02"}[key]
		if got := r.Header.Get("X-Key-Id"); got != wantID {
			t.Errorf("X-Key-Id %q, want %q", got, wantID)
		}
		if got := identityHeaders(r, "X-Api-Key"); len(got) != 0 {
			t.Errorf("the key reached the upstream: %q", got)
		}
	}
}

func TestAPIKeyRefusalsAndChallenges(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	api_key {
		keys_file `+standardStore(t)+`
		realm machines
	}
	reverse_proxy `+up.addr())
	for _, c := range []struct {
		name      string
		req       *http.Request
		status    int
		challenge string
	}{
		{"no key", get(t, "/"), 401, `ApiKey realm="machines"`},
		{"empty key", get(t, "/", "X-API-Key", ""), 401, `ApiKey realm="machines"`},
		{"unknown", get(t, "/", "X-API-Key", ciKey+"x"), 401, `ApiKey realm="machines", error="invalid_key"`},
		{"truncated", get(t, "/", "X-API-Key", ciKey[:len(ciKey)-1]), 401, `ApiKey realm="machines", error="invalid_key"`},
		{"expired", get(t, "/", "X-API-Key", expiredKey), 401, `ApiKey realm="machines", error="invalid_key"`},
		{"not yet valid", get(t, "/", "X-API-Key", futureKey), 401, `ApiKey realm="machines", error="invalid_key"`},
		{"disabled", get(t, "/", "X-API-Key", offKey), 401, `ApiKey realm="machines", error="invalid_key"`},
		{"two keys", get(t, "/", "X-API-Key", ciKey, "X-API-Key", partnerKey), 400, `ApiKey realm="machines", error="invalid_request"`},
		{"query is not a source by default", get(t, "/?api_key="+ciKey), 401, `ApiKey realm="machines"`},
	} {
		before := up.count.Load()
		resp, body := do(t, tc, c.req)
		if resp.StatusCode != c.status || resp.Header.Get("WWW-Authenticate") != c.challenge {
			t.Errorf("%s: %d %q, want %d %q", c.name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), c.status, c.challenge)
		}
		if up.count.Load() != before {
			t.Errorf("%s: refused request reached the upstream", c.name)
		}
		if strings.Contains(body, "cgw_") {
			t.Errorf("%s: body holds a key: %s", c.name, body)
		}
	}
}

// handle_errors shapes the answer; {http.auth.api_key.error} carries the
// reason and never the key.
func TestAPIKeyHandleErrors(t *testing.T) {
	tc := gateway(t, "", `
	api_key {
		keys_file `+standardStore(t)+`
	}
	respond "ok"
	handle_errors {
		respond `+"`"+`{"status":{err.status_code},"reason":"{http.auth.api_key.error}"}`+"`"+` {err.status_code}
	}`)
	for key, want := range map[string]string{
		"": "no key", ciKey + "x": "unknown key", expiredKey: "key expired", futureKey: "key not yet valid", offKey: "key disabled",
	} {
		req := get(t, "/")
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, body := do(t, tc, req)
		var got struct {
			Status int    `json:"status"`
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil || got.Status != 401 || got.Reason != want || resp.StatusCode != 401 {
			t.Errorf("key %q: %d %s, want 401 %q", key, resp.StatusCode, body, want)
		}
		if resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("key %q: no challenge through handle_errors", key)
		}
	}
}

// from_header with a scheme prefix (any case) and opt-in from_query replace
// the default; the key leaves the request, other query parameters go on
// byte for byte; keep_key passes it on.
func TestAPIKeySourcesAndStripping(t *testing.T) {
	up := newEchoUpstream(t)
	store := standardStore(t)
	tc := gateway(t, "", `
	route /keep/* {
		api_key {
			keys_file `+store+`
			keep_key
		}
		reverse_proxy `+up.addr()+`
	}
	route {
		api_key {
			keys_file `+store+`
			from_header Authorization ApiKey
			from_query api_key
		}
		reverse_proxy `+up.addr()+`
	}`)
	resp, _ := do(t, tc, get(t, "/a?x=%41%2b&api_key="+ciKey+"&y=1+2&z", "Authorization", ""))
	if resp.StatusCode != 200 {
		t.Fatalf("query key: %d", resp.StatusCode)
	}
	if got := up.last(t).RequestURI; got != "/a?x=%41%2b&y=1+2&z" {
		t.Errorf("upstream URI %q", got)
	}
	resp, _ = do(t, tc, get(t, "/b", "Authorization", "aPiKeY "+ciKey))
	if resp.StatusCode != 200 || up.last(t).Header.Get("Authorization") != "" {
		t.Errorf("Authorization ApiKey: %d, upstream Authorization %q", resp.StatusCode, up.last(t).Header.Get("Authorization"))
	}
	for name, req := range map[string]*http.Request{
		"default header replaced": get(t, "/c", "X-API-Key", ciKey),
		"other scheme":            get(t, "/c", "Authorization", "Bearer "+ciKey),
	} {
		if resp, _ := do(t, tc, req); resp.StatusCode != 401 {
			t.Errorf("%s: %d, want 401", name, resp.StatusCode)
		}
	}
	if resp, _ := do(t, tc, get(t, "/d?api_key="+ciKey, "Authorization", "ApiKey "+partnerKey)); resp.StatusCode != 400 {
		t.Errorf("header and query: %d, want 400", resp.StatusCode)
	}
	resp, _ = do(t, tc, get(t, "/keep/x", "X-API-Key", ciKey))
	if resp.StatusCode != 200 || up.last(t).Header.Get("X-Api-Key") != ciKey {
		t.Errorf("keep_key: %d %q", resp.StatusCode, up.last(t).Header.Get("X-Api-Key"))
	}
}

func TestAPIKeyOptional(t *testing.T) {
	up := newEchoUpstream(t)
	tc := gateway(t, "", `
	api_key {
		keys_file `+standardStore(t)+`
		optional
		header X-Consumer-Id id
	}
	reverse_proxy `+up.addr()+` {
		header_up X-Who "[{http.auth.user.id}]"
	}`)
	resp, _ := do(t, tc, get(t, "/", "X-Consumer-Id", "spoof"))
	r := up.last(t)
	if resp.StatusCode != 200 || len(identityHeaders(r, "X-Consumer-Id")) != 0 || r.Header.Get("X-Who") != "[]" {
		t.Fatalf("anonymous: %d %v", resp.StatusCode, r.Header)
	}
	if resp, _ := do(t, tc, get(t, "/", "X-API-Key", expiredKey)); resp.StatusCode != 401 {
		t.Errorf("bad key with optional: %d", resp.StatusCode)
	}
}

// Per-consumer limits: throttle keyed by {http.auth.user.id} after api_key
// in a route. Two keys of one identity share its budget; another identity
// has its own.
func TestAPIKeyThrottlePerIdentity(t *testing.T) {
	tc := gateway(t, "", `
	route {
		api_key {
			keys_file `+standardStore(t)+`
		}
		throttle {
			key {http.auth.user.id}
			rate 2/1h
		}
		respond "ok"
	}`)
	statuses := func(key string, n int) []int {
		out := make([]int, 0, n)
		for range n {
			resp, _ := do(t, tc, get(t, "/", "X-API-Key", key))
			out = append(out, resp.StatusCode)
		}
		return out
	}
	if got := fmt.Sprint(statuses(ciKey, 1), statuses(ciKeyNew, 2)); got != "[200] [200 429]" {
		t.Errorf("ci-bot over two keys: %s", got)
	}
	if got := fmt.Sprint(statuses(partnerKey, 3)); got != "[200 200 429]" {
		t.Errorf("partner: %s", got)
	}
}

// A throttle keyed by {http.auth.*} that runs before the auth directive
// (no route: throttle is ordered first) logs one error naming the fix.
func TestAPIKeyThrottleBeforeAuthLogsOnce(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	tc := gateway(t, "log {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t}", `
	api_key {
		keys_file `+standardStore(t)+`
	}
	throttle {
		key {http.auth.user.id}
		rate 100/1m
	}
	respond "ok"`)
	for range 3 {
		if resp, _ := do(t, tc, get(t, "/", "X-API-Key", ciKey)); resp.StatusCode != 200 {
			t.Fatal(resp.StatusCode)
		}
	}
	var lines []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		data, _ := os.ReadFile(logFile)
		lines = nil
		for l := range strings.SplitSeq(string(data), "\n") {
			if strings.Contains(l, "{http.auth.*} placeholders") {
				lines = append(lines, l)
			}
		}
		if len(lines) > 0 {
			break
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], `"level":"error"`) || !strings.Contains(lines[0], "route") {
		t.Fatalf("want one error line naming the route fix, got %d:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}

// Metrics count requests by result only: no key, digest or id in a label.
func TestAPIKeyMetrics(t *testing.T) {
	tc := gateway(t, "metrics", `
	route /opt/* {
		api_key {
			keys_file `+standardStore(t)+`
			optional
		}
		respond "ok"
	}
	route {
		api_key {
			keys_file `+standardStore(t)+`
		}
		respond "ok"
	}`)
	read := func(result string) float64 {
		for l := range strings.SplitSeq(metricsText(t), "\n") {
			if strings.HasPrefix(l, `caddy_api_key_requests_total{result="`+result+`"}`) {
				var v float64
				fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
				return v
			}
		}
		return 0
	}
	before := map[string]float64{}
	for _, r := range []string{"allowed", "anonymous", "missing", "invalid"} {
		before[r] = read(r)
	}
	do(t, tc, get(t, "/", "X-API-Key", ciKey))
	do(t, tc, get(t, "/opt/x"))
	do(t, tc, get(t, "/"))
	do(t, tc, get(t, "/", "X-API-Key", expiredKey))
	do(t, tc, get(t, "/", "X-API-Key", ciKey, "X-API-Key", ciKeyNew))
	for r, want := range map[string]float64{"allowed": 1, "anonymous": 1, "missing": 1, "invalid": 2} {
		if got := read(r) - before[r]; got != want {
			t.Errorf("%s: +%v, want +%v", r, got, want)
		}
	}
	text := metricsText(t)
	for _, secret := range []string{ciKey, expiredKey, sha256Hex(ciKey)[:16], "ci-2026-11", "ci-bot"} {
		if strings.Contains(text, secret) {
			t.Errorf("metrics hold %q", secret)
		}
	}
}
