// Package cors holds the cors handler (http.handlers.cors): cross-origin
// requests answered at the gateway, following the CORS protocol of the
// Fetch standard.
package cors

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults.
var (
	// DefaultMethods are the methods a preflight may ask for when
	// `methods` is not set.
	DefaultMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost}
	// DefaultHeaders are the request headers a preflight may ask for when
	// `headers` is not set.
	DefaultHeaders = []string{"Authorization", "Content-Type"}
)

// DefaultMaxAge is how long a browser may cache a preflight answer when
// `max_age` is not set.
const DefaultMaxAge = 5 * time.Minute

// Header names of the CORS protocol.
const (
	hdrOrigin                = "Origin"
	hdrVary                  = "Vary"
	hdrRequestMethod         = "Access-Control-Request-Method"
	hdrRequestHeaders        = "Access-Control-Request-Headers"
	hdrRequestPrivateNetwork = "Access-Control-Request-Private-Network"
	hdrAllowOrigin           = "Access-Control-Allow-Origin"
	hdrAllowCredentials      = "Access-Control-Allow-Credentials"
	hdrAllowMethods          = "Access-Control-Allow-Methods"
	hdrAllowHeaders          = "Access-Control-Allow-Headers"
	hdrAllowPrivateNetwork   = "Access-Control-Allow-Private-Network"
	hdrExposeHeaders         = "Access-Control-Expose-Headers"
	hdrMaxAge                = "Access-Control-Max-Age"
)

