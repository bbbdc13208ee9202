package jwtauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler verifies a JSON Web Token (RFC 7519) and hands the verified
// identity to the rest of the route.
//
// Every header named by a `header` mapping is deleted from the incoming
// request first, on every request the handler sees (in any casing and with
// `_` for `-`), then set only from verified claims: no client-sent identity
// header reaches an upstream.
//
// Placeholders set on success:
//
//	{http.auth.user.id}            the user_id claim (default sub); the access log's user_id
//	{http.auth.user.<claim.path>}  any claim, by dot-path, resolved when used
//
// A claim that is absent, null, or holds a control character resolves to
// the empty string; so does every {http.auth.user.*} of an anonymous request
// let through by `optional`.
//
// Claim values are rendered as text: strings as is, numbers as their exact
// JSON literal, booleans true/false, arrays of scalars joined with ", ",
// objects as compact JSON.
//
// Placeholder set on refusal:
//
//	{http.auth.jwt.error}  the reason (never the token or a key)
//
// Responses (RFC 6750), returned as errors so that `handle_errors` can
// shape the body; WWW-Authenticate is set before:
//
//	401 Bearer realm="<realm>"                           no token
//	401 Bearer realm="<realm>", error="invalid_token"    bad token, or a claim mapped to a header holds a control character
//	403 Bearer realm="<realm>", error="insufficient_scope"  valid token failing scope or claim rules
//	400 Bearer realm="<realm>", error="invalid_request"  tokens in more than one place
type Handler struct {
	// HMAC secret (HS256/384/512): the text's raw bytes. At least as long
	// as the hash (32 bytes for HS256); the HMAC algorithms the length
	// allows are implied. {env.*} and {file.*} placeholders are expanded
	// once, at load.
	Secret string `json:"secret,omitempty"`

	// PEM files holding public keys: SPKI ("PUBLIC KEY"), PKCS#1 ("RSA
	// PUBLIC KEY") or X.509 certificates; RSA (2048 bits or more, RS* and
	// PS*), EC P-256/P-384/P-521 (ES256/384/512) or Ed25519 (EdDSA). Every
	// key in every file is used. Read at load.
	PublicKeys []string `json:"public_key,omitempty"`

	// URLs of remote JWK Sets (RFC 7517). Each is fetched at load without
	// blocking start-up, refreshed on its Cache-Control max-age (clamped to
	// 1m..24h, 15m without one), refetched when a token names an unknown
	// kid (at most once per 5s per URL, concurrent misses sharing one
	// fetch), and kept when a refresh fails. Redirects are not followed;
	// a fetch has 10s and 1 MiB at most. While no set has ever loaded,
	// requests that need it get 503 with Retry-After. Sets are shared by
	// every handler naming the same URL and survive config reloads. Keys
	// without "alg" are pinned by key type and curve; weak keys, private
	// or symmetric keys, and keys whose "use" is not "sig" are skipped
	// with a warning. Keys from these URLs serve every accepted issuer.
	JWKSURLs []string `json:"jwks_url,omitempty"`

	// Local JWK Set files, read at load; the same key rules as jwks_url,
	// except that symmetric ("oct") keys are allowed.
	JWKSFiles []string `json:"jwks_file,omitempty"`

	// OpenID Connect issuers. The key set is found through
	// <issuer>/.well-known/openid-configuration (whose "issuer" must match)
	// and its jwks_uri, then handled as jwks_url. These keys verify only
	// tokens whose iss is that issuer (RFC 8725 §3.8), and the issuers are
	// added to the accepted issuers.
	OIDCIssuers []string `json:"oidc_issuer,omitempty"`

	// Allowlist of JWS algorithms. Default: what each key implies. Each key
	// is pinned to the algorithms its type implies, narrowed by this list;
	// a token whose alg is not allowed for the key verifying it is refused.
	// "none" is never allowed.
	Algorithms []string `json:"algorithms,omitempty"`

	// Accepted issuers: the token's iss must be one of them.
	Issuers []string `json:"issuer,omitempty"`

	// Accepted audiences: the token's aud must contain one of them.
	Audiences []string `json:"audience,omitempty"`

	// Clock skew tolerated for exp, nbf and iat. Default: 30s.
	Leeway *caddy.Duration `json:"leeway,omitempty"`

	// Longest lifetime accepted: exp minus iat (or minus now when the token
	// has no iat). Default: no limit.
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`

	// Claims (dot-paths) that must be present and not null. exp is always
	// required unless allow_no_exp is set.
	Require []string `json:"require,omitempty"`

	// Accept tokens without exp. Default: false (exp is required).
	AllowNoExp bool `json:"allow_no_exp,omitempty"`

	// Accepted JOSE typ values, e.g. "at+jwt" (compared case-insensitively,
	// "application/" prefix ignored). Default: any typ, or none.
	Types []string `json:"type,omitempty"`

	// Scopes that must all be granted, from the space-separated `scope`
	// claim or `scp` (string or array). Missing ones give 403.
	Scopes []string `json:"scope,omitempty"`

	// Claim rules: the claim at each dot-path must equal one of the values,
	// or, when it is an array, contain one of them. All rules must hold;
	// a failing one gives 403.
	Claims map[string][]string `json:"claim,omitempty"`

	// Headers the token is read from. Without any from_header,
	// from_cookie or from_query, the token is read from
	// `Authorization: Bearer` only (scheme case-insensitive); listing any
	// replaces that default.
	FromHeader []HeaderSource `json:"from_header,omitempty"`

	// Cookies the token is read from.
	FromCookie []string `json:"from_cookie,omitempty"`

	// Query parameters the token is read from.
	FromQuery []string `json:"from_query,omitempty"`

	// Claim (dot-path) that identifies the user: {http.auth.user.id} and
	// the access log's user_id. Default: sub.
	UserID string `json:"user_id,omitempty"`

	// Request headers set from claims for the upstream: header name to
	// claim dot-path. Each named header is always deleted from the
	// incoming request first; it is set only when the verified token has
	// the claim.
	Headers map[string]string `json:"header,omitempty"`

	// Remove the token (its header, cookie or query parameter) from the
	// request before it goes on.
	StripToken bool `json:"strip_token,omitempty"`

	// A request without a token continues anonymously (no identity
	// headers, no placeholders). A bad token is still refused.
	Optional bool `json:"optional,omitempty"`

	// A CORS preflight (OPTIONS with Origin and
	// Access-Control-Request-Method) passes without a token.
	AllowPreflight bool `json:"allow_preflight,omitempty"`

	// Realm of the WWW-Authenticate challenge. Default: "restricted".
	Realm string `json:"realm,omitempty"`

	verifier    *verifier
	cache       *tokenCache
	poolKeys    []string
	sources     []source
	headerNames []string // canonical names of the identity headers
	challenge   string   // `Bearer realm="..."`
	logger      *zap.Logger
	now         func() time.Time
}

// HeaderSource is a request header a token is read from.
type HeaderSource struct {
	// Header name.
	Name string `json:"name"`
	// Scheme before the token, e.g. "Bearer", compared case-insensitively
	// and followed by a space. Empty: the whole header value is the token.
	Prefix string `json:"prefix,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.jwt_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

const (
	defaultLeeway = 30 * time.Second
	defaultRealm  = "restricted"
)

// Provision loads the keys and compiles the rules.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	if h.UserID == "" {
		h.UserID = "sub"
	}
	if h.Realm == "" {
		h.Realm = defaultRealm
	}
	leeway := defaultLeeway
	if h.Leeway != nil {
		leeway = time.Duration(*h.Leeway)
	}

	allowed, err := parseAlgSet(h.Algorithms)
	if err != nil {
		return fmt.Errorf("algorithms: %w", err)
	}
	repl := caddy.NewReplacer()
	secret := repl.ReplaceKnown(h.Secret, "")
	if h.Secret != "" && secret == "" {
		return errors.New("secret: placeholder expanded to an empty secret")
	}
	keys, err := staticKeys(secret, h.PublicKeys, allowed)
	if err != nil {
		return err
	}
	for _, f := range h.JWKSFiles {
		fileKeys, skipped, err := loadJWKSFile(f)
		if err != nil {
			return fmt.Errorf("jwks_file: %w", err)
		}
		for _, msg := range skipped {
			h.logger.Warn("jwks_file key skipped", zap.String("file", f), zap.String("reason", msg))
		}
		kept := 0
		for _, k := range fileKeys {
			if k.algs &= allowed; k.algs != 0 {
				keys = append(keys, k)
				kept++
			}
		}
		if kept == 0 {
			return fmt.Errorf("jwks_file %s: no key allows any of algorithms", f)
		}
	}
	var union algSet
	for _, k := range keys {
		union |= k.algs
	}
	if err := jwtMetrics.register(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	var remote []*remoteKeySet
	for _, u := range h.JWKSURLs {
		rs, err := h.loadRemote("jwks:"+u, "", u)
		if err != nil {
			return err
		}
		remote = append(remote, rs)
	}
	for _, iss := range h.OIDCIssuers {
		rs, err := h.loadRemote("oidc:"+iss, iss, "")
		if err != nil {
			return err
		}
		remote = append(remote, rs)
	}
	if len(remote) > 0 {
		union |= allowed
	}
	issuers := append(append([]string(nil), h.Issuers...), h.OIDCIssuers...)
	h.verifier = newVerifier(staticKeySet(keys), union, leeway, time.Duration(h.MaxLifetime),
		issuers, h.Audiences, h.Require, h.Types, h.AllowNoExp, h.now)
	h.verifier.remote = remote
	h.cache = newTokenCache()

	h.sources = h.sources[:0]
	for _, s := range h.FromHeader {
		h.sources = append(h.sources, source{kind: sourceHeader, name: http.CanonicalHeaderKey(s.Name), prefix: s.Prefix})
	}
	for _, c := range h.FromCookie {
		h.sources = append(h.sources, source{kind: sourceCookie, name: c})
	}
	for _, q := range h.FromQuery {
		h.sources = append(h.sources, source{kind: sourceQuery, name: q})
	}
	if len(h.sources) == 0 {
		h.sources = []source{{kind: sourceHeader, name: "Authorization", prefix: "Bearer"}}
	}
	h.headerNames = h.headerNames[:0]
	for name := range h.Headers {
		h.headerNames = append(h.headerNames, http.CanonicalHeaderKey(name))
	}
	h.challenge = `Bearer realm="` + strings.ReplaceAll(strings.ReplaceAll(h.Realm, `\`, `\\`), `"`, `\"`) + `"`
	return nil
}

// loadRemote takes a remote key set from the pool, starting it when no
// other handler (of this config or the previous one) holds it.
func (h *Handler) loadRemote(poolKey, issuer, url string) (*remoteKeySet, error) {
	val, _, err := remoteSets.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		return newRemoteKeySet(issuer, url, h.logger, jwtMetrics), nil
	})
	if err != nil {
		return nil, err
	}
	h.poolKeys = append(h.poolKeys, poolKey)
	return val.(*remoteKeySet), nil
}

// Cleanup releases the remote key sets; the last user stops their
// refresh.
func (h *Handler) Cleanup() error {
	for _, k := range h.poolKeys {
		_, _ = remoteSets.Delete(k)
	}
	h.poolKeys = nil
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.Secret == "" && len(h.PublicKeys) == 0 && len(h.JWKSURLs) == 0 && len(h.JWKSFiles) == 0 && len(h.OIDCIssuers) == 0 {
		return errors.New("no key: set at least one of secret, public_key, jwks_url, jwks_file, oidc_issuer")
	}
	for _, u := range append(append([]string(nil), h.JWKSURLs...), h.OIDCIssuers...) {
		if err := checkHTTPURL(u); err != nil {
			return err
		}
	}
	if _, err := parseAlgSet(h.Algorithms); err != nil {
		return fmt.Errorf("algorithms: %w", err)
	}
	if h.Leeway != nil && *h.Leeway < 0 {
		return errors.New("leeway must not be negative")
	}
	if h.MaxLifetime < 0 {
		return errors.New("max_lifetime must not be negative")
	}
	for name, path := range h.Headers {
		if !validHeaderName(name) {
			return fmt.Errorf("header: invalid header name %q", name)
		}
		if path == "" {
			return fmt.Errorf("header %s: empty claim path", name)
		}
	}
	for _, s := range h.FromHeader {
		if !validHeaderName(s.Name) {
			return fmt.Errorf("from_header: invalid header name %q", s.Name)
		}
	}
	for path, values := range h.Claims {
		if path == "" || len(values) == 0 {
			return fmt.Errorf("claim %q: needs a path and at least one value", path)
		}
	}
	if hasControl(h.Realm) || strings.ContainsAny(h.Realm, "\"\\") {
		return errors.New("realm: must not hold quotes, backslashes or control characters")
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.deleteIdentityHeaders(r.Header)

	if h.AllowPreflight && r.Method == http.MethodOptions &&
		r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != "" {
		jwtMetrics.verifications.WithLabelValues("preflight").Inc()
		return next.ServeHTTP(w, r)
	}

	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)

	token, src, err := h.extract(r)
	if err != nil {
		return h.refuse(w, repl, http.StatusBadRequest, "invalid_request", err)
	}
	if token == "" {
		if h.Optional {
			// Anonymous: every {http.auth.user.*} is known and empty.
			jwtMetrics.verifications.WithLabelValues("anonymous").Inc()
			repl.Map(userClaims(nil).placeholder)
			return next.ServeHTTP(w, r)
		}
		return h.refuse(w, repl, http.StatusUnauthorized, "", errNoToken)
	}

	claims, err := h.verify(r.Context(), token)
	if errors.Is(err, errUnavailable) {
		w.Header().Set("Retry-After", strconv.Itoa(h.verifier.retryAfter()))
		return h.refuse(w, repl, http.StatusServiceUnavailable, "", err)
	}
	if err != nil {
		return h.refuse(w, repl, http.StatusUnauthorized, "invalid_token", err)
	}
	if err := h.authorize(claims); err != nil {
		return h.refuse(w, repl, http.StatusForbidden, "insufficient_scope", err)
	}

	// Compute every identity value before touching the request, so that a
	// refusal leaves nothing half-set.
	userID := ""
	if v, ok := lookupClaim(claims, h.UserID); ok {
		userID, _ = claimText(v)
		if hasControl(userID) {
			return h.refuse(w, repl, http.StatusUnauthorized, "invalid_token", errClaimControl)
		}
	}
	var values [8]string
	headerValues := values[:0]
	for _, name := range h.headerNames {
		text := ""
		if v, ok := lookupClaim(claims, h.Headers[name]); ok {
			text, _ = claimText(v)
			if hasControl(text) {
				return h.refuse(w, repl, http.StatusUnauthorized, "invalid_token", errClaimControl)
			}
		}
		headerValues = append(headerValues, text)
	}
	for i, name := range h.headerNames {
		if headerValues[i] != "" {
			r.Header.Set(name, headerValues[i])
		}
	}

	repl.Set("http.auth.user.id", userID)
	repl.Map(userClaims(claims).placeholder)

	if h.StripToken {
		stripToken(r, src)
	}
	jwtMetrics.verifications.WithLabelValues("ok").Inc()
	if c := h.logger.Check(zapcore.DebugLevel, "token verified"); c != nil {
		c.Write(zap.String("user_id", userID))
	}
	return next.ServeHTTP(w, r)
}

var errNoToken = errors.New("no token")

// verify checks a token through the verified-token cache: a token verified
// before under the same keys only has its claims (time claims included)
// checked again.
func (h *Handler) verify(ctx context.Context, token string) (jwt.MapClaims, error) {
	key := tokenKey(token)
	gen := h.verifier.generation()
	now := h.now()
	if claims, ok := h.cache.get(&key, gen, now); ok {
		jwtMetrics.cache.WithLabelValues("hit").Inc()
		if err := h.verifier.checkClaims(claims); err != nil {
			return nil, err
		}
		return claims, nil
	}
	jwtMetrics.cache.WithLabelValues("miss").Inc()
	claims, err := h.verifier.verify(ctx, token)
	if err != nil {
		return nil, err
	}
	expires := now.Add(tokenCacheMaxTTL)
	if exp, _ := claims.GetExpirationTime(); exp != nil && exp.Before(expires) {
		expires = exp.Time
	}
	h.cache.put(&key, claims, gen, expires, now)
	return claims, nil
}

// authorize applies the scope and claim rules to verified claims.
func (h *Handler) authorize(claims jwt.MapClaims) error {
	if len(h.Scopes) > 0 {
		granted := tokenScopes(claims)
		for _, want := range h.Scopes {
			if !contains(granted, want) {
				return errScope
			}
		}
	}
	for path, accepted := range h.Claims {
		v, ok := lookupClaim(claims, path)
		if !ok {
			return errClaimMismatch
		}
		found := false
		for _, got := range claimValues(v) {
			if contains(accepted, got) {
				found = true
				break
			}
		}
		if !found {
			return errClaimMismatch
		}
	}
	return nil
}

// refuse sets the challenge and {http.auth.jwt.error} and returns the error
// for Caddy's error handling.
func (h *Handler) refuse(w http.ResponseWriter, repl *caddy.Replacer, status int, code string, reason error) error {
	challenge := h.challenge
	if code != "" {
		challenge += `, error="` + code + `"`
		if code == "insufficient_scope" && len(h.Scopes) > 0 {
			challenge += `, scope="` + strings.Join(h.Scopes, " ") + `"`
		}
	}
	w.Header().Set("Www-Authenticate", challenge)
	repl.Set("http.auth.jwt.error", reason.Error())
	jwtMetrics.verifications.WithLabelValues(resultLabel(reason)).Inc()
	if c := h.logger.Check(zapcore.DebugLevel, "token refused"); c != nil {
		c.Write(zap.Int("status", status), zap.String("reason", reason.Error()))
	}
	return caddyhttp.Error(status, reason)
}

// deleteIdentityHeaders removes every client-sent copy of the identity
// headers: any casing, and with `_` in place of `-` (which some servers
// behind the gateway treat as the same header).
func (h *Handler) deleteIdentityHeaders(hdr http.Header) {
	if len(h.headerNames) == 0 {
		return
	}
	for key := range hdr {
		for _, name := range h.headerNames {
			if sameHeaderName(key, name) {
				delete(hdr, key)
				break
			}
		}
	}
}

// sameHeaderName compares header names case-insensitively, treating `_` and
// `-` as equal.
func sameHeaderName(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (c < '0' || c > '9') && strings.IndexByte("!#$%&'*+-.^_`|~", c) < 0 {
			return false
		}
	}
	return true
}

