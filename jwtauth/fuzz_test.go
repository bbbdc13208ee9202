package jwtauth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// tokenSeeds are tokens from the table tests: valid ones, the RFC 7515
// examples, and the shapes TestRefusedTokens refuses.
func tokenSeeds(f *testing.F) []string {
	valid := hs256(f, validPayload(""))
	parts := strings.Split(valid, ".")
	return []string{
		valid,
		hs256(f, validPayload(`"aud":["api"],"scope":"read write","n":12345678901234567890`)),
		"eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
		enc(`{"alg":"none"}`) + "." + enc(validPayload("")) + ".",
		signRaw(f, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","alg":"HS256"}`, validPayload("")),
		signRaw(f, jwt.SigningMethodHS256, []byte(testSecret), `{"ALG":"HS256"}`, validPayload("")),
		signRaw(f, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"a/B+c=="}`, validPayload("")),
		signRaw(f, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","crit":["exp"]}`, validPayload("")),
		parts[0] + "." + parts[1] + "." + parts[2] + "=",
		parts[0] + "." + parts[1],
		valid + "." + parts[2],
		strings.Repeat("A.", 100),
		signRaw(f, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), `{"alg":"HS256"}`, validPayload("")),
		parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-2] + "AA",
	}
}

// FuzzVerify feeds any string to the verifier as a token. It must never
// panic, and it accepts a token only when that token is a compact JWS
// whose signature is the HMAC of its signing input under the key: nothing
// else gets through.
func FuzzVerify(f *testing.F) {
	for _, s := range tokenSeeds(f) {
		f.Add(s)
	}
	v := newTestVerifier(f, testSecret, nil)
	v.now = frozen
	f.Fuzz(func(t *testing.T, token string) {
		hdr, payload, sig, splitErr := splitCompact(token)
		if splitErr == nil && hdr+"."+payload+"."+sig != token {
			t.Fatalf("splitCompact(%q) = %q %q %q", token, hdr, payload, sig)
		}
		claims, err := v.verify(context.Background(), token)
		if err != nil {
			if claims != nil {
				t.Fatal("claims returned with an error")
			}
			return
		}
		if splitErr != nil {
			t.Fatalf("accepted a token splitCompact refuses: %v", splitErr)
		}
		mac := hmac.New(sha256.New, []byte(testSecret))
		mac.Write([]byte(hdr + "." + payload))
		if got, _ := base64.RawURLEncoding.DecodeString(sig); !hmac.Equal(got, mac.Sum(nil)) {
			t.Fatalf("accepted a token not signed with the key: %q", token)
		}
	})
}

// FuzzDecodeHeader decodes any bytes as a JOSE header. It must never
// panic, and it must agree exactly with referenceHeader, a plain
// encoding/json token walk: what it accepts is one JSON object without
// duplicate member names, and its alg, kid, typ and crit are what
// encoding/json reads.
func FuzzDecodeHeader(f *testing.F) {
	for _, s := range []string{
		`{"alg":"HS256","typ":"JWT"}`, `{"alg":"RS256","kid":"k1"}`, `{"ALG":"HS256"}`,
		`{"alg":"RS256","Alg":"HS256"}`, `{"alg":"HS256","alg":"none"}`, `{"alg":"HS256","\u0061lg":"x"}`,
		`{"alg":"HS256","crit":["b64"]}`, `{"alg":null,"kid":null}`, `{"alg":"HS256"} {}`, `[]`, ``,
		`{"alg":"HS256","jwk":{"kty":"oct","k":"x"},"x5c":["MIIB"]}`, ` { "kid" : "a\"b" , "x" : [1,{"y":"}"}] } `,
		"{\"k\xff\":1,\"k\xfe\":2}", `{"kid":"\ud800"}`, `{"alg":1e5}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeHeader(data)
		want, wantErr := referenceHeader(data)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%q: err %v, reference %v", data, err, wantErr)
		}
		if err == nil && got != want {
			t.Fatalf("%q: %+v, reference %+v", data, got, want)
		}
	})
}

// referenceHeader is decodeHeader written plainly with encoding/json's
// token stream (slow: dozens of allocations).
func referenceHeader(data []byte) (header, error) {
	var h header
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return h, errMalformed
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return h, errMalformed
		}
		name := tok.(string)
		if seen[name] || len(seen) == maxHeaderMembers {
			return h, errMalformed
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return h, errMalformed
		}
		var str *string
		switch name {
		case "alg", "kid", "typ":
			if err := json.Unmarshal(raw, &str); err != nil {
				return h, errMalformed
			}
		case "crit":
			h.hasCrit = true
		}
		if str != nil {
			switch name {
			case "alg":
				h.alg = *str
			case "kid":
				h.kid, h.hasKid = *str, true
			case "typ":
				h.typ, h.hasTyp = *str, true
			}
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return h, errMalformed
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return h, errMalformed
	}
	return h, nil
}

// FuzzUnmarshalCaddyfile parses any token stream as a jwt_auth block: an
// error or a config, never a panic. A config it fills survives the trip
// through JSON that `caddy adapt` makes unchanged, and passes through
// Validate without a panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	f.Add("jwt_auth {\n secret " + testSecret + "\n}")
	f.Add("jwt_auth {\n public_key /nonexistent.pem\n jwks_file /nonexistent.json\n}")
	f.Add("jwt_auth {\n secret x\n claim role admin editor\n header x-user-id sub\n from_header X-Token Bearer\n leeway 6000d\n}")
	f.Add("jwt_auth extra {\n}")
	f.Add("jwt_auth {\n optional yes\n}")
	goldens, _ := filepath.Glob("../testdata/caddyfile_adapt/jwt_auth_*.caddyfiletest")
	for _, g := range goldens {
		data, err := os.ReadFile(g)
		if err != nil {
			f.Fatal(err)
		}
		text, _, _ := strings.Cut(string(data), "\n----------")
		if i := strings.Index(text, "jwt_auth"); i >= 0 {
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
		adapted, err := json.Marshal(&h) //nolint:gosec // the config is what adapt outputs; fuzz input, no real secret
		if err != nil {
			t.Fatal(err)
		}
		var back Handler
		if err := json.Unmarshal(adapted, &back); err != nil {
			t.Fatalf("adapted config does not load: %v\n%s", err, adapted)
		}
		if again, _ := json.Marshal(&back); !bytes.Equal(again, adapted) { //nolint:gosec // as above
			t.Fatalf("JSON round trip changed the config:\n%s\n%s", adapted, again)
		}
		_ = back.Validate()
	})
}