// Handler answers cross-origin requests (the CORS protocol of the Fetch
// standard) for the routes it is on.
//
// A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
// answered by the handler and never reaches a later handler (jwt_auth,
// throttle, an upstream): 204 No Content with Access-Control-Allow-Origin,
// -Allow-Methods, -Allow-Headers, -Max-Age (and -Allow-Credentials,
// -Allow-Private-Network when configured and asked for) when the origin,
// the method (GET, HEAD and POST always are) and every requested header are
// allowed; 403 Forbidden without any Access-Control-Allow-* header
// otherwise. An OPTIONS request without those headers is not a preflight
// and passes on.
//
// Every other request passes on. When its origin is allowed, every response
// to it carries Access-Control-Allow-Origin (the request's origin, or `*`
// for `origins *`), and Access-Control-Allow-Credentials and
// Access-Control-Expose-Headers when configured: the responses of later
// handlers, and also the errors they return (401 from jwt_auth, 429 from
// throttle, 502 from reverse_proxy or aggregate), whether Caddy writes
// them or a `handle_errors` route shapes them, so that browser code can
// read the status. A request from an origin that is not allowed, or without
// Origin, passes on and its response carries no CORS header: the browser
// keeps a disallowed origin's response from the page. CORS is not
// authorisation; the request still reaches the upstream.
//
// CORS headers set by later handlers or an upstream are replaced by the
// handler's (or removed, when there is no answer to give), so a browser
// never sees two answers. That holds for error pages too: when a later
// handler returns an error and the server has error routes
// (`handle_errors`), the handler runs them itself, as the server would
// (same request, placeholders and original URI, the error logged on
// http.log.error), so that what they write, a `reverse_proxy` to an
// error-page service with CORS headers of its own included, passes through
// it. `Vary: Origin` is merged into the response's Vary
// unless `origins` is `*` (whose answer is the same for every origin and
// is then sent on every response, as the Fetch standard advises for caches);
// preflight answers also vary on Access-Control-Request-Method and
// -Headers. An existing Vary is never replaced.
//
// The handler sets no placeholders.
type Handler struct {
	// The origins allowed to read responses, required. Each entry is one
	// of:
	//
	//   - an origin, `scheme://host[:port]` (`https://app.example.com`,
	//     `http://localhost:3000`): scheme and host match case-insensitively
	//     and a default port (80 for http, 443 for https) is the same as none;
	//   - a wildcard `scheme://*.domain[:port]`: any origin of that scheme
	//     and port whose host is one or more labels under domain
	//     (`https://*.example.com` matches `https://a.example.com` and
	//     `https://a.b.example.com`, never `https://example.com`,
	//     `https://evil-example.com` or `https://example.com.evil.net`);
	//   - `null`, the opaque origin (sandboxed frames, file: pages), matched
	//     only when listed;
	//   - `*`, alone: any origin, answered as `*`; not allowed with
	//     `credentials`.
	//
	// An entry with a path, a query, a fragment, userinfo or a trailing slash
	// is a configuration error, as is an entry listed twice. No placeholders.
	Origins []string `json:"origins,omitempty"`

	// The methods a preflight may ask for (Access-Control-Request-Method),
	// sent as Access-Control-Allow-Methods. Among GET, HEAD, POST, PUT,
	// DELETE, PATCH and OPTIONS, written in any case. GET, HEAD and POST
	// are always allowed, listed or not (the Fetch standard never needs
	// them listed): `methods PUT` allows a preflight for GET, HEAD, POST and
	// PUT and answers Access-Control-Allow-Methods: PUT. Default: GET, HEAD,
	// POST.
	Methods []string `json:"methods,omitempty"`

	// The request headers a preflight may ask for
	// (Access-Control-Request-Headers), sent as Access-Control-Allow-Headers;
	// matched case-insensitively. `*` alone allows whatever is asked and
	// echoes the requested names (including Authorization, which a literal
	// `*` answer would not cover). Default: Authorization, Content-Type.
	Headers []string `json:"headers,omitempty"`

	// Response headers the page may read beyond the CORS-safelisted ones,
	// sent as Access-Control-Expose-Headers on actual responses. `*` alone
	// exposes all (not allowed with `credentials`, where browsers read it as
	// a header named `*`). Default: none.
	Expose []string `json:"expose,omitempty"`

	// Allow credentials (cookies, HTTP authentication, client certificates,
	// and fetch's `credentials: 'include'`): sends
	// Access-Control-Allow-Credentials: true. A configuration error with
	// origins `*`. Default: false.
	Credentials bool `json:"credentials,omitempty"`

	// How long a browser may cache a preflight answer, sent in whole seconds
	// (rounded down) as Access-Control-Max-Age; 0 sends 0, asking browsers
	// not to cache it. Browsers cap it (Chromium at 2 hours). Default: 5m.
	MaxAge *caddy.Duration `json:"max_age,omitempty"`

	// Answer Private Network Access preflights: a preflight carrying
	// Access-Control-Request-Private-Network: true gets
	// Access-Control-Allow-Private-Network: true, which lets pages on public
	// sites call this (private) gateway. Default: false.
	PrivateNetwork bool `json:"private_network,omitempty"`

	origins        *originMatcher
	methods        []string            // normalised, upper case
	anyHeader      bool                // headers *
	allowedHeaders map[string]struct{} // lower case
	allowMethods   string              // Access-Control-Allow-Methods value
	allowHeaders   string              // Access-Control-Allow-Headers value, unless anyHeader
	expose         string              // Access-Control-Expose-Headers value
	maxAge         string              // Access-Control-Max-Age value
	preflightVary  []string            // tokens a preflight answer varies on
	logger         *zap.Logger
	errLog         *zap.Logger                 // the server's error log, http.log.error
	errChain       *atomic.Pointer[errorChain] // the error routes, compiled at first use
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.cors",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision applies the defaults and compiles the configuration.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.errLog = caddy.Log().Named("http.log.error")
	h.errChain = new(atomic.Pointer[errorChain])

	origins, err := compileOrigins(h.Origins)
	if err != nil {
		return fmt.Errorf("origins: %w", err)
	}
	h.origins = origins

	methods := h.Methods
	if len(methods) == 0 {
		methods = DefaultMethods
	}
	h.methods = make([]string, len(methods))
	for i, m := range methods {
		h.methods[i] = strings.ToUpper(m)
	}
	h.allowMethods = strings.Join(h.methods, ", ")

	headers := h.Headers
	if len(headers) == 0 {
		headers = DefaultHeaders
	}
	h.anyHeader = slices.Contains(headers, "*")
	h.allowedHeaders = make(map[string]struct{}, len(headers))
	for _, name := range headers {
		h.allowedHeaders[strings.ToLower(name)] = struct{}{}
	}
	h.allowHeaders = strings.Join(headers, ", ")

	h.expose = strings.Join(h.Expose, ", ")

	maxAge := DefaultMaxAge
	if h.MaxAge != nil {
		maxAge = time.Duration(*h.MaxAge)
	}
	h.maxAge = strconv.FormatInt(int64(maxAge/time.Second), 10)

	h.preflightVary = []string{hdrOrigin, hdrRequestMethod, hdrRequestHeaders}
	if h.PrivateNetwork {
		h.preflightVary = append(h.preflightVary, hdrRequestPrivateNetwork)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	return h.check()
}

// check reports the first problem of the configuration. It has no side
// effect: the Caddyfile parser and Validate share it.
func (h *Handler) check() error {
	if len(h.Origins) == 0 {
		return errors.New("origins: at least one origin is required")
	}
	if _, err := compileOrigins(h.Origins); err != nil {
		return fmt.Errorf("origins: %w", err)
	}
	if h.Credentials && slices.Contains(h.Origins, "*") {
		return errCredentialsAnyOrigin
	}
	if err := checkMethods(h.Methods); err != nil {
		return err
	}
	if err := checkHeaderList("headers", h.Headers); err != nil {
		return err
	}
	if err := checkHeaderList("expose", h.Expose); err != nil {
		return err
	}
	if h.Credentials && slices.Contains(h.Expose, "*") {
		return errCredentialsExposeAll
	}
	if h.MaxAge != nil && *h.MaxAge < 0 {
		return fmt.Errorf("max_age: %v is negative", time.Duration(*h.MaxAge))
	}
	return nil
}

var (
	errCredentialsAnyOrigin = errors.New("credentials cannot be used with origins *: browsers refuse Access-Control-Allow-Origin: * on credentialed requests; list the origins")
	errCredentialsExposeAll = errors.New("expose * cannot be used with credentials: browsers read it as a header named *; list the headers")
)

// knownMethods are the methods `methods` accepts. CONNECT, TRACE and TRACK
// are forbidden methods in the Fetch standard: no page can send them.
var knownMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodDelete, http.MethodPatch, http.MethodOptions,
}

