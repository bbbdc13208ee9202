package cors

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func provision(t testing.TB, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

// next records whether it ran and answers like an upstream would.
type next struct {
	called bool
	fn     func(w http.ResponseWriter, r *http.Request) error
}

func (n *next) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.called = true
	if n.fn != nil {
		return n.fn(w, r)
	}
	w.WriteHeader(http.StatusOK)
	_, err := w.Write([]byte("ok"))
	return err
}

func serve(t *testing.T, h *Handler, nx *next, method string, headers ...string) (*httptest.ResponseRecorder, error) {
	t.Helper()
	r := httptest.NewRequestWithContext(t.Context(), method, "http://gateway.example/api", nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	if nx == nil {
		nx = new(next)
	}
	err := h.ServeHTTP(w, r, nx)
	return w, err
}

func allowHeaders(h http.Header) []string {
	var names []string
	for k := range h {
		if strings.HasPrefix(k, "Access-Control-Allow-") {
			names = append(names, k)
		}
	}
	return names
}

func TestActualRequestAllowedOrigin(t *testing.T) {
	h := provision(t, &Handler{
		Origins:     []string{"https://app.example.com"},
		Credentials: true,
		Expose:      []string{"X-Request-Id", "RateLimit"},
	})
	nx := new(next)
	w, err := serve(t, h, nx, http.MethodGet, "Origin", "https://app.example.com")
	if err != nil || !nx.called || w.Code != http.StatusOK {
		t.Fatalf("err %v, next called %v, status %d", err, nx.called, w.Code)
	}
	for k, want := range map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Credentials": "true",
		"Access-Control-Expose-Headers":    "X-Request-Id, RateLimit",
		"Vary":                             "Origin",
	} {
		if got := w.Result().Header.Values(k); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := w.Result().Header.Get("Access-Control-Allow-Methods"); got != "" {
		t.Errorf("actual response has Access-Control-Allow-Methods %q", got)
	}
}

// The origin is echoed as the browser sent it, even when it matched after
// normalisation.
func TestActualRequestEchoesOriginAsSent(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}})
	w, _ := serve(t, h, nil, http.MethodGet, "Origin", "https://APP.example.com:443")
	if got := w.Result().Header.Get("Access-Control-Allow-Origin"); got != "https://APP.example.com:443" {
		t.Fatalf("Access-Control-Allow-Origin = %q", got)
	}
}

func TestActualRequestDisallowedOriginPassesWithoutCORS(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}, Credentials: true})
	for _, origin := range []string{"https://evil.example", "https://app.example.com.evil.net", "null"} {
		nx := &next{fn: func(w http.ResponseWriter, _ *http.Request) error {
			// an upstream answering CORS on its own is overruled
			w.Header().Set("Access-Control-Allow-Origin", "*")
			w.Header().Set("Access-Control-Allow-Credentials", "true")
			w.WriteHeader(http.StatusOK)
			return nil
		}}
		w, err := serve(t, h, nx, http.MethodGet, "Origin", origin)
		if err != nil || !nx.called {
			t.Fatalf("%s: err %v, next called %v", origin, err, nx.called)
		}
		if names := allowHeaders(w.Result().Header); len(names) != 0 {
			t.Errorf("%s: CORS headers %v on a disallowed origin", origin, names)
		}
		if got := w.Result().Header.Get("Vary"); got != "Origin" {
			t.Errorf("%s: Vary = %q", origin, got)
		}
	}
}

// Two Origin headers are not an origin: no answer.
func TestActualRequestTwoOrigins(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}})
	w, _ := serve(t, h, nil, http.MethodGet, "Origin", "https://app.example.com", "Origin", "https://app.example.com")
	if names := allowHeaders(w.Result().Header); len(names) != 0 {
		t.Fatalf("CORS headers %v", names)
	}
}

