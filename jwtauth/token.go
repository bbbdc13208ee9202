package jwtauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddygateway/caddy-gateway/internal/identity"
	"github.com/golang-jwt/jwt/v5"
)

// maxTokenLen bounds the size of a token this module looks at. Larger input
// is refused before any decoding.
const maxTokenLen = 8 << 10

// Refusal reasons. Their texts become {http.auth.jwt.error} and never carry
// token or key material.
var (
	errMalformed     = errors.New("malformed token")
	errTooLarge      = errors.New("token too large")
	errAlgorithm     = errors.New("algorithm not allowed")
	errCrit          = errors.New("unsupported critical header")
	errType          = errors.New("token type not accepted")
	errKid           = errors.New("invalid key id")
	errNoKey         = errors.New("no key for this token")
	errUnavailable   = errors.New("keys not loaded yet")
	errEmptyToken    = errors.New("empty token")
	errSignature     = errors.New("invalid signature")
	errExpired       = errors.New("token expired")
	errNotYetValid   = errors.New("token not valid yet")
	errIssuedFuture  = errors.New("token issued in the future")
	errClaimType     = errors.New("invalid time claim")
	errMissingExp    = errors.New("token has no expiry")
	errIssuer        = errors.New("issuer not accepted")
	errAudience      = errors.New("audience not accepted")
	errLifetime      = errors.New("token lifetime too long")
	errMissingClaim  = errors.New("required claim missing")
	errClaimControl  = errors.New("claim value holds a control character")
	errScope         = errors.New("insufficient scope")
	errClaimMismatch = errors.New("claim requirement not met")
)

var b64 = base64.RawURLEncoding.Strict()

// header is the part of a JOSE header this module reads. jku, x5u, jwk and
// x5c are never read, so never followed.
type header struct {
	alg     string
	kid     string
	hasKid  bool
	typ     string
	hasTyp  bool
	hasCrit bool
}

// maxHeaderMembers bounds the members of a JOSE header.
const maxHeaderMembers = 32