// checkMethod reports whether m (in any case) may be listed in `methods`.
func checkMethod(m string) error {
	u := strings.ToUpper(m)
	switch {
	case slices.Contains(knownMethods, u):
		return nil
	case u == http.MethodConnect || u == http.MethodTrace || u == "TRACK":
		return fmt.Errorf("methods: %s is a forbidden method in the Fetch standard: browsers never send it", m)
	}
	return fmt.Errorf("methods: unknown method %q (want GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS)", m)
}

func checkMethods(methods []string) error {
	for i, m := range methods {
		if err := checkMethod(m); err != nil {
			return err
		}
		for _, prev := range methods[:i] {
			if strings.EqualFold(prev, m) {
				return fmt.Errorf("methods: %s listed twice", m)
			}
		}
	}
	return nil
}

// checkHeaderName reports whether name may be listed in `headers` or
// `expose` (which names the subdirective in the error).
func checkHeaderName(sub, name string) error {
	if name == "*" {
		return nil
	}
	if !httpguts.ValidHeaderFieldName(name) {
		return fmt.Errorf("%s: invalid header name %q", sub, name)
	}
	return nil
}

func checkHeaderList(sub string, names []string) error {
	for i, name := range names {
		if err := checkHeaderName(sub, name); err != nil {
			return err
		}
		if name == "*" && len(names) > 1 {
			return fmt.Errorf("%s: * stands for every header and cannot be combined with header names", sub)
		}
		for _, prev := range names[:i] {
			if strings.EqualFold(prev, name) {
				return fmt.Errorf("%s: %s listed twice", sub, name)
			}
		}
	}
	return nil
}

// ServeHTTP answers preflights and adds the CORS answer to every other
// response of an allowed origin.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	origins := r.Header[hdrOrigin]
	if r.Method == http.MethodOptions && len(origins) > 0 && len(r.Header[hdrRequestMethod]) > 0 {
		h.preflight(w, r, origins)
		return nil
	}

	// Every response passes through cw, so that the gateway's answer is the
	// only one: with no Origin, several, or one not allowed, cw.origin stays
	// empty and the response carries no CORS header, not even an upstream's.
	cw := &responseWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, h: h}
	switch {
	case h.origins.any:
		cw.origin = "*"
	case len(origins) == 1 && h.origins.match(origins[0]):
		// echoed byte for byte: browsers compare it with their own serialisation
		cw.origin = origins[0]
	}
	err := next.ServeHTTP(cw, r)
	if err != nil {
		if srv, chain := h.errorRoutes(r); chain != nil {
			h.serveError(cw, r, err, srv, chain)
			return nil
		}
	}
	if !cw.wroteHeader {
		// nothing written yet: the server writes the response after us, an
		// error (401, 429, 502...) directly, on this same header map but
		// without passing through cw
		cw.answer()
	}
	return err
}

// errorChain is the server's error routes (handle_errors), compiled once.
type errorChain struct {
	srv   *caddyhttp.Server
	chain caddyhttp.Handler
}

// errorRoutes returns the error routes of the request's server, or nil when
// it has none or the request is already in them (an error there is the
// server's to answer, as Caddy does).
func (h *Handler) errorRoutes(r *http.Request) (*caddyhttp.Server, caddyhttp.Handler) {
	ctx := r.Context()
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.Errors == nil || len(srv.Errors.Routes) == 0 || ctx.Value(caddyhttp.ErrorCtxKey) != nil {
		return nil, nil
	}
	if c := h.errChain.Load(); c != nil && c.srv == srv {
		return srv, c.chain
	}
	c := &errorChain{srv: srv, chain: srv.Errors.Routes.Compile(errorStatus)}
	h.errChain.Store(c)
	return srv, c.chain
}

// errorStatus ends the error routes as Caddy's own chain does: it writes the
// error's status when no route wrote a response.
var errorStatus caddyhttp.Handler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	w.WriteHeader(errorStatusCode(r.Context().Value(caddyhttp.ErrorCtxKey)))
	return nil
})