func TestNoOriginGetsVaryOnly(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}})
	w, _ := serve(t, h, nil, http.MethodGet)
	if names := allowHeaders(w.Result().Header); len(names) != 0 {
		t.Fatalf("CORS headers %v without Origin", names)
	}
	if got := w.Result().Header.Get("Vary"); got != "Origin" {
		t.Fatalf("Vary = %q", got)
	}
}

// origins * answers * on every response, without Vary: Origin (the answer
// does not depend on it).
func TestAnyOrigin(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"*"}, Expose: []string{"*"}})
	for _, hdr := range [][]string{{"Origin", "https://x.example"}, {"Origin", "null"}, nil} {
		w, _ := serve(t, h, nil, http.MethodGet, hdr...)
		if got := w.Result().Header.Get("Access-Control-Allow-Origin"); got != "*" {
			t.Errorf("%v: Access-Control-Allow-Origin = %q", hdr, got)
		}
		if got := w.Result().Header.Get("Access-Control-Allow-Credentials"); got != "" {
			t.Errorf("%v: Access-Control-Allow-Credentials = %q", hdr, got)
		}
		if got := w.Result().Header.Get("Access-Control-Expose-Headers"); got != "*" {
			t.Errorf("%v: Access-Control-Expose-Headers = %q", hdr, got)
		}
		if got := w.Result().Header.Get("Vary"); got != "" {
			t.Errorf("%v: Vary = %q", hdr, got)
		}
	}
}

// An upstream's CORS headers are replaced by the handler's, never
// duplicated, and its Vary is kept and merged.
func TestUpstreamCORSHeadersReplaced(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}})
	nx := &next{fn: func(w http.ResponseWriter, _ *http.Request) error {
		hdr := w.Header()
		hdr.Add("Access-Control-Allow-Origin", "*")
		hdr.Add("Access-Control-Allow-Origin", "https://other.example")
		hdr.Set("Access-Control-Allow-Credentials", "true")
		hdr.Set("Access-Control-Allow-Methods", "DELETE")
		hdr.Set("Access-Control-Max-Age", "86400")
		hdr.Add("Vary", "Accept-Encoding")
		hdr.Add("Vary", "origin, Cookie")
		w.WriteHeader(http.StatusTeapot)
		return nil
	}}
	w, _ := serve(t, h, nx, http.MethodGet, "Origin", "https://app.example.com")
	if w.Code != http.StatusTeapot {
		t.Fatalf("status %d", w.Code)
	}
	if got := w.Result().Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != "https://app.example.com" {
		t.Errorf("Access-Control-Allow-Origin = %q", got)
	}
	for _, k := range []string{"Access-Control-Allow-Credentials", "Access-Control-Allow-Methods", "Access-Control-Max-Age"} {
		if got := w.Result().Header.Values(k); len(got) != 0 {
			t.Errorf("%s = %q, want none", k, got)
		}
	}
	vary := strings.Join(w.Result().Header.Values("Vary"), ",")
	if n := strings.Count(strings.ToLower(vary), "origin"); n != 1 {
		t.Errorf("Vary %q lists Origin %d times", vary, n)
	}
	for _, want := range []string{"Accept-Encoding", "Cookie"} {
		if !strings.Contains(vary, want) {
			t.Errorf("Vary %q lost %s", vary, want)
		}
	}
}

// Vary: * already covers Origin.
func TestVaryStarKept(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}})
	nx := &next{fn: func(w http.ResponseWriter, _ *http.Request) error {
		w.Header()["Vary"] = []string{"*"}
		_, err := w.Write([]byte("x"))
		return err
	}}
	w, _ := serve(t, h, nx, http.MethodGet, "Origin", "https://app.example.com")
	if got := w.Result().Header.Values("Vary"); len(got) != 1 || got[0] != "*" {
		t.Fatalf("Vary = %q", got)
	}
}

