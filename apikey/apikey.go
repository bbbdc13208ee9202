// Package apikey implements the api_key handler (http.handlers.api_key):
// API keys for machine clients, stored only as SHA-256 digests, and the
// `caddy apikey` command.
package apikey

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
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

// Handler authenticates machine clients by API key. Keys are never stored
// in clear: each entry holds the SHA-256 digest of a key's exact bytes, and
// a presented key is looked up by its digest (so the answer's timing does
// not depend on how much of a key is right).
//
// The key is read from the X-API-Key header unless from_header or
// from_query lines say otherwise, and removed from the request before it
// goes on (unless keep_key). Every header named by a `header` line is
// deleted from the incoming request first, on every request the handler
// sees (in any casing, with `_` for `-`, from the headers and the
// trailers), then set only from the key's entry.
//
// Placeholders set on success:
//
//	{http.auth.user.id}            the entry's identity; the access log's user_id
//	{http.auth.user.key_id}        the entry's id
//	{http.auth.user.<claim.path>}  the entry's claims, by dot-path, resolved when used
//
// Claims are rendered as text as jwt_auth renders claims: strings as is,
// numbers as their exact JSON literal, booleans true/false, arrays of
// scalars joined with ", ", objects as compact JSON. An absent claim
// resolves to the empty string, as does every {http.auth.user.*} of an
// anonymous request let through by `optional`.
//
// Placeholder set on refusal:
//
//	{http.auth.api_key.error}  the reason (never the key or its digest)
//
// Responses, returned as errors so that `handle_errors` can shape the
// body; WWW-Authenticate is set before:
//
//	401 ApiKey realm="<realm>"                           no key
//	401 ApiKey realm="<realm>", error="invalid_key"      unknown, expired, not yet valid or disabled key, or a value mapped to a header holds a control character
//	400 ApiKey realm="<realm>", error="invalid_request"  keys in more than one place
type Handler struct {
	// Key store file: {"keys": [<entry>...]}, each entry as in `key`
	// (id, sha256, identity, claims, not_before, expires, disabled). Read
	// and checked at load (provision), never by the Caddyfile parser; a
	// reload reads it again. {env.*} placeholders are expanded at load.
	KeysFile string `json:"keys_file,omitempty"`

	// Inline key entries, beside those of keys_file. An id or a digest
	// may appear only once across both.
	Keys []Key `json:"key,omitempty"`

	// Headers the key is read from. Without any from_header or
	// from_query, the key is read from X-API-Key only; listing any
	// replaces that default.
	FromHeader []HeaderSource `json:"from_header,omitempty"`

	// Query parameters the key is read from (opt-in). Caddy's access log
	// records the original URI: filter the parameter out of it (`format
	// filter { request>uri query { delete <name> } }`).
	FromQuery []string `json:"from_query,omitempty"`

	// Request headers set from the key's entry for the upstream: header
	// name (any casing: x-consumer-id sets X-Consumer-Id) to field path:
	// id (the identity), key_id, or a claim path. Each named header is
	// always deleted from the incoming request first, in any casing and
	// with `_` for `-`; it is set only when the entry has the field.
	// Naming a header the key is read from is a config error.
	Headers map[string]string `json:"header,omitempty"`

	// Pass the key on to the upstream. Default: false, the key's header
	// or query parameter is removed (the other parameters going on byte
	// for byte).
	KeepKey bool `json:"keep_key,omitempty"`

	// A request without a key continues anonymously (no identity headers,
	// every {http.auth.user.*} empty). A bad key is still refused.
	Optional bool `json:"optional,omitempty"`

	// Realm of the WWW-Authenticate challenge, and the handler's name in
	// the admin API. Default: "restricted".
	Realm string `json:"realm,omitempty"`

	keys      map[[digestLen]byte]*entry
	entries   []*entry // config order, for the admin API
	sources   []identity.Source
	identity  identity.Headers
	challenge string // `ApiKey realm="..."`
	counters  *counters
	logger    *zap.Logger
	now       func() time.Time
	joined    bool
}

