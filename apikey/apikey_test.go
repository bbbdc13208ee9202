package apikey

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

const (
	demoKey  = "cgw_demo-key-change-me-0123456789abcdef"
	otherKey = "cgw_other-key-0123456789abcdef0123456789"
)

func hexDigest(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func provisioned(t testing.TB, h *Handler) *Handler {
	t.Helper()
	if err := provision(t, h); err != nil {
		t.Fatal(err)
	}
	return h
}

func provision(t testing.TB, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		return err
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return nil
}

func writeStore(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// serve runs one request through h and reports the status (0: passed on),
// the request the next handler saw and the replacer.
func serve(t testing.TB, h *Handler, r *http.Request) (int, *http.Request, *caddy.Replacer, http.Header) {
	t.Helper()
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	var seen *http.Request
	next := caddyhttp.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error {
		seen = r
		return nil
	})
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, next)
	if err == nil {
		return 0, seen, repl, w.Header()
	}
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		t.Fatalf("error is not a caddyhttp.HandlerError: %v", err)
	}
	return he.StatusCode, seen, repl, w.Header()
}

func request(target string, hdr http.Header) *http.Request {
	r := httptest.NewRequestWithContext(context.Background(), http.MethodGet, target, nil)
	if hdr != nil {
		r.Header = hdr
	}
	return r
}

