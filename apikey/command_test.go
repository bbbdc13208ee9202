package apikey

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestNewKey(t *testing.T) {
	now := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	random := bytes.NewReader(bytes.Repeat([]byte{7}, 64))
	key, line, err := newKey(random, now, "cgw_", "", "ci-bot", []string{"plan=gold", "quota=9007199254740993"}, "90d")
	if err != nil {
		t.Fatal(err)
	}
	if want := "cgw_" + base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)); key != want {
		t.Fatalf("key %q, want %q", key, want)
	}
	var k Key
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&k); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(key))
	if k.SHA256 != hex.EncodeToString(sum[:]) || k.Identity != "ci-bot" || !strings.HasPrefix(k.ID, "key-20261203-") ||
		string(k.Claims["quota"]) != "9007199254740993" || string(k.Claims["plan"]) != `"gold"` || k.Expires != "2027-03-03T00:00:00Z" {
		t.Fatalf("entry %s", line)
	}
	if strings.Contains(line, key) || strings.Contains(line, key[4:]) {
		t.Fatal("the entry holds the key")
	}
	// The entry is one api_key accepts, and the key matches it.
	h := provisioned(t, &Handler{Keys: []Key{k}})
	if status, _, _, _ := serve(t, h, request("/", map[string][]string{"X-Api-Key": {key}})); status != 0 {
		t.Fatalf("new key refused: %d", status)
	}
	for _, c := range []struct {
		prefix, id string
		claims     []string
		expires    string
		want       string
	}{
		{"a b", "", nil, "", "--prefix"},
		{"cgw_", "", []string{"plan"}, "", "want name=value"},
		{"cgw_", "", []string{"a=1", "a=2"}, "", "given twice"},
		{"cgw_", "", []string{"id=x"}, "", `"id" is reserved`},
		{"cgw_", "", nil, "yesterday", "--expires"},
		{"cgw_", "x\ny", nil, "", "id holds a control character"},
	} {
		_, _, err := newKey(bytes.NewReader(make([]byte, 64)), now, c.prefix, c.id, "", c.claims, c.expires)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c, err, c.want)
		}
	}
}

func TestHashKey(t *testing.T) {
	got, err := hashKey([]byte(demoKey + "\n"))
	if err != nil || got != hexDigest(demoKey) {
		t.Fatalf("%q %v", got, err)
	}
	for in, want := range map[string]string{"short-key\n": "too short", strings.Repeat("k", 5000): "too long", "0123456789abcdef\x00x": "control character"} {
		if _, err := hashKey([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.20q: %v, want %q", in, err, want)
		}
	}
}
