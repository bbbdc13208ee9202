// Package aggregate provides the aggregate HTTP handler
// (http.handlers.aggregate, Caddyfile directive aggregate): it calls several
// JSON backends concurrently and merges their answers into one JSON envelope
// with a defined, deterministic shape and status policy.
package aggregate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/caddygateway/caddy-gateway/internal/metrics"
	"github.com/caddygateway/caddy-gateway/internal/registry"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler fans a request out to several JSON backends concurrently and
// answers with one JSON envelope (Content-Type: application/json):
//
//	{"data": {"<name>": <json or null>, ...},
//	 "errors": [{"backend": "<name>", "code": "<code>", "status": <upstream status>}]}
//
// `data` has one key per backend, in config order: the backend's JSON (or
// the part selected by `target`) on success; its `fallback`, or null, on
// failure. `errors` is present only when a backend failed, in config order;
// `code` is one of `timeout`, `status` (non-2xx, redirects included),
// `unreachable`, `invalid_json`, `too_large`, `dependency` (not called: a
// {backends.*} value it needs is missing, not a scalar, refused by the path
// rules, or comes from a backend that failed) or `circuit_open` (not
// called: its breaker is open); `status` is present whenever the backend
// answered. Upstream bodies of failed calls never reach the
// client. Any 2xx is a success; a 204, or a 2xx with an empty body, gives
// null.
//
// Statuses returned:
//
//   - 200 with `X-Aggregate-Complete: true` when every backend succeeded;
//   - 200 with `X-Aggregate-Complete: false` when only optional backends failed;
//   - 502 (envelope body, `X-Aggregate-Complete: false`) when a required
//     backend failed or every backend failed; 504 instead when every failure
//     was a timeout;
//   - 400 (as a handler error, for `handle_errors`) when a placeholder value
//     used in a URL path is empty, `.` or `..`, or holds a control character,
//     or an expanded `header` value holds one; no backend is called;
//   - 499 (as a handler error) when the client went away; every backend call
//     is canceled.
//
// Headers set: `Content-Type: application/json`, `X-Aggregate-Complete`, and
// `Cache-Control: private, no-store` when the response may differ between
// two clients asking for the same URL: a header listed in `forward_headers`
// was present on the request, or a backend URL or `header` value uses a
// placeholder other than those a shared cache keys on or that do not depend
// on the request at all: `{http.request.uri*}`, `{http.request.orig_uri*}`,
// `{http.request.method}`, `{http.request.orig_method}`,
// `{http.request.scheme}`, `{http.request.host}`, `{http.request.hostport}`,
// `{http.request.port}`, `{http.request.uuid}`, `{env.*}`, `{system.*}`, `{time.*}` (identity,
// client address, headers, cookies, TLS client data, variables and regexp
// captures are all private).
//
// Placeholders set: none. A backend URL or `header` value may use
// {backends.<name>.<field.path>}: the scalar at that path of another
// backend's JSON (after its `target`). Such a backend waits for the
// backends it names; every other backend starts at once.
//
// Backend requests are built fresh: they carry no body and only the headers
// named in `forward_headers` plus the backend's `header` lines (no
// User-Agent, no Accept-Encoding). Redirects are not followed. Connections
// are reused through one transport per handler.
//
// This handler is terminal: it never calls the next handler.
type Handler struct {
	// Backends to call, in the order their answers appear in `data`.
	// At least one is required.
	Backends []*Backend `json:"backends,omitempty"`

	// Request headers copied from the client request to every backend
	// request, all values, when present. No other client header reaches a
	// backend. Hop-by-hop headers, Host and Accept-Encoding are refused.
	ForwardHeaders []string `json:"forward_headers,omitempty"`

	// Total time budget for all backend calls, from the moment the calls
	// start until the last body is read. A backend still running when it
	// runs out fails with code `timeout`. Duration; default 3s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Maximum size of each backend's response body, in bytes. A longer
	// body fails that backend with code `too_large`; so does a declared
	// Content-Length above it, before any byte is read. Memory follows the
	// bytes actually received, never the declared length. In the
	// Caddyfile, a size such as `512KiB` or `2MB`. Default 1 MiB (1048576
	// bytes); at most 64 MiB (67108864 bytes), since every backend of every
	// request in flight may hold that much.
	MaxBody int64 `json:"max_body,omitempty"`

	forwardHeaders []string // canonical names
	chained        bool     // a backend uses {backends.*}
	poolKeys       []string // shared state this handler holds (breakers, caches)
	joined         bool     // in registry.Aggregates
	metrics        responseMetrics
	transport      *http.Transport
	client         *http.Client
	cleanedUp      *atomic.Bool // set by Cleanup: requests still served close their connections
	logger         *zap.Logger
}