// userClaims serves {http.auth.user.<path>} from verified claims, lazily.
type userClaims map[string]any

const userPlaceholderPrefix = "http.auth.user."

func (c userClaims) placeholder(key string) (any, bool) {
	if !strings.HasPrefix(key, userPlaceholderPrefix) {
		return nil, false
	}
	// Known but empty when the claim is absent, null or unfit for a header,
	// so that no literal placeholder text ever reaches an upstream.
	v, ok := lookupClaim(c, key[len(userPlaceholderPrefix):])
	if !ok {
		return "", true
	}
	text, ok := claimText(v)
	if !ok || hasControl(text) {
		return "", true
	}
	return text, true
}

// source is one place a token is read from.
type source struct {
	kind   sourceKind
	name   string
	prefix string
}

type sourceKind uint8

const (
	sourceHeader sourceKind = iota
	sourceCookie
	sourceQuery
)

var errManyTokens = errors.New("tokens in more than one place")

// extract returns the token and the source it came from. A token present in
// more than one place (or twice in one) is an invalid request (RFC 6750
// §2). A header of another scheme is no token.
func (h *Handler) extract(r *http.Request) (string, *source, error) {
	var token string
	var from *source
	found := func(t string, s *source) error {
		if from != nil {
			return errManyTokens
		}
		token, from = t, s
		return nil
	}
	var query url.Values
	for i := range h.sources {
		s := &h.sources[i]
		switch s.kind {
		case sourceHeader:
			for _, v := range r.Header[s.name] {
				t, ok := headerToken(v, s.prefix)
				if !ok {
					continue
				}
				if t == "" {
					return "", nil, errEmptyToken
				}
				if err := found(t, s); err != nil {
					return "", nil, err
				}
			}
		case sourceCookie:
			for _, c := range r.CookiesNamed(s.name) {
				if c.Value == "" {
					continue
				}
				if err := found(c.Value, s); err != nil {
					return "", nil, err
				}
			}
		case sourceQuery:
			if query == nil {
				query = r.URL.Query()
			}
			for _, v := range query[s.name] {
				if v == "" {
					continue
				}
				if err := found(v, s); err != nil {
					return "", nil, err
				}
			}
		}
	}
	return token, from, nil
}