func TestServeValidKey(t *testing.T) {
	h := provisioned(t, &Handler{
		Keys: []Key{{
			ID: "ci-1", SHA256: strings.ToUpper(hexDigest(demoKey)), Identity: "ci-bot",
			Claims: map[string]jsonRaw{"plan": jsonRaw(`"gold"`), "n": jsonRaw(`9007199254740993`), "roles": jsonRaw(`["a","b"]`), "org": jsonRaw(`{"z":1,"a":"<&>"}`)},
		}},
		Headers: map[string]string{"x-consumer-id": "id", "X-Key-Id": "key_id", "X-Plan": "plan"},
	})
	status, seen, repl, _ := serve(t, h, request("/", http.Header{
		"X-Api-Key": {demoKey}, "X_consumer_ID": {"spoof"}, "X-Plan": {"spoof"},
	}))
	if status != 0 {
		t.Fatalf("status %d", status)
	}
	if _, ok := seen.Header["X-Api-Key"]; ok {
		t.Error("key passed on")
	}
	for name, want := range map[string]string{"X-Consumer-Id": "ci-bot", "X-Key-Id": "ci-1", "X-Plan": "gold"} {
		if got := seen.Header.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if _, ok := seen.Header["X_consumer_ID"]; ok { //nolint:staticcheck // SA1008: the spoofed, non-canonical name is the point
		t.Error("underscore spoof kept")
	}
	for ph, want := range map[string]string{
		"{http.auth.user.id}": "ci-bot", "{http.auth.user.key_id}": "ci-1", "{http.auth.user.plan}": "gold",
		"{http.auth.user.n}": "9007199254740993", "{http.auth.user.roles}": "a, b", "{http.auth.user.org}": `{"a":"<&>","z":1}`,
		"{http.auth.user.org.z}": "1", "{http.auth.user.missing}": "",
	} {
		if got := repl.ReplaceKnown(ph, ""); got != want {
			t.Errorf("%s = %q, want %q", ph, got, want)
		}
	}
}

type jsonRaw = json.RawMessage

func TestServeRefusals(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	h := &Handler{
		Keys: []Key{
			{ID: "ok", SHA256: hexDigest(demoKey), Identity: "a", NotBefore: "2026-11-30T23:59:59Z", Expires: "2026-12-01T00:00:01Z"},
			{ID: "expired", SHA256: hexDigest("expired-key-0123456789"), Identity: "a", Expires: "2026-12-01T00:00:00Z"},
			{ID: "early", SHA256: hexDigest("early-key-0123456789"), Identity: "a", NotBefore: "2026-12-01T00:00:01Z"},
			{ID: "off", SHA256: hexDigest("disabled-key-0123456789"), Identity: "a", Disabled: true},
			{ID: "ctl", SHA256: hexDigest("control-key-0123456789"), Identity: "a", Claims: map[string]jsonRaw{"t": jsonRaw(`"a\r\nX-Evil: 1"`)}},
		},
		Headers: map[string]string{"X-T": "t"},
		now:     func() time.Time { return now },
		Realm:   "machines",
	}
	provisioned(t, h)
	for _, c := range []struct {
		name      string
		target    string
		hdr       http.Header
		status    int
		challenge string
		reason    string
	}{
		{"valid", "/", http.Header{"X-Api-Key": {demoKey}}, 0, "", ""},
		{"none", "/", nil, 401, `ApiKey realm="machines"`, "no key"},
		{"empty", "/", http.Header{"X-Api-Key": {""}}, 401, `ApiKey realm="machines"`, "no key"},
		{"unknown", "/", http.Header{"X-Api-Key": {demoKey + "x"}}, 401, `ApiKey realm="machines", error="invalid_key"`, "unknown key"},
		{"prefix of key", "/", http.Header{"X-Api-Key": {demoKey[:len(demoKey)-1]}}, 401, `ApiKey realm="machines", error="invalid_key"`, "unknown key"},
		{"expired at the instant", "/", http.Header{"X-Api-Key": {"expired-key-0123456789"}}, 401, `ApiKey realm="machines", error="invalid_key"`, "key expired"},
		{"not yet valid", "/", http.Header{"X-Api-Key": {"early-key-0123456789"}}, 401, `ApiKey realm="machines", error="invalid_key"`, "key not yet valid"},
		{"disabled", "/", http.Header{"X-Api-Key": {"disabled-key-0123456789"}}, 401, `ApiKey realm="machines", error="invalid_key"`, "key disabled"},
		{"control character", "/", http.Header{"X-Api-Key": {"control-key-0123456789"}}, 401, `ApiKey realm="machines", error="invalid_key"`, "control character"},
		{"twice", "/", http.Header{"X-Api-Key": {demoKey, demoKey}}, 400, `ApiKey realm="machines", error="invalid_request"`, "more than one place"},
	} {
		status, seen, repl, hdr := serve(t, h, request(c.target, c.hdr))
		if status != c.status {
			t.Errorf("%s: status %d, want %d", c.name, status, c.status)
			continue
		}
		if status == 0 {
			if seen == nil {
				t.Errorf("%s: not passed on", c.name)
			}
			continue
		}
		if got := hdr.Get("Www-Authenticate"); got != c.challenge {
			t.Errorf("%s: challenge %q, want %q", c.name, got, c.challenge)
		}
		if got, _ := repl.GetString("http.auth.api_key.error"); !strings.Contains(got, c.reason) || strings.Contains(got, "key-0123") {
			t.Errorf("%s: reason %q, want %q", c.name, got, c.reason)
		}
	}
}

func TestServeSources(t *testing.T) {
	keys := []Key{{ID: "k", SHA256: hexDigest(demoKey), Identity: "a"}}
	h := provisioned(t, &Handler{Keys: keys, FromHeader: []HeaderSource{{Name: "authorization", Prefix: "ApiKey"}}, FromQuery: []string{"api_key"}})
	for _, c := range []struct {
		name   string
		target string
		hdr    http.Header
		status int
		query  string
	}{
		{"scheme any case", "/?a=1", http.Header{"Authorization": {"aPiKeY " + demoKey}}, 0, "a=1"},
		{"default header replaced", "/", http.Header{"X-Api-Key": {demoKey}}, 401, ""},
		{"other scheme is no key", "/", http.Header{"Authorization": {"Bearer " + demoKey}}, 401, ""},
		{"query, others kept byte for byte", "/?b=%41+x&api_key=" + demoKey + "&c", nil, 0, "b=%41+x&c"},
		{"two sources", "/?api_key=" + demoKey, http.Header{"Authorization": {"ApiKey " + demoKey}}, 400, ""},
		{"empty query is no key", "/?api_key=", http.Header{"Authorization": {"ApiKey " + demoKey}}, 0, "api_key="},
	} {
		status, seen, _, _ := serve(t, h, request(c.target, c.hdr))
		if status != c.status {
			t.Errorf("%s: status %d, want %d", c.name, status, c.status)
			continue
		}
		if status == 0 {
			if _, ok := seen.Header["Authorization"]; ok {
				t.Errorf("%s: key header passed on", c.name)
			}
			if seen.URL.RawQuery != c.query {
				t.Errorf("%s: query %q, want %q", c.name, seen.URL.RawQuery, c.query)
			}
		}
	}
	keep := provisioned(t, &Handler{Keys: keys, KeepKey: true})
	if status, seen, _, _ := serve(t, keep, request("/", http.Header{"X-Api-Key": {demoKey}})); status != 0 || seen.Header.Get("X-Api-Key") != demoKey {
		t.Errorf("keep_key: %d %v", status, seen.Header)
	}
}

func TestServeOptional(t *testing.T) {
	h := provisioned(t, &Handler{Keys: []Key{{ID: "k", SHA256: hexDigest(demoKey), Identity: "a"}}, Optional: true, Headers: map[string]string{"X-Consumer": "id"}})
	status, seen, repl, _ := serve(t, h, request("/", http.Header{"X-Consumer": {"spoof"}}))
	if status != 0 || seen.Header.Get("X-Consumer") != "" {
		t.Fatalf("anonymous: %d %v", status, seen.Header)
	}
	for _, ph := range []string{"http.auth.user.id", "http.auth.user.plan"} {
		if v, ok := repl.Get(ph); !ok || v != "" {
			t.Errorf("anonymous %s = %v, %v", ph, v, ok)
		}
	}
	if status, _, _, _ := serve(t, h, request("/", http.Header{"X-Api-Key": {"bad-key-0123456789"}})); status != 401 {
		t.Errorf("bad key with optional: %d", status)
	}
}

// Nothing the handler logs, at any level, holds a key or a digest.
func TestLogsHoldNoKeyOrDigest(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	h := provisioned(t, &Handler{Keys: []Key{
		{ID: "k", SHA256: hexDigest(demoKey), Identity: "a"},
		{ID: "ctl", SHA256: hexDigest(otherKey), Identity: "b", Claims: map[string]jsonRaw{"t": jsonRaw(`"x\ny"`)}},
	}, Headers: map[string]string{"X-T": "t"}})
	h.logger = zap.New(core)
	for _, k := range []string{demoKey, otherKey, "unknown-key-0123456789", ""} {
		serve(t, h, request("/", http.Header{"X-Api-Key": {k}}))
	}
	serve(t, h, request("/?x", http.Header{"X-Api-Key": {demoKey, otherKey}}))
	if logs.Len() < 5 {
		t.Fatalf("expected a debug line per request, got %d", logs.Len())
	}
	for _, e := range logs.All() {
		text := e.Message
		for k, v := range e.ContextMap() {
			text += " " + k + "=" + fmt.Sprint(v)
		}
		for _, secret := range []string{demoKey, otherKey, "unknown-key", hexDigest(demoKey), hexDigest(otherKey), hexDigest(demoKey)[:16]} {
			if strings.Contains(text, secret) {
				t.Errorf("log line holds a secret: %s", text)
			}
		}
	}
}

func TestAdminEntriesHoldNoDigest(t *testing.T) {
	h := provisioned(t, &Handler{Realm: "partners", Keys: []Key{
		{ID: "a", SHA256: hexDigest(demoKey), Identity: "x", Expires: "2030-01-01T00:00:00Z"},
		{ID: "b", SHA256: hexDigest(otherKey), Identity: "x", Disabled: true},
	}})
	found := false
	for _, m := range registry.APIKeys.Members() {
		if m == h {
			found = true
		}
	}
	if !found {
		t.Fatal("handler not in the registry after Provision")
	}
	name, entries := h.AdminAPIKeys()
	if name != "partners" || len(entries) != 2 || entries[0].ID != "a" || entries[1].ID != "b" || !entries[1].Disabled || entries[0].Expires == nil {
		t.Fatalf("admin view %q %+v", name, entries)
	}
	data, _ := json.Marshal(entries)
	text := string(data)
	if strings.Contains(text, hexDigest(demoKey)) || strings.Contains(strings.ToLower(text), "sha") {
		t.Fatalf("admin view holds a digest: %s", text)
	}
	_ = h.Cleanup()
	for _, m := range registry.APIKeys.Members() {
		if m == h {
			t.Fatal("handler still in the registry after Cleanup")
		}
	}
}

func parse(t *testing.T, input string) (*Handler, error) {
	t.Helper()
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	return &h, err
}

func TestUnmarshalCaddyfile(t *testing.T) {
	h, err := parse(t, "api_key {\n keys_file /nonexistent/keys.json\n key ci-1 "+hexDigest(demoKey)+" ci-bot plan=gold n=42 roles=[\"a\"]\n from_header Authorization ApiKey\n from_query k\n header X-Consumer-Id id\n keep_key\n optional\n realm partners\n}")
	if err != nil {
		t.Fatal(err)
	}
	if h.KeysFile != "/nonexistent/keys.json" || len(h.Keys) != 1 || string(h.Keys[0].Claims["plan"]) != `"gold"` ||
		string(h.Keys[0].Claims["n"]) != "42" || string(h.Keys[0].Claims["roles"]) != `["a"]` ||
		h.FromHeader[0] != (HeaderSource{Name: "Authorization", Prefix: "ApiKey"}) || h.FromQuery[0] != "k" ||
		h.Headers["X-Consumer-Id"] != "id" || !h.KeepKey || !h.Optional || h.Realm != "partners" {
		t.Fatalf("parsed %+v", h)
	}
	for input, want := range map[string]string{
		"api_key {\n bogus\n}":                             `unrecognized subdirective "bogus"`,
		"api_key {\n key a b\n}":                           "wrong argument count",
		"api_key {\n key a b c plan\n}":                    `claim "plan" is not <name>=<value>`,
		"api_key {\n key a b c p=1 p=2\n}":                 "claim p given twice",
		"api_key {\n realm a\n realm b\n}":                 "realm: duplicate subdirective",
		"api_key {\n keys_file a b\n}":                     "wrong argument count",
		"api_key {\n header X-A id\n header X-A key_id\n}": "header X-A: duplicate mapping",
		"api_key {\n optional yes\n}":                      "wrong argument count",
		"api_key extra {\n}":                               "wrong argument count",
		"api_key {\n from_header\n}":                       "wrong argument count",
		"api_key {\n from_query a b\n}":                    "wrong argument count",
	} {
		if _, err := parse(t, input); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", input, err, want)
		}
	}
}

