package jwtauth

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/identity"
	"github.com/caddygateway/caddy-gateway/internal/registry"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http/httpguts"

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
//	503 Retry-After: <seconds>                           a remote key set the token needs has never loaded
//
// With resource_metadata, every 401 challenge also carries
// resource_metadata="<url>" (RFC 9728 §5.1).
type Handler struct {
	// HMAC secret (HS256/384/512): the text's raw bytes. At least as long
	// as the hash (32 bytes for HS256); the HMAC algorithms the length
	// allows are implied. {env.*} and {file.*} placeholders are expanded
	// once, at load.
	Secret string `json:"secret,omitempty"`

	// PEM files holding public keys: SPKI ("PUBLIC KEY"), PKCS#1 ("RSA
	// PUBLIC KEY") or X.509 certificates; RSA (2048 bits or more, RS* and
	// PS*), EC P-256/P-384/P-521 (ES256/384/512) or Ed25519 (EdDSA and
	// Ed25519). Every key in every file is used. Read and checked at load
	// (provision), never by the Caddyfile parser.
	PublicKeys []string `json:"public_key,omitempty"`

	// URLs of remote JWK Sets (RFC 7517). Each is fetched at load without
	// blocking start-up, refreshed on its Cache-Control max-age (clamped to
	// 1m..24h; 1m for no-store or no-cache; 15m without any), refetched when a token names an unknown
	// kid (at most once per 5s per URL, concurrent misses sharing one
	// fetch), and kept when a refresh fails. Redirects are not followed;
	// a fetch has 10s and 1 MiB at most. While no set has ever loaded,
	// requests that need it get 503 with Retry-After. Sets are shared by
	// every handler naming the same URL and survive config reloads. Keys
	// without "alg" are pinned by key type and curve; weak keys, private
	// or symmetric keys, and keys whose "use" is not "sig" are skipped
	// (one warning line per fetch). Keys from these URLs serve every
	// accepted issuer. Fetching starts only once the config is valid.
	JWKSURLs []string `json:"jwks_url,omitempty"`

	// Local JWK Set files, read and checked at load (provision); the same
	// key rules as jwks_url, except that symmetric ("oct") keys are
	// allowed.
	JWKSFiles []string `json:"jwks_file,omitempty"`

	// OpenID Connect issuers. The key set is found through
	// <issuer>/.well-known/openid-configuration (whose "issuer" must match)
	// and its jwks_uri, then handled as jwks_url. These keys verify only
	// tokens whose iss is that issuer (RFC 8725 §3.8), and the issuers are
	// added to the accepted issuers.
	OIDCIssuers []string `json:"oidc_issuer,omitempty"`

	// Allowlist of JWS algorithms: HS256/384/512, RS256/384/512,
	// PS256/384/512, ES256/384/512, EdDSA and Ed25519 (RFC 9864; Ed25519
	// keys only). Default: what each key implies. Each key is pinned to the
	// algorithms its type (or JWK alg) implies, narrowed by this list; a
	// token whose alg is not allowed for the key verifying it is refused.
	// "none" is never allowed.
	Algorithms []string `json:"algorithms,omitempty"`

	// Accepted issuers: the token's iss must be one of them.
	Issuers []string `json:"issuer,omitempty"`

	// Accepted audiences: the token's aud must contain one of them; an
	// absent or empty aud is refused ("audience not accepted").
	Audiences []string `json:"audience,omitempty"`

	// Clock skew tolerated for exp, nbf and iat. Default: 30s; at most 1h.
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

	// Query parameters the token is read from. Caddy's access log records
	// the original URI: filter the parameter out of it (`format filter {
	// request>uri query { delete <name> } }`).
	FromQuery []string `json:"from_query,omitempty"`

	// Claim (dot-path) that identifies the user: {http.auth.user.id} and
	// the access log's user_id. Default: sub.
	UserID string `json:"user_id,omitempty"`

	// Request headers set from claims for the upstream: header name (any
	// casing: x-user-id sets X-User-Id) to claim dot-path. Each named
	// header is always deleted from the incoming request first, in any
	// casing and with `_` for `-`; it is set only when the verified token
	// has the claim. Naming a header the token is read from is a config
	// error.
	Headers map[string]string `json:"header,omitempty"`

	// Remove the token from the request before it goes on: its header, or
	// its cookie or query parameter only, the other cookies and parameters
	// going on byte for byte.
	StripToken bool `json:"strip_token,omitempty"`

	// A request without a token continues anonymously (no identity
	// headers, no placeholders). A bad token is still refused.
	Optional bool `json:"optional,omitempty"`

	// A CORS preflight (OPTIONS with Origin and
	// Access-Control-Request-Method) passes without a token.
	AllowPreflight bool `json:"allow_preflight,omitempty"`

	// Realm of the WWW-Authenticate challenge. Default: "restricted".
	Realm string `json:"realm,omitempty"`

	// URL of this resource's OAuth 2.0 Protected Resource Metadata (RFC
	// 9728), e.g. https://api.example.com/.well-known/oauth-protected-resource.
	// When set, every 401 challenge carries resource_metadata="<url>"
	// (RFC 9728 §5.1), which MCP clients and other OAuth clients follow
	// to find the authorization server. An absolute http(s) URL. Default:
	// none.
	ResourceMetadata string `json:"resource_metadata,omitempty"`

	verifier *verifier
	cache    *tokenCache
	poolKeys []string
	// admin API (admin.go): the local key sets, and the sets joined to
	// registry.JWTKeySets
	adminLocal localKeySets
	admin      []registry.JWTKeySetSource
	sources    []identity.Source
	identity   identity.Headers
	challenge  string // `Bearer realm="..."`
	metadata   string // `, resource_metadata="..."` or ""
	counters   *counters
	logger     *zap.Logger
	now        func() time.Time
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
	// maxLeeway bounds leeway: beyond it exp means little.
	maxLeeway    = time.Hour
	defaultRealm = "restricted"
)