// headerToken takes the token out of a header value: after "<prefix> "
// (prefix case-insensitive) or, without prefix, the whole value.
func headerToken(v, prefix string) (string, bool) {
	if prefix == "" {
		return strings.TrimSpace(v), true
	}
	if len(v) < len(prefix) || !strings.EqualFold(v[:len(prefix)], prefix) {
		return "", false
	}
	rest := v[len(prefix):]
	if rest == "" {
		return "", true
	}
	if rest[0] != ' ' {
		return "", false
	}
	return strings.TrimLeft(rest, " "), true
}

// stripToken removes the token's source from the request.
func stripToken(r *http.Request, s *source) {
	switch s.kind {
	case sourceHeader:
		r.Header.Del(s.name)
	case sourceCookie:
		cookies := r.Cookies()
		r.Header.Del("Cookie")
		kept := make([]string, 0, len(cookies))
		for _, c := range cookies {
			if c.Name != s.name {
				kept = append(kept, c.String())
			}
		}
		if len(kept) > 0 {
			r.Header.Set("Cookie", strings.Join(kept, "; "))
		}
	case sourceQuery:
		q := r.URL.Query()
		q.Del(s.name)
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)

// checkHTTPURL accepts an absolute http or https URL with a host.
func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", s)
	}
	return nil
}