// decodeHeader decodes a JOSE header strictly: one JSON object whose member
// names are matched exactly (case-sensitive: "ALG" is not "alg"), with no
// member name twice (RFC 7515 §4: a duplicate is refused rather than the
// last one taken, escaped spellings included), and alg, kid and typ
// strings when present. encoding/json checks the syntax; the walk below
// only finds the members of an object known to be valid.
func decodeHeader(data []byte) (header, error) {
	var h header
	if !json.Valid(data) {
		return h, errMalformed
	}
	i := skipSpace(data, 0)
	if i == len(data) || data[i] != '{' {
		return h, errMalformed
	}
	var seen [maxHeaderMembers][]byte
	n := 0
	i = skipSpace(data, i+1)
	for i < len(data) && data[i] != '}' {
		if data[i] == ',' {
			i = skipSpace(data, i+1)
		}
		end := skipString(data, i)
		name, err := memberName(data[i:end])
		if err != nil || n == maxHeaderMembers {
			return h, errMalformed
		}
		for _, other := range seen[:n] {
			if bytes.Equal(other, name) {
				return h, errMalformed
			}
		}
		seen[n] = name
		n++
		i = skipSpace(data, end)
		i = skipSpace(data, i+1) // the colon
		end = skipValue(data, i)
		value := data[i:end]
		switch string(name) {
		case "alg":
			h.alg, _, err = stringMember(value)
		case "kid":
			h.kid, h.hasKid, err = stringMember(value)
		case "typ":
			h.typ, h.hasTyp, err = stringMember(value)
		case "crit":
			h.hasCrit = true
		}
		if err != nil {
			return h, errMalformed
		}
		i = skipSpace(data, end)
	}
	return h, nil
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just after the string starting at data[i]
// (a quote, in valid JSON).
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// skipValue returns the index just after the value starting at data[i],
// in valid JSON.
func skipValue(data []byte, i int) int {
	depth := 0
	for i < len(data) {
		switch c := data[i]; c {
		case '"':
			i = skipString(data, i)
			if depth == 0 {
				return i
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',':
			if depth == 0 {
				return i
			}
		case ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
		i++
	}
	return i
}

// memberName returns a member name's text: the bytes between the quotes,
// or, when it holds escapes, its decoded form.
func memberName(quoted []byte) ([]byte, error) {
	if len(quoted) < 2 || quoted[0] != '"' || quoted[len(quoted)-1] != '"' {
		return nil, errMalformed
	}
	if name := quoted[1 : len(quoted)-1]; bytes.IndexByte(name, '\\') < 0 && utf8.Valid(name) {
		return name, nil
	}
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return nil, errMalformed
	}
	return []byte(s), nil
}

// stringMember decodes a member that must be a string or null (absent).
func stringMember(value []byte) (string, bool, error) {
	switch {
	case string(value) == "null":
		return "", false, nil
	case len(value) >= 2 && value[0] == '"' && bytes.IndexByte(value, '\\') < 0 && utf8.Valid(value):
		return string(value[1 : len(value)-1]), true, nil
	case len(value) > 0 && value[0] == '"':
		var s string
		if err := json.Unmarshal(value, &s); err != nil {
			return "", false, errMalformed
		}
		return s, true, nil
	}
	return "", false, errMalformed
}

// staticKeySet is a fixed list of keys.
type staticKeySet []verificationKey

func (s staticKeySet) candidates(a alg, kid string, hasKid bool, dst []verificationKey) []verificationKey {
	for _, k := range s {
		if !k.algs.has(a) {
			continue
		}
		if k.kid != "" && hasKid && k.kid != kid {
			continue
		}
		dst = append(dst, k)
	}
	return dst
}

// verifier checks a compact JWS and its claims. It holds no per-request
// state and is safe for concurrent use.
type verifier struct {
	static      staticKeySet
	remote      []*remoteKeySet
	allowed     algSet
	validator   *jwt.Validator
	issuers     []string
	audiences   []string
	maxLifetime time.Duration
	require     []string
	types       []string
	leeway      time.Duration
	now         func() time.Time
}

// verifierConfig is what a verifier checks.
type verifierConfig struct {
	keys        staticKeySet
	remote      []*remoteKeySet
	allowed     algSet // algorithms any key may use
	leeway      time.Duration
	maxLifetime time.Duration // 0: no limit
	issuers     []string      // accepted iss; empty: any
	audiences   []string      // one must be in aud; empty: aud not checked
	require     []string      // claim paths that must be present
	types       []string      // accepted typ; empty: any
	allowNoExp  bool
	now         func() time.Time
}

func newVerifier(c verifierConfig) *verifier {
	if c.now == nil {
		c.now = time.Now
	}
	opts := []jwt.ParserOption{jwt.WithLeeway(c.leeway), jwt.WithIssuedAt(), jwt.WithTimeFunc(c.now)}
	if !c.allowNoExp {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	return &verifier{
		static:      c.keys,
		remote:      c.remote,
		allowed:     c.allowed,
		validator:   jwt.NewValidator(opts...),
		issuers:     c.issuers,
		audiences:   c.audiences,
		maxLifetime: c.maxLifetime,
		require:     c.require,
		types:       c.types,
		leeway:      c.leeway,
		now:         c.now,
	}
}

// tokenTimes are a verified token's time claims, read once.
type tokenTimes struct {
	exp, nbf, iat          time.Time
	hasExp, hasNbf, hasIat bool
}

func timesOf(claims jwt.MapClaims) tokenTimes {
	var t tokenTimes
	if d, _ := claims.GetExpirationTime(); d != nil {
		t.exp, t.hasExp = d.Time, true
	}
	if d, _ := claims.GetNotBefore(); d != nil {
		t.nbf, t.hasNbf = d.Time, true
	}
	if d, _ := claims.GetIssuedAt(); d != nil {
		t.iat, t.hasIat = d.Time, true
	}
	return t
}

// checkTimes checks the time claims of a token verified before against
// now, with leeway, as checkClaims does: they are the only rules whose
// outcome changes with time.
func (v *verifier) checkTimes(t *tokenTimes, now time.Time) error {
	if t.hasExp && !now.Before(t.exp.Add(v.leeway)) {
		return errExpired
	}
	if t.hasNbf && now.Before(t.nbf.Add(-v.leeway)) {
		return errNotYetValid
	}
	if t.hasIat && now.Before(t.iat.Add(-v.leeway)) {
		return errIssuedFuture
	}
	return nil
}

// splitCompact checks that token is a compact JWS (RFC 7515 §7.1): exactly
// three segments of base64url characters, no padding, no whitespace, a
// non-empty signature. Anything else — JSON serialisation, four or five
// segments (JWE), stray characters — is malformed.
func splitCompact(token string) (hdr, payload, sig string, err error) {
	if len(token) > maxTokenLen {
		return "", "", "", errTooLarge
	}
	dot1, dot2 := -1, -1
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '.':
			switch {
			case dot1 < 0:
				dot1 = i
			case dot2 < 0:
				dot2 = i
			default:
				return "", "", "", errMalformed
			}
		default:
			return "", "", "", errMalformed
		}
	}
	if dot2 < 0 || dot1 == 0 || dot2 == dot1+1 || dot2 == len(token)-1 {
		return "", "", "", errMalformed
	}
	return token[:dot1], token[dot1+1 : dot2], token[dot2+1:], nil
}

// verify checks the token and returns its claims. Numbers in the claims are
// json.Number, keeping their exact literal.
func (v *verifier) verify(ctx context.Context, token string) (jwt.MapClaims, error) {
	hdrB64, payloadB64, sigB64, err := splitCompact(token)
	if err != nil {
		return nil, err
	}
	hdrJSON, err := b64.DecodeString(hdrB64)
	if err != nil {
		return nil, errMalformed
	}
	h, err := decodeHeader(hdrJSON)
	if err != nil {
		return nil, err
	}
	a, ok := parseAlg(h.alg)
	if !ok || !v.allowed.has(a) {
		return nil, errAlgorithm
	}
	if h.hasCrit {
		// No JWS extension is understood here, so any crit — and a
		// malformed one all the more — is refused (RFC 7515 §4.1.11).
		return nil, errCrit
	}
	if len(v.types) > 0 && (!h.hasTyp || !typeAccepted(h.typ, v.types)) {
		return nil, errType
	}
	kid, hasKid := h.kid, h.hasKid
	if hasKid && !validKid(kid) {
		return nil, errKid
	}
	sig, err := b64.DecodeString(sigB64)
	if err != nil {
		return nil, errMalformed
	}
	payload, err := b64.DecodeString(payloadB64)
	if err != nil {
		return nil, errMalformed
	}
	// The claims are decoded before the signature is checked only to read
	// iss, which selects the issuer-bound key sets (RFC 8725 §3.8); nothing
	// of them is trusted before the signature holds.
	claims, err := decodeClaims(payload)
	if err != nil {
		return nil, err
	}
	iss, _ := claims["iss"].(string)

	var buf [4]verificationKey
	keys, unloaded, refetch := v.candidates(a, kid, hasKid, iss, buf[:0])
	if hasKid && !kidMatched(keys, kid) {
		if refetch {
			// An unknown kid may be a key rotated in since the last
			// fetch: refetch (rate-limited, coalesced) and look again.
			for _, rs := range v.remote {
				if rs.issuer == "" || rs.issuer == iss {
					rs.refreshForMiss(ctx)
				}
			}
			keys, unloaded, _ = v.candidates(a, kid, hasKid, iss, keys[:0])
		}
	}
	if len(keys) == 0 {
		if unloaded {
			return nil, errUnavailable
		}
		return nil, errNoKey
	}
	signingString := token[:len(hdrB64)+1+len(payloadB64)]
	method := algMethods[a]
	verified := false
	for _, k := range keys {
		if method.Verify(signingString, sig, k.key) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, errSignature
	}
	if err := v.checkClaims(claims); err != nil {
		return nil, err
	}
	return claims, nil
}

// candidates gathers the keys that may verify a token: static keys and the
// loaded remote sets that serve the token's issuer. unloaded reports that a
// remote set serving it has never loaded; refetch that one has.
func (v *verifier) candidates(a alg, kid string, hasKid bool, iss string, dst []verificationKey) (keys []verificationKey, unloaded, refetch bool) {
	dst = v.static.candidates(a, kid, hasKid, dst)
	for _, rs := range v.remote {
		if rs.issuer != "" && rs.issuer != iss {
			continue
		}
		ks := rs.current.Load()
		if ks == nil {
			unloaded = true
			continue
		}
		refetch = true
		dst = ks.candidates(a, kid, hasKid, dst)
	}
	return dst, unloaded, refetch
}

// generation changes whenever any remote key set changes.
func (v *verifier) generation() uint64 {
	var g uint64
	for _, rs := range v.remote {
		g += rs.generation.Load()
	}
	return g
}

// retryAfter is the soonest a remote set that has never loaded will be
// tried again, in whole seconds.
func (v *verifier) retryAfter() int {
	best := 0
	for _, rs := range v.remote {
		if !rs.loaded() {
			if s := rs.retryAfter(); best == 0 || s < best {
				best = s
			}
		}
	}
	return max(best, 1)
}

// decodeClaims decodes a JWT claims set, keeping numbers as json.Number.
func decodeClaims(payload []byte) (jwt.MapClaims, error) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims jwt.MapClaims
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return nil, errMalformed
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errMalformed // trailing data after the claims object
	}
	return claims, nil
}