// Backend is one upstream call of the aggregate handler.
type Backend struct {
	// Name of the backend: its key in `data`, its `backend` in `errors`,
	// its `backend` metric label and its span name. Required; unique within
	// the handler; UTF-8 text without control characters.
	Name string `json:"name"`

	// URL template of the backend: an absolute http or https URL.
	// Placeholders (`{http.auth.user.id}`, `{http.request.uri.query.id}`,
	// ...) are expanded per request and allowed in the path and the query
	// only; one in the scheme, userinfo, host, port or fragment is a
	// config error. A path value is escaped as exactly one path segment
	// (every byte but A-Z a-z 0-9 - . _ ~ is percent-encoded, `/`
	// included) and refused with 400 when empty, `.` or `..`, or when it
	// holds a control character. A query value is query-escaped (`&`, `=`,
	// `#`, `+` included). Unknown placeholders expand to the empty string.
	// Literal text is sent as written: a byte RFC 3986 does not allow
	// there (a space, a non-ASCII byte, a bare `%`) must be
	// percent-encoded in the template (`%20`).
	// `{backends.<name>.<field.path>}` takes the scalar at that path of
	// backend <name>'s JSON (after its `target`; object keys or array
	// indexes, dot-separated; no path: the value itself): a string's text,
	// a number's exact literal, `true` or `false`, escaped like any
	// placeholder. This backend then waits for <name>; when <name> failed,
	// or the value is missing, null, an object or an array, or refused by
	// the path rules, it is not called and gets code `dependency`. Unknown
	// names, self-references and cycles are config errors.
	// The fragment is never sent. Required.
	URL string `json:"url"`

	// HTTP method of the backend request; no body is sent. Default GET.
	Method string `json:"method,omitempty"`

	// Extra request headers for this backend. Values may hold placeholders,
	// expanded per request; a value that expands to a control character
	// refuses the request with 400 (one taken from another backend with
	// `{backends.*}`, see URL, gives code `dependency` instead). They
	// replace forwarded headers of the same name.
	Header http.Header `json:"header,omitempty"`

	// Time allowed for this backend (connect, headers and body), within the
	// total `timeout` budget: the smaller of the two applies. Duration;
	// default: the total budget.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// A required backend's failure fails the whole response (502, or 504 if
	// every failure was a timeout). Default false: the backend is optional
	// and its failure gives a partial 200.
	Required bool `json:"required,omitempty"`

	// Dot-separated path into the backend's JSON (object keys, or decimal
	// indexes into arrays, e.g. `user.addresses.0`); only that value goes
	// into `data`. A path that does not exist gives null. Default: the
	// whole document, spliced as is (validated, not re-encoded).
	Target string `json:"target,omitempty"`

	// JSON value put into `data` in place of null when this backend
	// fails. It must be valid JSON; placeholders are not expanded. The
	// failure is still listed in `errors`.
	Fallback json.RawMessage `json:"fallback,omitempty"`

	// Circuit breaker of this backend. Default: none.
	Breaker *BreakerConfig `json:"breaker,omitempty"`

	// Shared cache of this backend's responses. Default: none.
	Cache *CacheConfig `json:"cache,omitempty"`

	url        *urlTemplate
	headers    map[string][]headerTemplate
	private    bool
	target     []string
	nameJSON   []byte
	fallback   []byte
	metrics    backendMetrics
	deps       []int // backends whose values it uses
	dependedOn bool  // another backend uses its value
	hasDeps    bool  // its URL or a header value uses {backends.*}
	breaker    *breaker
	cache      *responseCache
}