func errorStatusCode(err any) int {
	if he, ok := err.(caddyhttp.HandlerError); ok && he.StatusCode != 0 {
		return he.StatusCode
	}
	return http.StatusInternalServerError
}

// serveError runs the server's error routes for err through cw, as the
// server would after the route returned err (the same request context and
// placeholders, the original method and URI), so that whatever they write
// (a respond, a reverse_proxy to an error-page service with its own CORS
// headers) carries the gateway's one CORS answer. Left to the server, they
// would write on its own writer, past cw. It logs the error as the server
// does, on the http.log.error logger.
func (h *Handler) serveError(cw *responseWriter, r *http.Request, err error, srv *caddyhttp.Server, chain caddyhttp.Handler) {
	er := srv.Errors.WithError(r, err) // a shallow copy of r
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok {
		er.Method = orig.Method
		er.RemoteAddr = orig.RemoteAddr
		er.RequestURI = orig.RequestURI
		if orig.URL != nil {
			u := *orig.URL
			er.URL = &u
		}
	}
	err2 := chain.ServeHTTP(cw, er)
	level, msg := zapcore.DebugLevel, err.Error()
	if err2 != nil {
		level, msg = zapcore.ErrorLevel, "error handling handler error"
	}
	if c := h.errLog.Check(level, msg); c != nil {
		fields := []zap.Field{zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: r})}
		if err2 != nil {
			fields = append(fields, zap.String("error", err2.Error()), zap.Namespace("first_error"), zap.String("msg", err.Error()))
		}
		if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok {
			fields = append(fields, zap.Int("status", he.StatusCode), zap.String("err_id", he.ID), zap.String("err_trace", he.Trace))
		}
		c.Write(fields...)
	}
	if err2 != nil {
		cw.WriteHeader(errorStatusCode(err))
	}
}

// preflight answers a CORS-preflight request.
func (h *Handler) preflight(w http.ResponseWriter, r *http.Request, origins []string) {
	hdr := w.Header()
	removeAnswer(hdr)
	addVary(hdr, nil, h.preflightVary...)

	origin := origins[0]
	if len(origins) != 1 || !h.origins.match(origin) {
		h.refuse(w, r, "origin not allowed")
		return
	}
	method := r.Header.Get(hdrRequestMethod)
	if !safelisted(method) && !slices.Contains(h.methods, method) {
		h.refuse(w, r, "method not allowed")
		return
	}
	requested := strings.Join(r.Header[hdrRequestHeaders], ",")
	if !h.headersAllowed(requested) {
		h.refuse(w, r, "header not allowed")
		return
	}

	if h.origins.any {
		origin = "*"
	}
	// one backing array for the values, rather than one per header
	vals := make([]string, 6)
	set := func(i int, k, v string) {
		vals[i] = v
		hdr[k] = vals[i : i+1 : i+1]
	}
	set(0, hdrAllowOrigin, origin)
	if h.Credentials {
		set(1, hdrAllowCredentials, "true")
	}
	set(2, hdrAllowMethods, h.allowMethods)
	switch {
	case !h.anyHeader:
		set(3, hdrAllowHeaders, h.allowHeaders)
	case strings.TrimSpace(requested) != "":
		set(3, hdrAllowHeaders, requested)
	default:
		set(3, hdrAllowHeaders, "*")
	}
	set(4, hdrMaxAge, h.maxAge)
	if h.PrivateNetwork && strings.EqualFold(r.Header.Get(hdrRequestPrivateNetwork), "true") {
		set(5, hdrAllowPrivateNetwork, "true")
	}
	w.WriteHeader(http.StatusNoContent)
}

// safelisted reports whether m is a CORS-safelisted method (GET, HEAD,
// POST): the Fetch standard never needs them in Access-Control-Allow-Methods,
// so a preflight may always ask for them, whatever `methods` says.
func safelisted(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodPost
}

// refuse answers a preflight that is not allowed: 403 with no
// Access-Control-Allow-* header, so the browser blocks the actual request.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, why string) {
	if c := h.logger.Check(zapcore.DebugLevel, "CORS preflight refused"); c != nil {
		c.Write(zap.String("reason", why),
			zap.String("origin", r.Header.Get(hdrOrigin)),
			zap.String("method", r.Header.Get(hdrRequestMethod)),
			zap.Strings("headers", r.Header[hdrRequestHeaders]))
	}
	w.WriteHeader(http.StatusForbidden)
}

// headersAllowed reports whether every name of a comma-separated
// Access-Control-Request-Headers value is allowed.
func (h *Handler) headersAllowed(list string) bool {
	for list != "" {
		var name string
		name, list, _ = strings.Cut(list, ",")
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !httpguts.ValidHeaderFieldName(name) {
			return false
		}
		if h.anyHeader {
			continue
		}
		if _, ok := h.allowedHeaders[strings.ToLower(name)]; !ok {
			return false
		}
	}
	return true
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