// An error returned by a later handler (401, 429, 502...) is written by the
// server on the same header map: the CORS answer is on it, and anything a
// later handler set under those names is gone.
func TestErrorFromLaterHandlerKeepsCORS(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}, Credentials: true})
	nx := &next{fn: func(w http.ResponseWriter, _ *http.Request) error {
		w.Header().Set("WWW-Authenticate", `Bearer realm="api"`)
		w.Header().Set("Access-Control-Allow-Origin", "*")
		delete(w.Header(), "Vary")
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("no token"))
	}}
	w, err := serve(t, h, nx, http.MethodGet, "Origin", "https://app.example.com")
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); !ok || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("error %v, want the 401 passed on", err)
	}
	if w.Result().Header.Get("WWW-Authenticate") == "" {
		t.Error("later handler's header lost")
	}
	if got := w.Result().Header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != "https://app.example.com" {
		t.Errorf("Access-Control-Allow-Origin = %q", got)
	}
	if got := w.Result().Header.Get("Access-Control-Allow-Credentials"); got != "true" {
		t.Errorf("Access-Control-Allow-Credentials = %q", got)
	}
	if got := w.Result().Header.Get("Vary"); got != "Origin" {
		t.Errorf("Vary = %q", got)
	}
}

// A handler that writes without WriteHeader, or copies a body with
// ReadFrom, still gets the CORS answer on its header.
func TestWriteWithoutWriteHeaderAndReadFrom(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}})
	for _, name := range []string{"Write", "ReadFrom", "Flush"} {
		t.Run(name, func(t *testing.T) {
			nx := &next{fn: func(w http.ResponseWriter, _ *http.Request) error {
				w.Header().Set("Access-Control-Allow-Origin", "*")
				switch name {
				case "ReadFrom":
					_, err := w.(io.ReaderFrom).ReadFrom(strings.NewReader("body"))
					return err
				case "Flush":
					if err := http.NewResponseController(w).Flush(); err != nil {
						return err
					}
				}
				_, err := w.Write([]byte("body"))
				return err
			}}
			w, _ := serve(t, h, nx, http.MethodGet, "Origin", "https://app.example.com")
			// the header as it was written, not the live map
			sent := w.Result().Header
			if got := sent.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != "https://app.example.com" {
				t.Fatalf("Access-Control-Allow-Origin = %q", got)
			}
			if name == "Flush" {
				return
			}
			if w.Body.String() != "body" {
				t.Fatalf("body %q", w.Body.String())
			}
		})
	}
}

func TestPreflightAllowed(t *testing.T) {
	h := provision(t, &Handler{
		Origins:     []string{"https://*.example.com"},
		Methods:     []string{"get", "PUT", "delete"},
		Headers:     []string{"Authorization", "Content-Type", "X-Request-Id"},
		Credentials: true,
		MaxAge:      new(caddy.Duration(10 * time.Minute)),
	})
	nx := new(next)
	w, err := serve(t, h, nx, http.MethodOptions,
		"Origin", "https://app.example.com",
		"Access-Control-Request-Method", "PUT",
		"Access-Control-Request-Headers", "authorization,content-type, x-request-id")
	if err != nil || nx.called {
		t.Fatalf("err %v, next called %v", err, nx.called)
	}
	if w.Code != http.StatusNoContent {
		t.Fatalf("status %d", w.Code)
	}
	for k, want := range map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Credentials": "true",
		"Access-Control-Allow-Methods":     "GET, PUT, DELETE",
		"Access-Control-Allow-Headers":     "Authorization, Content-Type, X-Request-Id",
		"Access-Control-Max-Age":           "600",
		"Vary":                             "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
	} {
		if got := w.Result().Header.Values(k); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := w.Result().Header.Get("Access-Control-Allow-Private-Network"); got != "" {
		t.Errorf("Access-Control-Allow-Private-Network = %q without private_network", got)
	}
}