// checkClaims applies the time rules (exp, nbf, iat as JSON numbers, with
// leeway), issuer, audience, lifetime and required claims.
func (v *verifier) checkClaims(claims jwt.MapClaims) error {
	for _, name := range [...]string{"exp", "nbf", "iat"} {
		if val, ok := claims[name]; ok {
			if _, isNum := val.(json.Number); !isNum {
				return errClaimType
			}
		}
	}
	if err := v.validator.Validate(claims); err != nil {
		switch {
		case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && claims["exp"] == nil:
			return errMissingExp
		case errors.Is(err, jwt.ErrTokenExpired):
			return errExpired
		case errors.Is(err, jwt.ErrTokenNotValidYet):
			return errNotYetValid
		case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
			return errIssuedFuture
		default:
			return errClaimType
		}
	}
	if len(v.audiences) > 0 {
		// Absent, empty ("aud": [], as some issuers send) or of the wrong
		// type: the audience is what is wrong, whatever its shape.
		aud, err := claims.GetAudience()
		if err != nil || !slices.ContainsFunc(aud, func(a string) bool { return contains(v.audiences, a) }) {
			return errAudience
		}
	}
	if len(v.issuers) > 0 {
		iss, _ := claims["iss"].(string)
		if !contains(v.issuers, iss) {
			return errIssuer
		}
	}
	if v.maxLifetime > 0 {
		exp, _ := claims.GetExpirationTime()
		if exp == nil {
			return errMissingExp
		}
		from := v.now()
		if iat, _ := claims.GetIssuedAt(); iat != nil {
			from = iat.Time
		}
		if exp.Sub(from) > v.maxLifetime {
			return errLifetime
		}
	}
	for _, path := range v.require {
		if val, ok := identity.Lookup(claims, path); !ok || val == nil {
			return errMissingClaim
		}
	}
	return nil
}

// typeAccepted compares a JOSE typ with the accepted ones, case-insensitively
// and ignoring an "application/" prefix (RFC 7515 §4.1.9).
func typeAccepted(typ string, accepted []string) bool {
	typ = trimApplication(typ)
	for _, a := range accepted {
		if strings.EqualFold(typ, trimApplication(a)) {
			return true
		}
	}
	return false
}

func trimApplication(s string) string {
	if len(s) > len("application/") && strings.EqualFold(s[:len("application/")], "application/") {
		return s[len("application/"):]
	}
	return s
}

func kidMatched(keys []verificationKey, kid string) bool {
	for _, k := range keys {
		if k.kid == kid {
			return true
		}
	}
	return false
}

// maxKidLen bounds the length of a kid.
const maxKidLen = 256

// validKid reports whether a kid is acceptable as the lookup string it is:
// at most maxKidLen bytes, no control characters. Anything else ("/", "+",
// "=" of base64 kids included) is an opaque string, never a path.
func validKid(kid string) bool {
	return len(kid) <= maxKidLen && !hasControlOrTab(kid)
}

// hasControlOrTab reports whether s holds any C0 control character or DEL.
func hasControlOrTab(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	return slices.Contains(list, s)
}
