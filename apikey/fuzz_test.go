package apikey

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddygateway/caddy-gateway/internal/identity"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzParseStore parses any bytes as a key store: an error or entries,
// never a panic. An error never quotes the text (where a digest lives);
// every entry it accepts either compiles or is refused with an error that
// holds no digest.
func FuzzParseStore(f *testing.F) {
	d := hexDigest(demoKey)
	for _, s := range []string{
		`{"keys": []}`,
		`{"keys": [{"id":"a","sha256":"` + d + `","identity":"x","claims":{"plan":"gold","n":9007199254740993},"not_before":"2026-11-01T00:00:00Z","expires":"2027-02-01T00:00:00Z","disabled":false}]}`,
		`{"keys": [{"id":"a","sha256":"` + d + `","sha256":"` + d + `"}]}`,
		`{"keys": [{"id":"a","sha256":"` + strings.ToUpper(d) + `","identity":"x","bogus":1}]}`,
		`{"keys": [{"id":"a","sha256":"` + d[:63] + `","identity":""}]}`,
		`{"keys": {}}`, `[]`, `{"keys": [1]}`, `{"keys": [` + `{"id":"` + d + `"` + `]}`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := parseStore(data)
		if err != nil {
			leak(t, err.Error(), data)
			return
		}
		for i := range keys {
			if _, _, err := compileKey(&keys[i], identity.NewHeaders(map[string]string{"X-A": "plan"})); err != nil {
				leak(t, err.Error(), []byte(keys[i].SHA256))
			}
		}
	})
}

// quotedID matches the `id "..."` an error names its entry by: an id is
// not secret, and may itself be hex.
var quotedID = regexp.MustCompile(`id "(?:[^"\\]|\\.)*"`)

// leak fails when msg quotes a run of 16 or more hex digits from data
// (part of a digest) anywhere outside the entry's quoted id.
func leak(t *testing.T, msg string, data []byte) {
	t.Helper()
	msg = quotedID.ReplaceAllString(msg, `id ""`)
	for _, run := range hexRuns(string(data)) {
		if len(run) >= 16 && strings.Contains(strings.ToLower(msg), strings.ToLower(run[:16])) {
			t.Fatalf("error quotes the input's hex %q: %s", run, msg)
		}
	}
}

func hexRuns(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool {
		return (r < '0' || r > '9') && (r < 'a' || r > 'f') && (r < 'A' || r > 'F')
	})
}

// FuzzUnmarshalCaddyfile parses any token stream as an api_key block: an
// error or a config, never a panic. A config it fills survives the trip
// through JSON that `caddy adapt` makes unchanged, and passes through
// Validate without a panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	f.Add("api_key {\n key ci-1 " + hexDigest(demoKey) + " ci-bot plan=gold n=1 a=[1,2]\n}")
	f.Add("api_key {\n keys_file /nonexistent.json\n from_header Authorization ApiKey\n from_query k\n header X-C id\n keep_key\n optional\n realm r\n}")
	f.Add("api_key extra {\n}")
	goldens, _ := filepath.Glob("../testdata/caddyfile_adapt/api_key_*.caddyfiletest")
	for _, g := range goldens {
		data, err := os.ReadFile(g)
		if err != nil {
			f.Fatal(err)
		}
		text, _, _ := strings.Cut(string(data), "\n----------")
		if i := strings.Index(text, "api_key"); i >= 0 {
			block := text[i:]
			if j := strings.Index(block, "\n\t}"); j >= 0 {
				block = block[:j+3]
			}
			f.Add(block)
		}
	}
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			return
		}
		adapted, err := json.Marshal(&h)
		if err != nil {
			t.Fatal(err)
		}
		var back Handler
		if err := json.Unmarshal(adapted, &back); err != nil {
			t.Fatalf("adapted config does not load: %v\n%s", err, adapted)
		}
		if again, _ := json.Marshal(&back); !bytes.Equal(again, adapted) {
			t.Fatalf("JSON round trip changed the config:\n%s\n%s", adapted, again)
		}
		_ = back.Validate()
	})
}