func TestPreflightDefaults(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"http://localhost:3000"}})
	w, _ := serve(t, h, nil, http.MethodOptions,
		"Origin", "http://localhost:3000", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "content-type")
	if w.Code != http.StatusNoContent {
		t.Fatalf("status %d", w.Code)
	}
	for k, want := range map[string]string{
		"Access-Control-Allow-Methods": "GET, HEAD, POST",
		"Access-Control-Allow-Headers": "Authorization, Content-Type",
		"Access-Control-Max-Age":       "300",
	} {
		if got := w.Result().Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := w.Result().Header.Get("Access-Control-Allow-Credentials"); got != "" {
		t.Errorf("Access-Control-Allow-Credentials = %q without credentials", got)
	}
}

func TestPreflightMaxAgeZero(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"http://localhost:3000"}, MaxAge: new(caddy.Duration(0))})
	w, _ := serve(t, h, nil, http.MethodOptions, "Origin", "http://localhost:3000", "Access-Control-Request-Method", "GET")
	if got := w.Result().Header.Get("Access-Control-Max-Age"); got != "0" {
		t.Fatalf("Access-Control-Max-Age = %q", got)
	}
}

func TestPreflightRefused(t *testing.T) {
	h := provision(t, &Handler{
		Origins: []string{"https://app.example.com"},
		Methods: []string{"GET", "PUT"},
		Headers: []string{"Authorization"},
	})
	for name, hdr := range map[string][]string{
		"origin":         {"Origin", "https://evil.example", "Access-Control-Request-Method", "GET"},
		"look-alike":     {"Origin", "https://app.example.com.evil.net", "Access-Control-Request-Method", "GET"},
		"null":           {"Origin", "null", "Access-Control-Request-Method", "GET"},
		"method":         {"Origin", "https://app.example.com", "Access-Control-Request-Method", "DELETE"},
		"method case":    {"Origin", "https://app.example.com", "Access-Control-Request-Method", "put"},
		"header":         {"Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization, x-evil"},
		"invalid header": {"Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization, bad header"},
		"second field":   {"Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization", "Access-Control-Request-Headers", "x-evil"},
	} {
		nx := new(next)
		w, err := serve(t, h, nx, http.MethodOptions, hdr...)
		if err != nil || nx.called {
			t.Errorf("%s: err %v, next called %v", name, err, nx.called)
		}
		if w.Code != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", name, w.Code)
		}
		if names := allowHeaders(w.Result().Header); len(names) != 0 {
			t.Errorf("%s: refusal carries %v", name, names)
		}
		if got := w.Result().Header.Get("Vary"); !strings.Contains(got, "Origin") {
			t.Errorf("%s: Vary = %q", name, got)
		}
	}
}

// headers * allows what is asked and echoes it (a literal * would not cover
// Authorization).
func TestPreflightAnyHeader(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"*"}, Headers: []string{"*"}})
	w, _ := serve(t, h, nil, http.MethodOptions,
		"Origin", "https://x.example", "Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "authorization,x-anything")
	if w.Code != http.StatusNoContent {
		t.Fatalf("status %d", w.Code)
	}
	if got := w.Result().Header.Get("Access-Control-Allow-Headers"); got != "authorization,x-anything" {
		t.Errorf("Access-Control-Allow-Headers = %q", got)
	}
	if got := w.Result().Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("Access-Control-Allow-Origin = %q", got)
	}
}

func TestPreflightPrivateNetwork(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		h := provision(t, &Handler{Origins: []string{"https://app.example.com"}, PrivateNetwork: enabled})
		w, _ := serve(t, h, nil, http.MethodOptions,
			"Origin", "https://app.example.com", "Access-Control-Request-Method", "GET",
			"Access-Control-Request-Private-Network", "true")
		got := w.Result().Header.Get("Access-Control-Allow-Private-Network")
		if enabled && got != "true" || !enabled && got != "" {
			t.Errorf("private_network %v: Access-Control-Allow-Private-Network = %q", enabled, got)
		}
		// not asked: not sent
		w, _ = serve(t, h, nil, http.MethodOptions, "Origin", "https://app.example.com", "Access-Control-Request-Method", "GET")
		if got := w.Result().Header.Get("Access-Control-Allow-Private-Network"); got != "" {
			t.Errorf("private_network %v, not asked: %q", enabled, got)
		}
	}
}