// HeaderSource is a request header a key is read from.
type HeaderSource struct {
	// Header name.
	Name string `json:"name"`
	// Scheme before the key, e.g. "ApiKey" in `Authorization: ApiKey
	// <key>`, compared case-insensitively and followed by a space. Empty:
	// the whole header value is the key.
	Prefix string `json:"prefix,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.api_key",
		New: func() caddy.Module { return new(Handler) },
	}
}

const (
	defaultRealm  = "restricted"
	defaultHeader = "X-Api-Key"
)

// Provision checks the configuration, then reads the key store and
// compiles every entry. Errors name the file and the entry, never a key
// or a digest.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	if h.Realm == "" {
		h.Realm = defaultRealm
	}
	if err := h.Validate(); err != nil {
		return err
	}
	h.sources = h.keySources()
	h.identity = identity.NewHeaders(h.Headers)
	h.keys = make(map[[digestLen]byte]*entry)
	h.entries = h.entries[:0]
	ids := map[string]string{}
	// add compiles entry k; name names it in errors (with the file), short
	// names it beside another entry.
	add := func(k *Key, name, short string) error {
		e, digest, err := compileKey(k, h.identity)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if other, dup := ids[k.ID]; dup {
			return fmt.Errorf("%s: duplicate id (also %s)", name, other)
		}
		if other, dup := h.keys[digest]; dup {
			return fmt.Errorf("%s: duplicate sha256 (same key as id %q)", name, other.id)
		}
		if e.refusal != nil {
			h.logger.Warn("api_key entry refused on every request: a value mapped to a header holds a control character",
				zap.String("key_id", e.id))
		}
		ids[k.ID] = short
		h.keys[digest] = e
		h.entries = append(h.entries, e)
		return nil
	}
	for i := range h.Keys {
		short := "key " + entryName(i, h.Keys[i].ID)
		if err := add(&h.Keys[i], short, short); err != nil {
			return err
		}
	}
	if h.KeysFile != "" {
		file := caddy.NewReplacer().ReplaceKnown(h.KeysFile, "")
		stored, err := readStore(file)
		if err != nil {
			return err
		}
		for i := range stored {
			short := entryName(i, stored[i].ID)
			if err := add(&stored[i], "keys_file "+file+": "+short, short); err != nil {
				return err
			}
		}
		if len(stored) == 0 {
			h.logger.Warn("api_key key store holds no key: every key is refused", zap.String("keys_file", file))
		}
	}
	var err error
	if h.counters, err = newCounters(ctx); err != nil {
		return err
	}
	h.challenge = `ApiKey realm="` + h.Realm + `"`
	registry.APIKeys.Join(h)
	h.joined = true
	return nil
}

// Cleanup takes the handler out of the admin API's view.
func (h *Handler) Cleanup() error {
	if h.joined {
		registry.APIKeys.Leave(h)
		h.joined = false
	}
	return nil
}

// keySources compiles the from_* lines; without any, the key is read from
// X-API-Key only.
func (h *Handler) keySources() []identity.Source {
	sources := make([]identity.Source, 0, len(h.FromHeader)+len(h.FromQuery))
	for _, s := range h.FromHeader {
		sources = append(sources, identity.Source{Kind: identity.FromHeader, Name: http.CanonicalHeaderKey(s.Name), Prefix: s.Prefix})
	}
	for _, q := range h.FromQuery {
		sources = append(sources, identity.Source{Kind: identity.FromQuery, Name: q})
	}
	if len(sources) == 0 {
		sources = []identity.Source{{Kind: identity.FromHeader, Name: defaultHeader}}
	}
	return sources
}

// Validate checks the configuration. It reads no file; Provision calls it
// before reading the key store.
func (h *Handler) Validate() error {
	if h.KeysFile == "" && len(h.Keys) == 0 {
		return errors.New("no keys: set keys_file or at least one key")
	}
	for _, s := range h.FromHeader {
		if !httpguts.ValidHeaderFieldName(s.Name) {
			return fmt.Errorf("from_header: invalid header name %q", s.Name)
		}
		if identity.HasControl(s.Prefix) || strings.ContainsAny(s.Prefix, " ,") {
			return fmt.Errorf("from_header %s: the prefix must be one word", s.Name)
		}
	}
	if slices.Contains(h.FromQuery, "") {
		return errors.New("from_query: empty parameter name")
	}
	if err := identity.CheckHeaders(h.Headers, "field path"); err != nil {
		return err
	}
	sources := h.keySources()
	for _, name := range slices.Sorted(maps.Keys(h.Headers)) {
		if src := identity.SourceHeader(sources, name); src != "" {
			// Identity headers are deleted from every request first: the
			// key would be gone before it is read.
			return fmt.Errorf("header %s: the key is read from %s; an identity header must be another header", name, src)
		}
	}
	if identity.HasControl(h.Realm) || strings.ContainsAny(h.Realm, "\"\\") {
		return errors.New("realm: must not hold quotes, backslashes or control characters")
	}
	return nil
}

// Refusal reasons, in {http.auth.api_key.error}.
var (
	errNoKey    = errors.New("no key")
	errManyKeys = errors.New("keys in more than one place")
	errUnknown  = errors.New("unknown key")
	errExpired  = errors.New("key expired")
	errNotYet   = errors.New("key not yet valid")
	errDisabled = errors.New("key disabled")
	errControl  = errors.New("a value of the key's entry mapped to a header holds a control character")
)

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	h.identity.Delete(r)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)

	key, src, err := identity.Extract(r, h.sources, true)
	if err != nil {
		return h.refuse(w, repl, http.StatusBadRequest, "invalid_request", errManyKeys, nil)
	}
	if key == "" {
		if h.Optional {
			h.counters.anonymous.Inc()
			repl.Map(identity.Anonymous)
			return next.ServeHTTP(w, r)
		}
		return h.refuse(w, repl, http.StatusUnauthorized, "", errNoKey, nil)
	}

	e := h.keys[digest(key)]
	if err := h.check(e); err != nil {
		return h.refuse(w, repl, http.StatusUnauthorized, "invalid_key", err, e)
	}

	h.identity.Set(r.Header, e.headerValues)
	// One provider serves {http.auth.user.id}, .key_id and the claims.
	repl.Map(e.placeholder)
	if !h.KeepKey {
		identity.Strip(r, src)
	}
	h.counters.allowed.Inc()
	if c := h.logger.Check(zapcore.DebugLevel, "key accepted"); c != nil {
		c.Write(zap.String("key_id", e.id), zap.String("user_id", e.identity))
	}
	return next.ServeHTTP(w, r)
}

// digest is the store's lookup key for a presented key.
func digest(key string) [digestLen]byte {
	// A stack buffer spares the conversion an allocation for keys of
	// usual length.
	var buf [128]byte
	return sha256.Sum256(append(buf[:0], key...))
}

// check says why a matched entry (or no entry) is refused now.
func (h *Handler) check(e *entry) error {
	switch {
	case e == nil:
		return errUnknown
	case e.disabled:
		return errDisabled
	case e.refusal != nil:
		return e.refusal
	}
	now := h.now()
	if !e.notBefore.IsZero() && now.Before(e.notBefore) {
		return errNotYet
	}
	if !e.expires.IsZero() && !now.Before(e.expires) {
		return errExpired
	}
	return nil
}

// refuse sets the challenge and {http.auth.api_key.error} and returns the
// error for Caddy's error handling. e is the matched entry, if any: its id
// (never secret) goes into the debug line.
func (h *Handler) refuse(w http.ResponseWriter, repl *caddy.Replacer, status int, code string, reason error, e *entry) error {
	challenge := h.challenge
	if code != "" {
		challenge += `, error="` + code + `"`
	}
	w.Header().Set("Www-Authenticate", challenge)
	repl.Set("http.auth.api_key.error", reason.Error())
	if errors.Is(reason, errNoKey) {
		h.counters.missing.Inc()
	} else {
		h.counters.invalid.Inc()
	}
	if c := h.logger.Check(zapcore.DebugLevel, "key refused"); c != nil {
		fields := []zap.Field{zap.Int("status", status), zap.String("reason", reason.Error())}
		if e != nil {
			fields = append(fields, zap.String("key_id", e.id))
		}
		c.Write(fields...)
	}
	return caddyhttp.Error(status, reason)
}

// AdminAPIKeys implements registry.APIKeySource: the entries in config
// order (inline keys, then the store's), never a digest.
func (h *Handler) AdminAPIKeys() (string, []registry.APIKeyEntry) {
	out := make([]registry.APIKeyEntry, len(h.entries))
	for i, e := range h.entries {
		out[i] = e.admin
	}
	return h.Realm, out
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ registry.APIKeySource       = (*Handler)(nil)
)
