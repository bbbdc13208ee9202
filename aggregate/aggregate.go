// Package aggregate provides the aggregate HTTP handler
// (http.handlers.aggregate, Caddyfile directive aggregate): it calls several
// JSON backends concurrently and merges their answers into one JSON envelope
// with a defined, deterministic shape and status policy.
package aggregate

import (
	"bytes"
	"context"
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
// `unreachable`, `invalid_json` or `too_large`; `status` is present whenever
// the backend answered. Upstream bodies of failed calls never reach the
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
	// The fragment is never sent. Required.
	URL string `json:"url"`

	// HTTP method of the backend request; no body is sent. Default GET.
	Method string `json:"method,omitempty"`

	// Extra request headers for this backend. Values may hold placeholders,
	// expanded per request; a value that expands to a control character
	// refuses the request with 400. They replace forwarded headers of the
	// same name.
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

	url      *urlTemplate
	headers  map[string][]headerTemplate
	private  bool
	target   []string
	nameJSON []byte
	fallback []byte
	metrics  backendMetrics
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

// Provision sets defaults, compiles the URL and header templates, registers
// the metrics and builds the handler's transport.
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
	for _, b := range h.Backends {
		if b == nil {
			return errors.New("null backend")
		}
		// The name is a metric label value and a span name.
		if !validName(b.Name) {
			return fmt.Errorf("backend %q: the name must be UTF-8 text without control characters", b.Name)
		}
		b.metrics = newBackendMetrics(b.Name)
		if b.Method == "" {
			b.Method = http.MethodGet
		}
		b.Method = strings.ToUpper(b.Method)
		var err error
		if b.url, err = compileURL(b.URL); err != nil {
			return fmt.Errorf("backend %q: %w", b.Name, err)
		}
		b.private = b.url.private
		b.headers = make(map[string][]headerTemplate, len(b.Header))
		for name, vals := range b.Header {
			name = http.CanonicalHeaderKey(name)
			for _, v := range vals {
				t := compileHeader(v)
				b.private = b.private || t.private
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
	h.transport = newTransport()
	h.cleanedUp = new(atomic.Bool)
	h.client = &http.Client{
		Transport: h.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	return nil
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
			if slices.Contains(b.target, "") {
				return fmt.Errorf("backend %q: target %q has an empty segment", b.Name, b.Target)
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

// Cleanup closes the idle connections of the handler's transport. Caddy
// runs it on reload without waiting for the old config's requests; those
// still served afterwards close their connections when they end (see
// ServeHTTP), so none stays idle in a transport nobody uses.
func (h *Handler) Cleanup() error {
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
	for i, b := range h.Backends {
		u, err := b.url.expand(repl)
		if err != nil {
			h.metrics.badRequest.Inc()
			return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("aggregate: backend %q: %w", b.Name, err))
		}
		hdr := make(http.Header, len(forwarded)+len(b.headers)+3)
		maps.Copy(hdr, forwarded)
		for name, tmpls := range b.headers {
			vals := make([]string, len(tmpls))
			for j, t := range tmpls {
				if vals[j], err = t.expand(repl); err != nil {
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
		calls[i].url, calls[i].header = u, hdr
		private = private || b.private
	}

	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.Timeout))
	defer cancel()
	var wg sync.WaitGroup
	for i := 1; i < len(calls); i++ {
		wg.Go(func() {
			h.callBackend(ctx, tracer, h.Backends[i], &calls[i])
		})
	}
	h.callBackend(ctx, tracer, h.Backends[0], &calls[0])
	wg.Wait()
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

// callBackend makes one backend call, in its own span when tracer is set, and
// counts it.
func (h *Handler) callBackend(ctx context.Context, tracer trace.Tracer, b *Backend, c *call) {
	start := time.Now()
	if tracer != nil {
		var span trace.Span
		ctx, span = startSpan(ctx, tracer, b, c.header)
		defer endSpan(span, &c.result)
	}
	h.fetch(ctx, b, c)
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