// An OPTIONS request that is not a preflight passes on.
func TestPlainOptionsPassesOn(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}})
	for _, hdr := range [][]string{nil, {"Origin", "https://app.example.com"}, {"Access-Control-Request-Method", "GET"}} {
		nx := new(next)
		w, _ := serve(t, h, nx, http.MethodOptions, hdr...)
		if !nx.called || w.Code != http.StatusOK {
			t.Errorf("%v: next called %v, status %d", hdr, nx.called, w.Code)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{}, "at least one origin"},
		{Handler{Origins: []string{"*"}, Credentials: true}, "credentials cannot be used with origins *"},
		{Handler{Origins: []string{"https://a.example/"}}, "must not end with a slash"},
		{Handler{Origins: []string{"https://a.example"}, Methods: []string{"FETCH"}}, "unknown method"},
		{Handler{Origins: []string{"https://a.example"}, Methods: []string{"TRACE"}}, "forbidden method"},
		{Handler{Origins: []string{"https://a.example"}, Methods: []string{"GET", "get"}}, "listed twice"},
		{Handler{Origins: []string{"https://a.example"}, Headers: []string{"X Bad"}}, "invalid header name"},
		{Handler{Origins: []string{"https://a.example"}, Headers: []string{"*", "X-A"}}, "cannot be combined"},
		{Handler{Origins: []string{"https://a.example"}, Expose: []string{"X-A", "x-a"}}, "listed twice"},
		{Handler{Origins: []string{"https://a.example"}, Expose: []string{"*"}, Credentials: true}, "expose * cannot be used with credentials"},
		{Handler{Origins: []string{"https://a.example"}, MaxAge: new(caddy.Duration(-time.Second))}, "negative"},
	} {
		err := tc.h.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: Validate() = %v, want %q", tc.h, err, tc.want)
		}
	}
}

// GET, HEAD and POST are always allowed in a preflight, whatever `methods`
// says (the Fetch standard never needs them listed); others must be listed.
func TestPreflightSafelistedMethodsAlwaysAllowed(t *testing.T) {
	h := provision(t, &Handler{Origins: []string{"https://app.example.com"}, Methods: []string{"put"}})
	for method, want := range map[string]int{
		"GET": http.StatusNoContent, "HEAD": http.StatusNoContent, "POST": http.StatusNoContent,
		"PUT": http.StatusNoContent, "DELETE": http.StatusForbidden, "PATCH": http.StatusForbidden,
	} {
		nx := new(next)
		w, err := serve(t, h, nx, http.MethodOptions,
			"Origin", "https://app.example.com", "Access-Control-Request-Method", method,
			"Access-Control-Request-Headers", "content-type")
		if err != nil || nx.called {
			t.Fatalf("%s: err %v, next called %v", method, err, nx.called)
		}
		if w.Code != want {
			t.Errorf("%s: status %d, want %d", method, w.Code, want)
		}
		hdr := w.Result().Header
		if want == http.StatusForbidden {
			if names := allowHeaders(hdr); len(names) != 0 {
				t.Errorf("%s: refusal carries %v", method, names)
			}
			continue
		}
		for k, v := range map[string]string{
			"Access-Control-Allow-Origin":  "https://app.example.com",
			"Access-Control-Allow-Methods": "PUT",
			"Access-Control-Allow-Headers": "Authorization, Content-Type",
			"Access-Control-Max-Age":       "300",
		} {
			if got := hdr.Values(k); len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s = %q, want %q", method, k, got, v)
			}
		}
	}
	// a header not allowed is refused for a safelisted method too
	w, _ := serve(t, h, nil, http.MethodOptions,
		"Origin", "https://app.example.com", "Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "x-secret")
	if w.Code != http.StatusForbidden || len(allowHeaders(w.Result().Header)) != 0 {
		t.Errorf("GET with a header not allowed: status %d, %v", w.Code, w.Result().Header)
	}
}