// Provision checks the configuration, reads the keys and compiles the
// rules. Remote key sets are taken (and their fetching started) last, once
// everything else is known good.
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
	// Nothing is read, fetched or started for a config that is not valid.
	if err := h.Validate(); err != nil {
		return err
	}
	leeway := defaultLeeway
	if h.Leeway != nil {
		leeway = time.Duration(*h.Leeway)
	}
	allowed, _ := parseAlgSet(h.Algorithms) // checked by Validate

	keys, err := h.loadStaticKeys(allowed)
	if err != nil {
		return err
	}
	var union algSet
	for _, k := range keys {
		union |= k.algs
	}
	if len(h.JWKSURLs) > 0 || len(h.OIDCIssuers) > 0 {
		union |= allowed
	}
	if h.counters, err = newCounters(ctx); err != nil {
		return err
	}

	h.sources = h.tokenSources()
	h.identity = identity.NewHeaders(h.Headers)
	h.challenge = `Bearer realm="` + h.Realm + `"`
	h.metadata = ""
	if h.ResourceMetadata != "" {
		h.metadata = `, resource_metadata="` + h.ResourceMetadata + `"`
	}
	h.cache = newTokenCache()

	// Side effects last: a remote set starts fetching when first taken.
	var remote []*remoteKeySet
	for _, u := range h.JWKSURLs {
		remote = append(remote, h.loadRemote("jwks:"+u, "", u))
	}
	for _, iss := range h.OIDCIssuers {
		remote = append(remote, h.loadRemote("oidc:"+iss, iss, ""))
	}
	h.verifier = newVerifier(verifierConfig{
		keys:        staticKeySet(keys),
		remote:      remote,
		allowed:     union,
		leeway:      leeway,
		maxLifetime: time.Duration(h.MaxLifetime),
		issuers:     append(slices.Clip(h.Issuers), h.OIDCIssuers...),
		audiences:   h.Audiences,
		require:     h.Require,
		types:       h.Types,
		allowNoExp:  h.AllowNoExp,
		now:         h.now,
	})
	h.joinAdmin()
	return nil
}

// loadStaticKeys reads the secret (placeholders expanded), the PEM files
// and the local JWK Sets, each key pinned to its algorithms. Errors name
// the subdirective and the file.
func (h *Handler) loadStaticKeys(allowed algSet) ([]verificationKey, error) {
	secret := caddy.NewReplacer().ReplaceKnown(h.Secret, "")
	if h.Secret != "" && secret == "" {
		return nil, errors.New("secret: placeholder expanded to an empty secret")
	}
	keys, err := staticKeys(secret, h.PublicKeys, allowed)
	if err != nil {
		return nil, err
	}
	h.adminLocal = localKeySets{static: slices.Clip(keys)}
	for _, f := range h.JWKSFiles {
		fileKeys, skipped, err := loadJWKSFile(f)
		if err != nil {
			return nil, fmt.Errorf("jwks_file: %w", err)
		}
		if len(skipped) > 0 {
			h.logger.Warn("jwks_file keys skipped", zap.String("file", f),
				zap.Int("skipped", len(skipped)), zap.Strings("reasons", firstReasons(skipped)))
		}
		kept := 0
		for _, k := range fileKeys {
			if k.algs &= allowed; k.algs != 0 {
				keys = append(keys, k)
				kept++
			}
		}
		if kept == 0 {
			return nil, fmt.Errorf("jwks_file %s: no key allows any of algorithms", f)
		}
		h.adminLocal.files = append(h.adminLocal.files, adminFile{file: f, keys: slices.Clip(keys[len(keys)-kept:])})
	}
	return keys, nil
}

// loadRemote takes a remote key set from the pool, starting it when no
// other handler (of this config or the previous one) holds it.
func (h *Handler) loadRemote(poolKey, issuer, url string) *remoteKeySet {
	val, _, _ := remoteSets.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		return newRemoteKeySet(issuer, url, h.logger), nil
	})
	h.poolKeys = append(h.poolKeys, poolKey)
	rs := val.(*remoteKeySet)
	// The set logs with the newest config's logger.
	rs.logger.Store(h.logger)
	return rs
}