// BreakerConfig is a backend's circuit breaker (Caddyfile:
// `breaker <failures> <cooldown>`). Its state is kept per backend and
// survives a reload that leaves the backend (and the handler's
// `forward_headers` and `max_body`) unchanged.
type BreakerConfig struct {
	// Failures in a row that open the breaker: a `timeout`, an
	// `unreachable` or a 5xx `status`. Any other outcome (a 4xx,
	// `invalid_json`, `too_large`, a success) ends the run; a call the
	// client abandoned counts neither way. An open breaker refuses calls
	// at once with code `circuit_open`. At least 1; required.
	Failures int `json:"failures"`

	// How long an open breaker refuses calls. After it, one trial call goes
	// through (the others still get `circuit_open`): its success closes
	// the breaker, its failure opens it for another cooldown. Duration;
	// required, positive.
	Cooldown caddy.Duration `json:"cooldown"`
}

// CacheConfig is a backend's shared response cache (Caddyfile:
// `cache [<max_entries>]`), by the rules of a shared cache (RFC 9111). A
// response is stored only when it is a 200 whose `Cache-Control` has
// `s-maxage` or `max-age` (s-maxage wins) and none of `no-store`,
// `no-cache`, `private`, and it has no `Set-Cookie` and no `Vary: *`; it
// is fresh for that lifetime less its `Age`, and never served stale. The
// key is the method, the resolved URL and every header value sent to the
// backend (forwarded headers, `header` lines) except `traceparent` and
// `tracestate`: one client's answer is never served to a request that
// sends anything different, and `Vary` is honoured by construction.
// Concurrent misses for one key make one backend call, which runs within
// the budget of the request that started it and ends early only when
// every request waiting for it has gone. Only GET and HEAD backends may
// have a cache. The cache survives a reload that leaves the backend (and
// the handler's `forward_headers` and `max_body`) unchanged.
type CacheConfig struct {
	// Entries kept at most; the least recently used goes first. Each
	// entry holds at most `max_body` bytes. Default 1000; at most 1048576.
	MaxEntries int `json:"max_entries,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.aggregate",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Defaults.
const (
	defaultTimeout = 3 * time.Second
	defaultMaxBody = 1 << 20
	maxMaxBody     = 64 << 20 // max_body ceiling: bodies are held in memory
)

// Provision sets defaults, compiles the URL and header templates and the
// dependency graph, checks the config, registers the metrics, takes the
// backends' shared breaker and cache state and builds the handler's
// transport.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := metrics.Register(ctx.GetMetricsRegistry(), collectors...); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	h.metrics = newResponseMetrics()
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultTimeout)
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	h.forwardHeaders = make([]string, len(h.ForwardHeaders))
	for i, name := range h.ForwardHeaders {
		h.forwardHeaders[i] = http.CanonicalHeaderKey(name)
	}
	names := make([]string, len(h.Backends))
	for i, b := range h.Backends {
		if b == nil {
			return errors.New("null backend")
		}
		names[i] = b.Name
		// The name is a metric label value and a span name.
		if !validName(b.Name) {
			return fmt.Errorf("backend %q: the name must be UTF-8 text without control characters", b.Name)
		}
		if b.Method == "" {
			b.Method = http.MethodGet
		}
		b.Method = strings.ToUpper(b.Method)
		if b.Cache != nil && b.Cache.MaxEntries == 0 {
			b.Cache.MaxEntries = defaultCacheEntries
		}
		b.metrics = newBackendMetrics(b)
		var err error
		if b.url, err = compileURL(b.URL); err != nil {
			return fmt.Errorf("backend %q: %w", b.Name, err)
		}
		b.private = b.url.private
		b.hasDeps = b.url.hasDeps
		b.headers = make(map[string][]headerTemplate, len(b.Header))
		for name, vals := range b.Header {
			name = http.CanonicalHeaderKey(name)
			for _, v := range vals {
				t := compileHeader(v)
				b.private = b.private || t.private
				b.hasDeps = b.hasDeps || t.pieces != nil
				b.headers[name] = append(b.headers[name], t)
			}
		}
		if b.Target != "" {
			b.target = strings.Split(b.Target, ".")
		}
		if b.nameJSON, err = json.Marshal(b.Name); err != nil {
			return err
		}
		if len(b.Fallback) > 0 {
			var c bytes.Buffer
			if err := json.Compact(&c, b.Fallback); err != nil {
				return fmt.Errorf("backend %q: fallback is not valid JSON: %w", b.Name, err)
			}
			if !utf8.Valid(c.Bytes()) {
				return fmt.Errorf("backend %q: fallback is not valid UTF-8", b.Name)
			}
			b.fallback = c.Bytes()
		}
	}
	if err := h.compileGraph(names); err != nil {
		return err
	}
	// Nothing is shared or started before the config is known to be good.
	if err := h.Validate(); err != nil {
		return err
	}
	for _, b := range h.Backends {
		if err := h.loadShared(b); err != nil {
			return err
		}
	}
	h.transport = newTransport()
	h.cleanedUp = new(atomic.Bool)
	h.client = &http.Client{
		Transport: h.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	registry.Aggregates.Join(h)
	h.joined = true
	return nil
}

// compileGraph builds the dependency graph of the {backends.*}
// placeholders, binds them to their backends and marks every backend that
// depends, directly or not, on an identity-derived one as identity-derived
// itself.
func (h *Handler) compileGraph(names []string) error {
	keys := make([][]string, len(h.Backends))
	for i, b := range h.Backends {
		k, err := backendDepKeys(b)
		if err != nil {
			return fmt.Errorf("backend %q: %w", b.Name, err)
		}
		keys[i] = k
		h.chained = h.chained || len(k) > 0
	}
	if !h.chained {
		return nil
	}
	deps, err := dependencies(names, keys)
	if err != nil {
		return err
	}
	for i, b := range h.Backends {
		b.deps = deps[i]
		for _, d := range b.deps {
			h.Backends[d].dependedOn = true
		}
		bindDeps(b.url.path, names)
		bindDeps(b.url.query, names)
		for _, tmpls := range b.headers {
			for _, t := range tmpls {
				bindDeps(t.pieces, names)
			}
		}
	}
	// The graph is acyclic: n rounds reach every chain's end.
	for range h.Backends {
		for _, b := range h.Backends {
			for _, d := range b.deps {
				b.private = b.private || h.Backends[d].private
			}
		}
	}
	return nil
}

// pool holds the breakers and caches that outlive a reload, keyed by the
// backend's identity.
var pool = caddy.NewUsagePool()

// identity names a backend for the shared state: its whole config and what
// the handler sends it. A reload that changes any of it starts afresh.
func (h *Handler) identity(b *Backend) string {
	js, _ := json.Marshal(struct {
		Backend        *Backend `json:"backend"`
		ForwardHeaders []string `json:"forward_headers"`
		MaxBody        int64    `json:"max_body"`
	}{b, h.forwardHeaders, h.MaxBody})
	sum := sha256.Sum256(js)
	return hex.EncodeToString(sum[:])
}

// loadShared takes (or creates) the backend's breaker and cache.
func (h *Handler) loadShared(b *Backend) error {
	if b.Breaker == nil && b.Cache == nil {
		return nil
	}
	id := h.identity(b)
	if c := b.Breaker; c != nil {
		key := "aggregate.breaker:" + id
		v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
			return newBreaker(b.Name, c.Failures, time.Duration(c.Cooldown), b.metrics.breaker), nil
		})
		if err != nil {
			return fmt.Errorf("backend %q: breaker: %w", b.Name, err)
		}
		h.poolKeys = append(h.poolKeys, key)
		b.breaker = v.(*breaker)
	}
	if c := b.Cache; c != nil {
		key := "aggregate.cache:" + id
		v, _, err := pool.LoadOrNew(key, func() (caddy.Destructor, error) {
			return newResponseCache(c.MaxEntries)
		})
		if err != nil {
			return fmt.Errorf("backend %q: cache: %w", b.Name, err)
		}
		h.poolKeys = append(h.poolKeys, key)
		b.cache = v.(*responseCache)
	}
	return nil
}

// AdminAggregate implements registry.AggregateSource: every backend's
// breaker and cache state, in config order.
func (h *Handler) AdminAggregate() []registry.AggregateBackend {
	out := make([]registry.AggregateBackend, len(h.Backends))
	for i, b := range h.Backends {
		out[i].Name = b.Name
		if b.breaker != nil {
			out[i].Breaker = b.breaker.state()
			out[i].Failures = int(b.breaker.run.Load())
		}
		if b.cache != nil {
			out[i].CacheEntries, out[i].CacheBytes = b.cache.stats()
			out[i].CacheMaxEntries = b.cache.max
		}
	}
	return out
}

// newTransport returns the transport shared by all backend calls of one
// handler: keep-alive connections reused across requests, enough idle
// connections per backend host for a fan-out under load, no proxy from the
// environment, no transparent compression (bodies are limited and parsed as
// sent). Connect and TLS handshake have no timeout of their own: each call's
// context, bounded by the backend's timeout and the total budget, is their
// deadline.
func newTransport() *http.Transport {
	dialer := &net.Dialer{KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    256,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		DisableCompression:     true,
	}
}

// headers that may not be forwarded or set: hop-by-hop, framing, Host, and
// Accept-Encoding (bodies are parsed as JSON, so they must not be encoded).
var forbiddenHeaders = map[string]bool{
	"Connection":          true,
	"Keep-Alive":          true,
	"Proxy-Connection":    true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
	"Host":                true,
	"Content-Length":      true,
	"Accept-Encoding":     true,
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if len(h.Backends) == 0 {
		return errors.New("at least one backend is required")
	}
	if h.Timeout < 0 {
		return errors.New("timeout must not be negative")
	}
	if h.MaxBody < 0 || h.MaxBody > maxMaxBody {
		return fmt.Errorf("max_body %d: must be between 1 byte and 64MiB (%d bytes)", h.MaxBody, maxMaxBody)
	}
	seen := make(map[string]bool, len(h.forwardHeaders))
	for _, name := range h.forwardHeaders {
		if !httpguts.ValidHeaderFieldName(name) {
			return fmt.Errorf("forward_headers: invalid header name %q", name)
		}
		if forbiddenHeaders[name] {
			return fmt.Errorf("forward_headers: %s cannot be forwarded", name)
		}
		if seen[name] {
			return fmt.Errorf("forward_headers: %s listed twice", name)
		}
		seen[name] = true
	}
	names := make(map[string]bool, len(h.Backends))
	for _, b := range h.Backends {
		if b.Name == "" {
			return errors.New("backend without a name")
		}
		if names[b.Name] {
			return fmt.Errorf("duplicate backend name %q", b.Name)
		}
		names[b.Name] = true
		if !validMethod(b.Method) {
			return fmt.Errorf("backend %q: invalid method %q", b.Name, b.Method)
		}
		if b.Timeout < 0 {
			return fmt.Errorf("backend %q: timeout must not be negative", b.Name)
		}
		if b.Target != "" {
			if slices.Contains(strings.Split(b.Target, "."), "") {
				return fmt.Errorf("backend %q: target %q has an empty segment", b.Name, b.Target)
			}
		}
		if c := b.Breaker; c != nil {
			if c.Failures < 1 {
				return fmt.Errorf("backend %q: breaker: failures must be at least 1", b.Name)
			}
			if c.Cooldown <= 0 {
				return fmt.Errorf("backend %q: breaker: cooldown must be positive", b.Name)
			}
		}
		if c := b.Cache; c != nil {
			if c.MaxEntries < 0 || c.MaxEntries > cacheMaxEntriesLimit {
				return fmt.Errorf("backend %q: cache: max_entries %d must be between 1 and %d", b.Name, c.MaxEntries, cacheMaxEntriesLimit)
			}
			if m := strings.ToUpper(b.Method); m != "" && m != http.MethodGet && m != http.MethodHead {
				return fmt.Errorf("backend %q: cache: only GET and HEAD responses are cached, not %s", b.Name, m)
			}
		}
		for name, vals := range b.headers {
			if !httpguts.ValidHeaderFieldName(name) {
				return fmt.Errorf("backend %q: invalid header name %q", b.Name, name)
			}
			if forbiddenHeaders[name] {
				return fmt.Errorf("backend %q: header %s cannot be set", b.Name, name)
			}
			for _, v := range vals {
				if !v.dynamic && !httpguts.ValidHeaderFieldValue(v.raw) {
					return fmt.Errorf("backend %q: invalid value for header %s", b.Name, name)
				}
			}
		}
	}
	return nil
}

// validName reports whether a backend name can be a metric label value and
// a span name: UTF-8 text without control characters.
func validName(name string) bool {
	return utf8.ValidString(name) && !strings.ContainsFunc(name, unicode.IsControl)
}

func validMethod(m string) bool {
	if m == "" || m == http.MethodConnect {
		return false
	}
	for i := range len(m) {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return true
}

// Cleanup leaves the admin registry, releases the handler's hold on the
// shared breakers and caches (a config that keeps a backend still holds
// them) and closes the idle connections of the handler's transport. Caddy
// runs it on reload without waiting for the old config's requests; those
// still served afterwards close their connections when they end (see
// ServeHTTP), so none stays idle in a transport nobody uses.
func (h *Handler) Cleanup() error {
	if h.joined {
		registry.Aggregates.Leave(h)
		h.joined = false
	}
	for _, key := range h.poolKeys {
		if _, err := pool.Delete(key); err != nil {
			h.logger.Error("releasing shared state", zap.Error(err))
		}
	}
	h.poolKeys = nil
	if h.transport != nil {
		h.cleanedUp.Store(true)
		h.transport.CloseIdleConnections()
	}
	return nil
}

// call is the per-request state of one backend call.
type call struct {
	url    string
	header http.Header
	result
	ttl time.Duration // with a cache: how long a 200 may be stored
}

// link is the per-request chain state of one backend of a handler with
// {backends.*} values (allocated only for such handlers): what prepare
// expanded, and the channel closed when the call is over, for the backends
// that wait for it.
type link struct {
	urlParts []string
	pending  []pendingHeader
	done     chan struct{}
}

// pendingHeader is a header value that waits for {backends.*} values.
type pendingHeader struct {
	name  string
	index int
	tmpl  headerTemplate
	parts []string
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// putBuf returns buf to the pool unless it grew large: a burst of big
// bodies must not stay pinned in memory.
func putBuf(buf *bytes.Buffer) {
	if buf.Cap() <= 64<<10 {
		bufPool.Put(buf)
	}
}

// noUserAgent keeps net/http from adding its default User-Agent.
var noUserAgent = []string{""}

// ServeHTTP calls every backend concurrently and writes the envelope.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)

	// Everything a backend receives is computed before any is called, so a
	// bad value refuses the request with no backend hit.
	private := false
	var forwarded http.Header
	for _, name := range h.forwardHeaders {
		if vals, ok := r.Header[name]; ok {
			if forwarded == nil {
				forwarded = make(http.Header, len(h.forwardHeaders))
			}
			forwarded[name] = vals
			private = true
		}
	}
	// With Caddy's tracing on, every call gets a child span (its trace
	// context is written in call); without, the client's trace context goes
	// on unchanged.
	tracer := requestTracer(r.Context())
	calls := make([]call, len(h.Backends))
	var links []link
	if h.chained {
		links = make([]link, len(h.Backends))
	}
	for i, b := range h.Backends {
		c := &calls[i]
		var err error
		if b.url.hasDeps {
			links[i].urlParts, err = b.url.prepare(repl)
		} else {
			c.url, err = b.url.expand(repl)
		}
		if err != nil {
			h.metrics.badRequest.Inc()
			return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("aggregate: backend %q: %w", b.Name, err))
		}
		hdr := make(http.Header, len(forwarded)+len(b.headers)+3)
		maps.Copy(hdr, forwarded)
		for name, tmpls := range b.headers {
			vals := make([]string, len(tmpls))
			for j, t := range tmpls {
				if t.pieces != nil {
					var parts []string
					parts, err = t.prepare(repl)
					links[i].pending = append(links[i].pending, pendingHeader{name: name, index: j, tmpl: t, parts: parts})
				} else {
					vals[j], err = t.expand(repl)
				}
				if err != nil {
					h.metrics.badRequest.Inc()
					return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("aggregate: backend %q: header %s: %w", b.Name, name, err))
				}
			}
			hdr[name] = vals
		}
		if tracer == nil {
			copyTraceHeaders(hdr, r.Header)
		}
		if _, ok := hdr["User-Agent"]; !ok {
			hdr["User-Agent"] = noUserAgent
		}
		c.header = hdr
		private = private || b.private
	}

	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.Timeout))
	defer cancel()
	if h.chained {
		h.callChained(ctx, tracer, calls, links)
	} else {
		var wg sync.WaitGroup
		for i := 1; i < len(calls); i++ {
			wg.Go(func() {
				h.callBackend(ctx, tracer, h.Backends[i], &calls[i])
			})
		}
		h.callBackend(ctx, tracer, h.Backends[0], &calls[0])
		wg.Wait()
	}
	if h.cleanedUp.Load() {
		// a request of a config already replaced: its connections
		// would otherwise sit idle until IdleConnTimeout
		h.transport.CloseIdleConnections()
	}

	results := make([]result, len(calls))
	for i := range calls {
		results[i] = calls[i].result
	}
	defer func() {
		for _, res := range results {
			if res.buf != nil {
				putBuf(res.buf)
			}
		}
	}()
	if err := r.Context().Err(); err != nil {
		// The client is gone: nobody reads the answer.
		h.metrics.clientGone.Inc()
		return caddyhttp.Error(499, fmt.Errorf("aggregate: client went away: %w", err))
	}

	out := bufPool.Get().(*bytes.Buffer)
	out.Reset()
	defer putBuf(out)
	sum := writeEnvelope(out, h.Backends, results)
	status, complete := sum.status(len(calls))
	h.metrics.envelope(status, complete)

	if c := h.logger.Check(zap.DebugLevel, "aggregate failures"); c != nil && sum.failed > 0 {
		fields := make([]zap.Field, 0, sum.failed)
		for i, res := range results {
			if res.code != "" {
				fields = append(fields, zap.String(h.Backends[i].Name, res.code))
			}
		}
		c.Write(fields...)
	}

	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(out.Len()))
	if complete {
		hdr.Set("X-Aggregate-Complete", "true")
	} else {
		hdr.Set("X-Aggregate-Complete", "false")
	}
	if private {
		hdr.Set("Cache-Control", "private, no-store")
	}
	w.WriteHeader(status)
	_, err := w.Write(out.Bytes())
	return err
}

// callChained runs the calls of a handler with dependent backends: every
// backend starts at once, and one that uses {backends.*} values first waits
// for the backends it names (each call ends by the total budget, so every
// wait does). A dependency that failed, or a value that cannot be used,
// gives code `dependency` without a call.
func (h *Handler) callChained(ctx context.Context, tracer trace.Tracer, calls []call, links []link) {
	for i, b := range h.Backends {
		if b.dependedOn {
			links[i].done = make(chan struct{})
		}
	}
	run := func(i int) {
		b, c := h.Backends[i], &calls[i]
		if links[i].done != nil {
			defer close(links[i].done)
		}
		for _, d := range b.deps {
			<-links[d].done
		}
		if b.hasDeps {
			if err := c.resolve(b, &links[i], calls); err != nil {
				c.code = codeDependency
				b.metrics.notCalled(codeDependency)
				if tracer != nil {
					_, span := startSpan(ctx, tracer, b, c.header)
					endSpan(span, &c.result)
				}
				return
			}
		}
		h.callBackend(ctx, tracer, b, c)
	}
	// Every backend but the last runs in a goroutine of its own; the last
	// runs here (whatever it waits for runs elsewhere, so this never
	// blocks a dependency).
	var wg sync.WaitGroup
	for i := range len(h.Backends) - 1 {
		wg.Go(func() { run(i) })
	}
	run(len(h.Backends) - 1)
	wg.Wait()
}

// resolve fills the URL and header values of c with the {backends.*}
// values of the finished calls it depends on.
func (c *call) resolve(b *Backend, l *link, calls []call) error {
	lookup := func(ref *depRef) (string, error) {
		dc := &calls[ref.dep]
		if dc.code != "" {
			return "", fmt.Errorf("%w: backend failed", errDependency)
		}
		return depValue(dc.value, ref.field)
	}
	if b.url.hasDeps {
		u, err := b.url.fill(l.urlParts, lookup)
		if err != nil {
			return err
		}
		c.url = u
	}
	for _, p := range l.pending {
		v, err := p.tmpl.fill(p.parts, lookup)
		if err != nil {
			return err
		}
		c.header[p.name][p.index] = v
	}
	return nil
}

// callBackend answers one backend, in its own span when tracer is set: from
// its cache when it has a fresh entry, else by a call (shared by every
// concurrent request of the same key when the backend has a cache).
func (h *Handler) callBackend(ctx context.Context, tracer trace.Tracer, b *Backend, c *call) {
	var span trace.Span
	if tracer != nil {
		ctx, span = startSpan(ctx, tracer, b, c.header)
		defer endSpan(span, &c.result)
	}
	if b.cache == nil {
		h.guardedFetch(ctx, b, c)
		return
	}
	key := makeCacheKey(b.Method, c.url, c.header)
	if e := b.cache.get(key, time.Now()); e != nil {
		b.metrics.hits.Inc()
		c.status, c.value = http.StatusOK, e.value
		if span != nil {
			span.SetAttributes(attrCacheHit)
		}
		return
	}
	b.metrics.misses.Inc()
	if span != nil {
		span.SetAttributes(attrCacheMiss)
	}
	url, header := c.url, c.header
	res := b.cache.do(ctx, key, func(ctx context.Context) flightResult {
		fc := call{url: url, header: header}
		h.guardedFetch(ctx, b, &fc)
		r := flightResult{status: fc.status, code: fc.code}
		if fc.code == "" {
			r.value = bytes.Clone(fc.value)
			if fc.ttl > 0 && fc.status == http.StatusOK {
				b.cache.put(key, r.value, fc.ttl)
			}
		}
		if fc.buf != nil {
			putBuf(fc.buf)
		}
		return r
	})
	c.status, c.code, c.value = res.status, res.code, res.value
}

// guardedFetch makes one backend call through the backend's breaker, if it
// has one, and counts it.
func (h *Handler) guardedFetch(ctx context.Context, b *Backend, c *call) {
	start := time.Now()
	if b.breaker == nil {
		h.fetch(ctx, b, c)
		b.metrics.observe(c.code, time.Since(start))
		return
	}
	report := b.breaker.allow()
	if report == nil {
		c.code = codeCircuitOpen
		b.metrics.notCalled(codeCircuitOpen)
		return
	}
	h.fetch(ctx, b, c)
	if c.code == codeStatus && c.status >= 500 {
		report(codeStatus5xx)
	} else {
		report(c.code)
	}
	b.metrics.observe(c.code, time.Since(start))
}

// fetch makes one backend call and records its result in c.
func (h *Handler) fetch(ctx context.Context, b *Backend, c *call) {
	if b.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(b.Timeout))
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, b.Method, c.url, nil)
	if err != nil {
		c.code = codeUnreachable
		return
	}
	req.Header = c.header
	resp, err := h.client.Do(req)
	if err != nil {
		c.code = failureCode(ctx, err)
		return
	}
	defer resp.Body.Close()
	c.status = resp.StatusCode
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		c.code = codeStatus
		// Read a little so that the connection can be reused; the body
		// itself is never passed on.
		_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
		return
	}
	if b.cache != nil && resp.StatusCode == http.StatusOK {
		c.ttl = freshness(resp.Header)
	}
	if resp.StatusCode == http.StatusNoContent || b.Method == http.MethodHead {
		c.value = jsonNull
		return
	}
	if resp.ContentLength > h.MaxBody {
		c.code = codeTooLarge
		return
	}
	// Memory follows the bytes actually read, never the declared length:
	// a backend may declare a huge Content-Length and send two bytes.
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	c.buf = buf
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, h.MaxBody+1)); err != nil {
		c.code = failureCode(ctx, err)
		return
	}
	if int64(buf.Len()) > h.MaxBody {
		c.code = codeTooLarge
		return
	}
	v, ok := backendValue(buf.Bytes(), b.target)
	if !ok {
		c.code = codeInvalidJSON
		return
	}
	c.value = v
}

// failureCode classifies a transport or body read error.
func failureCode(ctx context.Context, err error) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return codeTimeout
	}
	if ctx.Err() != nil {
		return codeCanceled
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return codeTimeout
	}
	return codeUnreachable
}

// Interface guards
var (
	_ caddy.Module                = (*Handler)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
