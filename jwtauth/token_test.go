package jwtauth

import (
	"context"
	"crypto"
	cryptoRand "crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "0123456789abcdef0123456789abcdef" // 32 bytes

var testNow = time.Unix(1_800_000_000, 0)

func frozen() time.Time { return testNow }

// newTestVerifier builds a verifier over static keys with a frozen clock.
func newTestVerifier(t testing.TB, secret string, pems []string, algorithms ...string) *verifier {
	t.Helper()
	allowed, err := parseAlgSet(algorithms)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := staticKeys(secret, pems, allowed)
	if err != nil {
		t.Fatal(err)
	}
	var union algSet
	for _, k := range keys {
		union |= k.algs
	}
	return newVerifier(verifierConfig{keys: staticKeySet(keys), allowed: union, leeway: defaultLeeway, now: frozen})
}

func privateKey(t testing.TB, file string) any {
	t.Helper()
	data, err := os.ReadFile("../testdata/keys/" + file)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func enc(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// signRaw signs exactly the given header and payload JSON.
func signRaw(t testing.TB, method jwt.SigningMethod, key any, header, payload string) string {
	t.Helper()
	signing := enc(header) + "." + enc(payload)
	sig, err := method.Sign(signing, key)
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// validPayload is a payload valid at testNow.
func validPayload(extra string) string {
	p := `{"sub":"alice","iat":1799999990,"exp":1800003600`
	if extra != "" {
		p += "," + extra
	}
	return p + "}"
}

func hs256(t testing.TB, payload string) string {
	return signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","typ":"JWT"}`, payload)
}

// RFC 7515 Appendix A.1: HS256.
func TestRFC7515A1HS256(t *testing.T) {
	k, _ := base64.RawURLEncoding.DecodeString("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
	keys, err := staticKeys(string(k), nil, allAlgSet)
	if err != nil {
		t.Fatal(err)
	}
	before := func() time.Time { return time.Unix(1300819380-60, 0) }
	v := newVerifier(verifierConfig{keys: staticKeySet(keys), allowed: keys[0].algs, leeway: defaultLeeway, issuers: []string{"joe"}, now: before})
	const token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk" //nolint:gosec // RFC 7515 test vector
	claims, err := v.verify(context.Background(), token)
	if err != nil {
		t.Fatalf("RFC 7515 A.1 refused: %v", err)
	}
	if claims["http://example.com/is_root"] != true {
		t.Fatalf("claims = %v", claims)
	}
	// The same token one second after its exp plus leeway is refused.
	after := func() time.Time { return time.Unix(1300819380+31, 0) }
	v.validator = newVerifier(verifierConfig{keys: v.static, allowed: v.allowed, leeway: defaultLeeway, now: after}).validator
	if _, err := v.verify(context.Background(), token); !errors.Is(err, errExpired) {
		t.Fatalf("expired A.1 token: err = %v", err)
	}
	// One flipped signature bit is refused.
	if _, err := newVerifier(verifierConfig{keys: staticKeySet(keys), allowed: keys[0].algs, leeway: defaultLeeway, now: before}).verify(context.Background(), strings.Replace(token, ".dBjf", ".eBjf", 1)); !errors.Is(err, errSignature) {
		t.Fatalf("tampered A.1 token: err = %v", err)
	}
}

// RFC 7515 Appendix A.2: RS256.
func TestRFC7515A2RS256(t *testing.T) {
	n, _ := base64.RawURLEncoding.DecodeString("ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ")
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: 65537}
	algs, err := pinKey(pub, "", allAlgSet)
	if err != nil {
		t.Fatal(err)
	}
	before := func() time.Time { return time.Unix(1300819380-60, 0) }
	v := newVerifier(verifierConfig{keys: staticKeySet{{algs: algs, key: pub}}, allowed: algs, leeway: defaultLeeway, now: before})
	const token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw" //nolint:gosec // RFC 7515 test vector
	claims, err := v.verify(context.Background(), token)
	if err != nil {
		t.Fatalf("RFC 7515 A.2 refused: %v", err)
	}
	if claims["iss"] != "joe" {
		t.Fatalf("claims = %v", claims)
	}
}

// RFC 7515 Appendix A.5: an unsecured JWS (alg none) is refused.
func TestRFC7515A5NoneRefused(t *testing.T) {
	v := newTestVerifier(t, testSecret, []string{"../testdata/keys/rsa2048.pem"})
	v.now = func() time.Time { return time.Unix(1300819380-60, 0) }
	const token = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ." //nolint:gosec // RFC 7515 test vector
	if _, err := v.verify(context.Background(), token); err == nil {
		t.Fatal("alg none accepted")
	}
}

func TestValidTokens(t *testing.T) {
	rsaKey := privateKey(t, "rsa2048.key")
	for _, tc := range []struct {
		name   string
		pems   []string
		token  string
		secret string
	}{
		{"HS256", nil, hs256(t, validPayload("")), testSecret},
		{"RS256 SPKI", []string{"../testdata/keys/rsa2048.pem"}, signRaw(t, jwt.SigningMethodRS256, rsaKey, `{"alg":"RS256"}`, validPayload("")), ""},
		{"PS256 PKCS#1", []string{"../testdata/keys/rsa2048-pkcs1.pem"}, signRaw(t, jwt.SigningMethodPS256, rsaKey, `{"alg":"PS256"}`, validPayload("")), ""},
		{"RS512 certificate", []string{"../testdata/keys/rsa2048-cert.pem"}, signRaw(t, jwt.SigningMethodRS512, rsaKey, `{"alg":"RS512"}`, validPayload("")), ""},
		{"ES256", []string{"../testdata/keys/ec256.pem"}, signRaw(t, jwt.SigningMethodES256, privateKey(t, "ec256.key"), `{"alg":"ES256"}`, validPayload("")), ""},
		{"EdDSA", []string{"../testdata/keys/ed25519.pem"}, signRaw(t, jwt.SigningMethodEdDSA, privateKey(t, "ed25519.key"), `{"alg":"EdDSA"}`, validPayload("")), ""},
		{"exp within leeway", nil, hs256(t, `{"sub":"a","exp":1799999980}`), testSecret},
		{"unknown kid on a key without kid", nil, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"2024-key"}`, validPayload("")), testSecret},
		{"Ed25519 (RFC 9864)", []string{"../testdata/keys/ed25519.pem"}, signRaw(t, jwt.SigningMethodEdDSA, privateKey(t, "ed25519.key"), `{"alg":"Ed25519"}`, validPayload("")), ""},
		{"base64 kid, as Cognito's", nil, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"a/B+c=="}`, validPayload("")), testSecret},
		{"kid that looks like a path is only text", nil, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"../../../../dev/null"}`, validPayload("")), testSecret},
		// Member names are case-sensitive: "Alg" is an unknown member, not
		// a second alg that could override the first.
		{"Alg beside alg", nil, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","Alg":"RS256"}`, validPayload("")), testSecret},
		{"aud array holding the audience", nil, hs256(t, validPayload(`"aud":["web","api"]`)), testSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newTestVerifier(t, tc.secret, tc.pems)
			if strings.Contains(tc.name, "aud") {
				v.audiences = []string{"api"}
			}
			if _, err := v.verify(context.Background(), tc.token); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}

func TestRefusedTokens(t *testing.T) {
	rsaKey := privateKey(t, "rsa2048.key")
	rsaPEM, _ := os.ReadFile("../testdata/keys/rsa2048.pem")
	secret48 := testSecret + "0123456789abcdef"
	valid := hs256(t, validPayload(""))
	parts := strings.Split(valid, ".")

	// An attacker's server: a token's jku/x5u must never make us call it.
	var hits atomic.Int32
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer attacker.Close()
	attackerKey := privateKey(t, "ec256.key")

	type verifierFn func() *verifier
	hmacOnly := func() *verifier { return newTestVerifier(t, testSecret, nil) }
	rsaOnly := func() *verifier { return newTestVerifier(t, "", []string{"../testdata/keys/rsa2048.pem"}) }
	rs256Only := func() *verifier { return newTestVerifier(t, "", []string{"../testdata/keys/rsa2048.pem"}, "RS256") }
	hs256Only := func() *verifier { return newTestVerifier(t, secret48, nil, "HS256") }

	cases := []struct {
		name  string
		v     verifierFn
		token string
		want  error
	}{
		{"alg none", hmacOnly, enc(`{"alg":"none"}`) + "." + enc(validPayload("")) + ".", errMalformed},
		{"alg none with signature", hmacOnly, enc(`{"alg":"none"}`) + "." + enc(validPayload("")) + "." + parts[2], errAlgorithm},
		{"alg None", hmacOnly, enc(`{"alg":"None"}`) + "." + enc(validPayload("")) + "." + parts[2], errAlgorithm},
		{"alg NONE", hmacOnly, enc(`{"alg":"NONE"}`) + "." + enc(validPayload("")) + "." + parts[2], errAlgorithm},
		{"alg nOnE", hmacOnly, enc(`{"alg":"nOnE"}`) + "." + enc(validPayload("")) + "." + parts[2], errAlgorithm},
		{"alg hs256 lower case", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"hs256"}`, validPayload("")), errAlgorithm},
		{"HS256 signed with the RSA public key PEM", rsaOnly, signRaw(t, jwt.SigningMethodHS256, rsaPEM, `{"alg":"HS256"}`, validPayload("")), errAlgorithm},
		{"HS384 where only HS256 is allowed", hs256Only, signRaw(t, jwt.SigningMethodHS384, []byte(secret48), `{"alg":"HS384"}`, validPayload("")), errAlgorithm},
		{"PS256 against an RS256-only key", rs256Only, signRaw(t, jwt.SigningMethodPS256, rsaKey, `{"alg":"PS256"}`, validPayload("")), errAlgorithm},
		{"RS256 against an HMAC-only config", hmacOnly, signRaw(t, jwt.SigningMethodRS256, rsaKey, `{"alg":"RS256"}`, validPayload("")), errAlgorithm},
		{"wrong secret", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), `{"alg":"HS256"}`, validPayload("")), errSignature},
		{"expired", hmacOnly, hs256(t, `{"sub":"a","exp":1799999960}`), errExpired},
		{"nbf in the future", hmacOnly, hs256(t, `{"sub":"a","exp":1800003600,"nbf":1800000040}`), errNotYetValid},
		{"iat in the future", hmacOnly, hs256(t, `{"sub":"a","exp":1800003600,"iat":1800000040}`), errIssuedFuture},
		{"missing exp", hmacOnly, hs256(t, `{"sub":"a"}`), errMissingExp},
		{"exp as string", hmacOnly, hs256(t, `{"sub":"a","exp":"1800003600"}`), errClaimType},
		{"nbf as string", hmacOnly, hs256(t, `{"sub":"a","exp":1800003600,"nbf":"1"}`), errClaimType},
		{"iat as bool", hmacOnly, hs256(t, `{"sub":"a","exp":1800003600,"iat":true}`), errClaimType},
		{"unknown crit", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","crit":["exp"],"exp":1}`, validPayload("")), errCrit},
		{"empty crit", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","crit":[]}`, validPayload("")), errCrit},
		{"malformed crit", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","crit":"b64"}`, validPayload("")), errCrit},
		{"payload not an object", hmacOnly, hs256(t, `["a"]`), errMalformed},
		{"trailing data after claims", hmacOnly, hs256(t, validPayload("")+`{}`), errMalformed},
		{"JSON serialisation", hmacOnly, `{"payload":"` + parts[1] + `","protected":"` + parts[0] + `","signature":"` + parts[2] + `"}`, errMalformed},
		{"padding", hmacOnly, parts[0] + "." + parts[1] + "." + parts[2] + "=", errMalformed},
		{"padded header", hmacOnly, base64.URLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT" }`)) + "." + parts[1] + "." + parts[2], errMalformed},
		{"whitespace", hmacOnly, parts[0] + "." + parts[1][:10] + " " + parts[1][10:] + "." + parts[2], errMalformed},
		{"newline", hmacOnly, parts[0] + "." + parts[1][:10] + "\n" + parts[1][10:] + "." + parts[2], errMalformed},
		{"standard base64 alphabet", hmacOnly, parts[0] + "." + strings.ReplaceAll(parts[1], "_", "/") + "/." + parts[2], errMalformed},
		{"two segments", hmacOnly, parts[0] + "." + parts[1], errMalformed},
		{"four segments", hmacOnly, valid + "." + parts[2], errMalformed},
		{"five segments (JWE)", hmacOnly, parts[0] + ".." + parts[1] + "." + parts[2] + "." + parts[2], errMalformed},
		{"empty signature", hmacOnly, parts[0] + "." + parts[1] + ".", errMalformed},
		{"16 KB garbage", hmacOnly, strings.Repeat("A", 16<<10), errTooLarge},
		{"jku to an attacker", hmacOnly, signRaw(t, jwt.SigningMethodES256, attackerKey, `{"alg":"ES256","jku":"`+attacker.URL+`/jwks"}`, validPayload("")), errAlgorithm},
		{"x5u to an attacker", rsaOnly, signRaw(t, jwt.SigningMethodES256, attackerKey, `{"alg":"ES256","x5u":"`+attacker.URL+`/cert"}`, validPayload("")), errAlgorithm},
		{"embedded jwk", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte("attacker-secret-attacker-secret!"), `{"alg":"HS256","jwk":{"kty":"oct","k":"YXR0YWNrZXItc2VjcmV0LWF0dGFja2VyLXNlY3JldCE"}}`, validPayload("")), errSignature},
		{"embedded x5c", rsaOnly, signRaw(t, jwt.SigningMethodRS256, rsaKeyAttacker(t), `{"alg":"RS256","x5c":["MIIB"]}`, validPayload("")), errSignature},
		{"kid too long", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"`+strings.Repeat("k", maxKidLen+1)+`"}`, validPayload("")), errKid},
		{"kid with DEL", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"a\u007fb"}`, validPayload("")), errKid},
		{"kid with tab", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"a\tb"}`, validPayload("")), errKid},
		{"member name ALG", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"ALG":"HS256"}`, validPayload("")), errAlgorithm},
		{"member name Alg", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"Alg":"HS256"}`, validPayload("")), errAlgorithm},
		{"duplicate alg", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","alg":"HS256"}`, validPayload("")), errMalformed},
		{"duplicate alg, escaped", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","\u0061lg":"HS256"}`, validPayload("")), errMalformed},
		{"duplicate unknown member", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","x":1,"x":2}`, validPayload("")), errMalformed},
		{"duplicate kid", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"a","kid":"b"}`, validPayload("")), errMalformed},
		{"header not an object", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `["alg","HS256"]`, validPayload("")), errMalformed},
		{"trailing data after header", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256"}{}`, validPayload("")), errMalformed},
		{"alg not a string", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":["HS256"]}`, validPayload("")), errMalformed},
		{"empty aud with an audience required", func() *verifier {
			v := newTestVerifier(t, testSecret, nil)
			v.audiences = []string{"api"}
			return v
		}, hs256(t, validPayload(`"aud":[]`)), errAudience},
		{"kid with NUL", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":"a\u0000b"}`, validPayload("")), errKid},
		{"kid not a string", hmacOnly, signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","kid":7}`, validPayload("")), errMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.v().verify(context.Background(), tc.token)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("a URL from a token header was fetched %d times", n)
	}
}

func rsaKeyAttacker(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rngReader{}, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestClaimRules(t *testing.T) {
	keys, _ := staticKeys(testSecret, nil, allAlgSet)
	mk := func(issuers, audiences, require, types []string, maxLifetime time.Duration) *verifier {
		return newVerifier(verifierConfig{
			keys: staticKeySet(keys), allowed: keys[0].algs, leeway: defaultLeeway, maxLifetime: maxLifetime,
			issuers: issuers, audiences: audiences, require: require, types: types, now: frozen,
		})
	}
	typed := func(typ, payload string) string {
		return signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256","typ":"`+typ+`"}`, payload)
	}
	for _, tc := range []struct {
		name  string
		v     *verifier
		token string
		want  error
	}{
		{"issuer ok", mk([]string{"a", "b"}, nil, nil, nil, 0), hs256(t, validPayload(`"iss":"b"`)), nil},
		{"issuer wrong", mk([]string{"a"}, nil, nil, nil, 0), hs256(t, validPayload(`"iss":"b"`)), errIssuer},
		{"issuer missing", mk([]string{"a"}, nil, nil, nil, 0), hs256(t, validPayload("")), errIssuer},
		{"audience in array", mk(nil, []string{"api"}, nil, nil, 0), hs256(t, validPayload(`"aud":["web","api"]`)), nil},
		{"audience wrong", mk(nil, []string{"api"}, nil, nil, 0), hs256(t, validPayload(`"aud":"web"`)), errAudience},
		{"audience missing", mk(nil, []string{"api"}, nil, nil, 0), hs256(t, validPayload("")), errAudience},
		{"require present", mk(nil, nil, []string{"org.id"}, nil, 0), hs256(t, validPayload(`"org":{"id":5}`)), nil},
		{"require missing", mk(nil, nil, []string{"org.id"}, nil, 0), hs256(t, validPayload(`"org":{}`)), errMissingClaim},
		{"require null", mk(nil, nil, []string{"email"}, nil, 0), hs256(t, validPayload(`"email":null`)), errMissingClaim},
		{"type ok", mk(nil, nil, nil, []string{"at+jwt"}, 0), typed("application/AT+JWT", validPayload("")), nil},
		{"type wrong", mk(nil, nil, nil, []string{"at+jwt"}, 0), typed("JWT", validPayload("")), errType},
		{"type missing", mk(nil, nil, nil, []string{"at+jwt"}, 0), signRaw(t, jwt.SigningMethodHS256, []byte(testSecret), `{"alg":"HS256"}`, validPayload("")), errType},
		{"lifetime ok", mk(nil, nil, nil, nil, time.Hour), hs256(t, `{"iat":1799999000,"exp":1800002600}`), nil},
		{"lifetime too long", mk(nil, nil, nil, nil, time.Hour), hs256(t, `{"iat":1799999000,"exp":1800002601}`), errLifetime},
		{"lifetime without iat", mk(nil, nil, nil, nil, time.Hour), hs256(t, `{"exp":1800003601}`), errLifetime},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.v.verify(context.Background(), tc.token)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestWeakKeysRefused(t *testing.T) {
	if _, err := staticKeys("short-secret", nil, allAlgSet); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Errorf("31-byte secret: %v", err)
	}
	if _, err := staticKeys(testSecret, nil, mustAlgs(t, "HS512")); err == nil || !strings.Contains(err.Error(), "HS512 requires at least 64") {
		t.Errorf("32-byte secret for HS512: %v", err)
	}
	if _, err := staticKeys("", []string{"../testdata/keys/rsa1024.pem"}, allAlgSet); err == nil || !strings.Contains(err.Error(), "1024 bits") {
		t.Errorf("RSA 1024: %v", err)
	}
	if _, err := staticKeys("", []string{"../testdata/keys/rsa2048.key"}, allAlgSet); err == nil || !strings.Contains(err.Error(), "private key") {
		t.Errorf("private key as public_key: %v", err)
	}
	if _, err := staticKeys("", []string{"../testdata/keys/ec256.pem"}, mustAlgs(t, "RS256")); err == nil {
		t.Error("EC key with algorithms RS256 accepted")
	}
	if _, err := parseAlgSet([]string{"none"}); err == nil {
		t.Error("algorithms none accepted")
	}
}

func mustAlgs(t testing.TB, names ...string) algSet {
	t.Helper()
	s, err := parseAlgSet(names)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// benchAlgs are the algorithms benchmarked, with their key files.
var benchAlgs = []struct {
	name, secret, pem, keyFile string
	method                     jwt.SigningMethod
}{
	{"HS256", testSecret, "", "", jwt.SigningMethodHS256},
	{"RS256", "", "../testdata/keys/rsa2048.pem", "rsa2048.key", jwt.SigningMethodRS256},
	{"ES256", "", "../testdata/keys/ec256.pem", "ec256.key", jwt.SigningMethodES256},
	{"EdDSA", "", "../testdata/keys/ed25519.pem", "ed25519.key", jwt.SigningMethodEdDSA},
}

// benchSetup returns a verifier for benchAlgs[i] and a valid token for it.
func benchSetup(b *testing.B, i int) (*verifier, string) {
	tc := benchAlgs[i]
	var pems []string
	var key any = []byte(tc.secret)
	if tc.pem != "" {
		pems = []string{tc.pem}
		key = privateKey(b, tc.keyFile)
	}
	token := signRaw(b, tc.method, key, `{"alg":"`+tc.method.Alg()+`","typ":"JWT"}`, validPayload(`"role":"admin","iss":"https://idp.example.com/"`))
	return newTestVerifier(b, tc.secret, pems), token
}

// BenchmarkVerify is a full verification (signature and claims), per
// algorithm: what a token costs on a cache miss.
func BenchmarkVerify(b *testing.B) {
	for i, tc := range benchAlgs {
		b.Run(tc.name, func(b *testing.B) {
			v, token := benchSetup(b, i)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.verify(context.Background(), token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type rngReader struct{}

func (rngReader) Read(p []byte) (int, error) { return cryptoRand.Read(p) }

// Ed25519 keys verify EdDSA and RFC 9864's Ed25519 (one algorithm under
// two names), whatever the JWK calls it; `algorithms` narrows by name; no
// other key type takes Ed25519.
func TestEd25519Pinning(t *testing.T) {
	pub := privateKey(t, "ed25519.key").(interface{ Public() crypto.PublicKey }).Public()
	for _, c := range []struct {
		jwkAlg  string
		allowed []string
		want    string
	}{
		{"", nil, "EdDSA Ed25519"},
		{"EdDSA", nil, "EdDSA Ed25519"},
		{"Ed25519", nil, "EdDSA Ed25519"},
		{"Ed25519", []string{"EdDSA"}, "EdDSA"},
		{"", []string{"Ed25519"}, "Ed25519"},
	} {
		got, err := pinKey(pub, c.jwkAlg, mustAlgs(t, c.allowed...))
		if err != nil || got.String() != c.want {
			t.Errorf("jwk alg %q, algorithms %v: %v %v, want %s", c.jwkAlg, c.allowed, got, err, c.want)
		}
	}
	rsaPub := privateKey(t, "rsa2048.key").(*rsa.PrivateKey).Public()
	if _, err := pinKey(rsaPub, "Ed25519", allAlgSet); err == nil {
		t.Error("an RSA key took alg Ed25519")
	}
	if _, err := pinKey(rsaPub, "", mustAlgs(t, "Ed25519")); err == nil {
		t.Error("an RSA key was left with Ed25519")
	}
}

// BenchmarkDecodeHeader is the strict JOSE header decoding of every
// signature check (a cache miss).
func BenchmarkDecodeHeader(b *testing.B) {
	data := []byte(`{"alg":"RS256","typ":"JWT","kid":"2024-key-1"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeHeader(data); err != nil {
			b.Fatal(err)
		}
	}
}