// Cleanup releases the remote key sets; the last user stops their
// refresh.
func (h *Handler) Cleanup() error {
	h.leaveAdmin()
	for _, k := range h.poolKeys {
		_, _ = remoteSets.Delete(k)
	}
	h.poolKeys = nil
	return nil
}

// Validate checks the configuration. It reads no file and starts nothing;
// Provision calls it before it does either.
func (h *Handler) Validate() error {
	if h.Secret == "" && len(h.PublicKeys) == 0 && len(h.JWKSURLs) == 0 && len(h.JWKSFiles) == 0 && len(h.OIDCIssuers) == 0 {
		return errors.New("no key: set at least one of secret, public_key, jwks_url, jwks_file, oidc_issuer")
	}
	for _, u := range h.JWKSURLs {
		if err := checkHTTPURL(u); err != nil {
			return fmt.Errorf("jwks_url: %w", err)
		}
	}
	for _, u := range h.OIDCIssuers {
		if err := checkHTTPURL(u); err != nil {
			return fmt.Errorf("oidc_issuer: %w", err)
		}
	}
	if _, err := parseAlgSet(h.Algorithms); err != nil {
		return fmt.Errorf("algorithms: %w", err)
	}
	if h.Leeway != nil && (*h.Leeway < 0 || time.Duration(*h.Leeway) > maxLeeway) {
		return fmt.Errorf("leeway: %s is outside 0..%s", time.Duration(*h.Leeway), maxLeeway)
	}
	if h.MaxLifetime < 0 {
		return errors.New("max_lifetime: must not be negative")
	}
	for _, s := range h.FromHeader {
		if !httpguts.ValidHeaderFieldName(s.Name) {
			return fmt.Errorf("from_header: invalid header name %q", s.Name)
		}
	}
	if slices.Contains(h.FromCookie, "") {
		return errors.New("from_cookie: empty cookie name")
	}
	if slices.Contains(h.FromQuery, "") {
		return errors.New("from_query: empty parameter name")
	}
	if err := identity.CheckHeaders(h.Headers, "claim path"); err != nil {
		return err
	}
	sources := h.tokenSources()
	for _, name := range slices.Sorted(maps.Keys(h.Headers)) {
		if src := identity.SourceHeader(sources, name); src != "" {
			// Identity headers are deleted from every request first: the
			// token would be gone before it is read.
			return fmt.Errorf("header %s: the token is read from %s; an identity header must be another header", name, src)
		}
	}
	for path, values := range h.Claims {
		if path == "" || len(values) == 0 {
			return fmt.Errorf("claim %q: needs a path and at least one value", path)
		}
	}
	if identity.HasControl(h.Realm) || strings.ContainsAny(h.Realm, "\"\\") {
		return errors.New("realm: must not hold quotes, backslashes or control characters")
	}
	if h.ResourceMetadata != "" {
		if err := checkHTTPURL(h.ResourceMetadata); err != nil || strings.ContainsAny(h.ResourceMetadata, "\"\\ ") {
			return fmt.Errorf("resource_metadata: %q is not an absolute http(s) URL fit for a challenge", h.ResourceMetadata)
		}
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.identity.Delete(r)

	if h.AllowPreflight && r.Method == http.MethodOptions &&
		r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != "" {
		h.counters.results[resultPreflight].Inc()
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
			h.counters.results[resultAnonymous].Inc()
			repl.Map(identity.Anonymous)
			return next.ServeHTTP(w, r)
		}
		return h.refuse(w, repl, http.StatusUnauthorized, "", errNoToken)
	}

	g, err := h.verify(r.Context(), token)
	if errors.Is(err, errUnavailable) {
		w.Header().Set("Retry-After", strconv.Itoa(h.verifier.retryAfter()))
		return h.refuse(w, repl, http.StatusServiceUnavailable, "", err)
	}
	if err != nil {
		return h.refuse(w, repl, http.StatusUnauthorized, "invalid_token", err)
	}
	if g.refusal != nil {
		return h.refuse(w, repl, g.status, g.code, g.refusal)
	}

	h.identity.Set(r.Header, g.headerValues)
	repl.Set("http.auth.user.id", g.userIDValue)
	repl.Map(g.placeholder)

	if h.StripToken {
		identity.Strip(r, src)
	}
	h.counters.results[resultOK].Inc()
	if c := h.logger.Check(zapcore.DebugLevel, "token verified"); c != nil {
		c.Write(zap.String("user_id", g.userID))
	}
	return next.ServeHTTP(w, r)
}

var errNoToken = errors.New("no token")

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
	if status == http.StatusUnauthorized {
		// RFC 9728 §5.1: where the client finds the authorization server.
		challenge += h.metadata
	}
	w.Header().Set("Www-Authenticate", challenge)
	repl.Set("http.auth.jwt.error", reason.Error())
	h.counters.results[resultOf(reason)].Inc()
	if c := h.logger.Check(zapcore.DebugLevel, "token refused"); c != nil {
		c.Write(zap.Int("status", status), zap.String("reason", reason.Error()))
	}
	return caddyhttp.Error(status, reason)
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