func TestProvisionErrors(t *testing.T) {
	d := hexDigest(demoKey)
	for _, c := range []struct {
		name string
		h    Handler
		want string
	}{
		{"no keys", Handler{}, "no keys"},
		{"bad digest", Handler{Keys: []Key{{ID: "a", SHA256: d[:63] + "g", Identity: "x"}}}, `key entry 1 (id "a"): sha256 is not 64 hex digits`},
		{"short digest", Handler{Keys: []Key{{ID: "a", SHA256: d[:62], Identity: "x"}}}, "sha256 is not 64 hex digits"},
		{"empty identity", Handler{Keys: []Key{{ID: "a", SHA256: d}}}, "empty identity"},
		{"control identity", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x\ny"}}}, "identity holds a control character"},
		{"empty id", Handler{Keys: []Key{{SHA256: d, Identity: "x"}}}, "key entry 1: empty id"},
		{"dup id", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x"}, {ID: "a", SHA256: hexDigest(otherKey), Identity: "x"}}}, `key entry 2 (id "a"): duplicate id`},
		{"dup digest any case", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x"}, {ID: "b", SHA256: strings.ToUpper(d), Identity: "x"}}}, `duplicate sha256 (same key as id "a")`},
		{"claim id", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x", Claims: map[string]jsonRaw{"id": jsonRaw(`1`)}}}}, `claims: "id" is reserved`},
		{"claim key_id", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x", Claims: map[string]jsonRaw{"key_id": jsonRaw(`1`)}}}}, `claims: "key_id" is reserved`},
		{"bad time", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x", Expires: "tomorrow"}}}, `expires: "tomorrow" is not an RFC 3339 time`},
		{"expires before not_before", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x", NotBefore: "2027-01-01T00:00:00Z", Expires: "2026-01-01T00:00:00Z"}}}, "expires is not after not_before"},
		{"header on key source", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x"}}, Headers: map[string]string{"x_api_key": "id"}}, "the key is read from X-Api-Key"},
		{"bad from_header", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x"}}, FromHeader: []HeaderSource{{Name: "Bad:Name"}}}, `from_header: invalid header name "Bad:Name"`},
		{"realm quote", Handler{Keys: []Key{{ID: "a", SHA256: d, Identity: "x"}}, Realm: `a"b`}, "realm: must not hold quotes"},
		{"missing file", Handler{KeysFile: "/nonexistent/keys.json"}, "keys_file /nonexistent/keys.json: no such file or directory"},
	} {
		err := provision(t, &c.h)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(strings.ToLower(err.Error()), strings.ToLower(d[:12])) {
			t.Errorf("%s: error holds the digest: %v", c.name, err)
		}
	}
}

// Each bad key store is a config error naming the file and the entry,
// never holding a digest.
func TestStoreErrors(t *testing.T) {
	d, o := hexDigest(demoKey), hexDigest(otherKey)
	good := `{"id":"a","sha256":"` + d + `","identity":"x"}`
	for _, c := range []struct {
		name, body, want string
	}{
		{"not JSON", `{"keys": [` + good + `,}`, "not JSON: syntax error at line 1"},
		{"empty file", ``, "not JSON"},
		{"not an object", `[]`, `not a JSON object`},
		{"no keys", `{}`, `no "keys" member`},
		{"keys not array", `{"keys": {}}`, `"keys" is not an array`},
		{"unknown top member", `{"keys": [], "extra": 1}`, `unknown member "extra"`},
		{"unknown entry member", `{"keys": [` + good + `, {"id":"b","sha256":"` + o + `","identity":"x","sha265":"x"}]}`, `entry 2 (id "b"): unknown member "sha265"`},
		{"repeated member", `{"keys": [{"id":"b","sha256":"` + o + `","sha256":"` + d + `","identity":"x"}]}`, `entry 1: member "sha256" appears twice`},
		{"wrong type", `{"keys": [{"id":"b","sha256":"` + o + `","identity":"x","disabled":"yes"}]}`, `entry 1 (id "b"): member "disabled": string is not of type bool`},
		{"duplicate id", `{"keys": [` + good + `, {"id":"a","sha256":"` + o + `","identity":"x"}]}`, `entry 2 (id "a"): duplicate id`},
		{"duplicate digest", `{"keys": [` + good + `, {"id":"b","sha256":"` + strings.ToUpper(d) + `","identity":"x"}]}`, `entry 2 (id "b"): duplicate sha256`},
		{"bad digest", `{"keys": [{"id":"b","sha256":"` + o[:60] + `","identity":"x"}]}`, `entry 1 (id "b"): sha256 is not 64 hex digits`},
		{"empty identity", `{"keys": [{"id":"b","sha256":"` + o + `","identity":""}]}`, `entry 1 (id "b"): empty identity`},
		{"control identity", `{"keys": [{"id":"b","sha256":"` + o + `","identity":"a\u0000"}]}`, `entry 1 (id "b"): identity holds a control character`},
		{"claim id", `{"keys": [{"id":"b","sha256":"` + o + `","identity":"x","claims":{"id":"y"}}]}`, `entry 1 (id "b"): claims: "id" is reserved`},
		{"trailing data", `{"keys": []} {}`, "not JSON"},
	} {
		p := writeStore(t, c.body)
		err := provision(t, &Handler{KeysFile: p})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "keys_file "+p) {
			t.Errorf("%s: %v, want %q naming the file", c.name, err, c.want)
			continue
		}
		if strings.Contains(strings.ToLower(err.Error()), d[:12]) || strings.Contains(strings.ToLower(err.Error()), o[:12]) {
			t.Errorf("%s: error holds a digest: %v", c.name, err)
		}
	}
	// A good store next to inline keys: an id may not repeat across both.
	p := writeStore(t, `{"keys": [`+good+`]}`)
	if err := provision(t, &Handler{KeysFile: p, Keys: []Key{{ID: "a", SHA256: o, Identity: "y"}}}); err == nil || !strings.Contains(err.Error(), "duplicate id") {
		t.Errorf("id repeated across key and keys_file: %v", err)
	}
	h := provisioned(t, &Handler{KeysFile: p})
	if status, _, _, _ := serve(t, h, request("/", http.Header{"X-Api-Key": {demoKey}})); status != 0 {
		t.Errorf("good store: %d", status)
	}
}
