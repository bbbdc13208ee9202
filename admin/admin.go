// Package admin holds admin.api.gateway: the gateway's live state on
// Caddy's admin endpoint (by default localhost:2019), guarded like the rest
// of it (remote admin applies its access control). Answers are JSON and
// describe the running config; errors are Caddy's admin errors
// ({"error": "..."}). Nothing here needs a reload.
//
//   - GET /gateway/throttle: every throttle zone.
//   - GET /gateway/throttle/<zone>?ip=<address> or ?key=<value>: one
//     client's state; DELETE resets it (for a Redis zone in Redis, and on
//     every instance).
//   - GET /gateway/jwt: every jwt_auth key set, never key material.
//   - POST /gateway/jwt/refresh: fetch every remote key set now.
//   - GET /gateway/api_key: every api_key handler's entries, never digests.
//   - GET /gateway/aggregate: every aggregate backend's breaker and cache.
//
// The module is a fresh instance that never sees the handlers: it reads
// the registries of internal/registry, which handlers join at Provision
// and leave at Cleanup.
package admin

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(Gateway{})
}

// Gateway is the admin.api.gateway module. It has no configuration.
type Gateway struct{}

// CaddyModule returns the Caddy module information.
func (Gateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.gateway",
		New: func() caddy.Module { return new(Gateway) },
	}
}

// prefix is where the module's routes live.
const prefix = "/gateway/"

// Routes returns the module's routes: every path under /gateway/.
func (g Gateway) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: prefix, Handler: caddy.AdminHandlerFunc(g.serve)}}
}

// refreshTimeout bounds POST /gateway/jwt/refresh: a little more than one
// fetch may take.
const refreshTimeout = 15 * time.Second

func (g Gateway) serve(w http.ResponseWriter, r *http.Request) error {
	path := strings.TrimPrefix(r.URL.Path, prefix)
	switch {
	case path == "throttle":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		if err := noQuery(r); err != nil {
			return err
		}
		return writeJSON(w, throttleList())
	case strings.HasPrefix(path, "throttle/"):
		return throttleClient(w, r, strings.TrimPrefix(path, "throttle/"))
	case path == "jwt":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		if err := noQuery(r); err != nil {
			return err
		}
		return writeJSON(w, jwtList())
	case path == "jwt/refresh":
		if err := method(r, http.MethodPost); err != nil {
			return err
		}
		if err := noQuery(r); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(r.Context(), refreshTimeout)
		defer cancel()
		return writeJSON(w, jwtRefresh(ctx))
	case path == "api_key":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		if err := noQuery(r); err != nil {
			return err
		}
		return writeJSON(w, apiKeyList())
	case path == "aggregate":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		if err := noQuery(r); err != nil {
			return err
		}
		return writeJSON(w, aggregateList())
	}
	return apiError(http.StatusNotFound, fmt.Errorf("unknown route %s", r.URL.Path))
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err}
}

// method refuses a request with another method (405, with Allow).
func method(r *http.Request, allowed ...string) error {
	if slices.Contains(allowed, r.Method) {
		return nil
	}
	return caddy.APIError{
		HTTPStatus: http.StatusMethodNotAllowed,
		Err:        fmt.Errorf("method %s not allowed: use %s", r.Method, strings.Join(allowed, " or ")),
	}
}

// noQuery refuses a query on routes that take none.
func noQuery(r *http.Request) error {
	if r.URL.RawQuery != "" {
		return apiError(http.StatusBadRequest, errors.New("this route takes no query"))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(append(b, '\n'))
	return err
}

// ThrottleList is the answer of GET /gateway/throttle.
type ThrottleList struct {
	Zones []registry.ThrottleZoneInfo `json:"zones"`
}

func throttleList() ThrottleList {
	out := ThrottleList{Zones: []registry.ThrottleZoneInfo{}}
	for _, z := range registry.ThrottleZones.Members() {
		if info := z.AdminZone(); info.Handlers > 0 {
			out.Zones = append(out.Zones, info)
		}
	}
	slices.SortFunc(out.Zones, func(a, b registry.ThrottleZoneInfo) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.Seq, b.Seq))
	})
	return out
}

// throttleClient serves GET and DELETE /gateway/throttle/<zone>.
func throttleClient(w http.ResponseWriter, r *http.Request, zone string) error {
	if err := method(r, http.MethodGet, http.MethodDelete); err != nil {
		return err
	}
	// Several zone states may share a name (handlers without a zone, or a
	// reload that changed a zone's rates while the old config drains): the
	// newest answers, and a reset applies to all.
	type match struct {
		z    registry.ThrottleZone
		info registry.ThrottleZoneInfo
	}
	var found []match
	for _, z := range registry.ThrottleZones.Members() {
		if info := z.AdminZone(); info.Handlers > 0 && info.Name == zone {
			found = append(found, match{z, info})
		}
	}
	if len(found) == 0 {
		return apiError(http.StatusNotFound, fmt.Errorf("unknown throttle zone %q", zone))
	}
	slices.SortFunc(found, func(a, b match) int { return cmp.Compare(b.info.Seq, a.info.Seq) })
	q, err := parseThrottleQuery(r.URL.RawQuery)
	if err != nil {
		return apiError(http.StatusBadRequest, err)
	}

	var state registry.ThrottleClient
	if r.Method == http.MethodDelete {
		var firstErr error
		reset := false
		for _, m := range found {
			s, err := m.z.AdminReset(r.Context(), q)
			switch {
			case errors.Is(err, registry.ErrNotFound): // unloaded meanwhile
			case err != nil:
				firstErr = cmp.Or(firstErr, err)
			case !reset:
				state, reset = s, true
			}
		}
		if firstErr != nil {
			return viewError(firstErr)
		}
		if !reset {
			return apiError(http.StatusNotFound, fmt.Errorf("unknown throttle zone %q", zone))
		}
	} else {
		state, err = found[0].z.AdminClient(r.Context(), q)
		if err != nil {
			return viewError(err)
		}
	}
	return writeJSON(w, state)
}

// viewError turns a registry view's error into an admin error.
func viewError(err error) error {
	switch {
	case errors.Is(err, registry.ErrBadQuery):
		return apiError(http.StatusBadRequest, err)
	case errors.Is(err, registry.ErrNotFound):
		return apiError(http.StatusNotFound, err)
	case errors.Is(err, registry.ErrUnavailable):
		return apiError(http.StatusServiceUnavailable, err)
	}
	return apiError(http.StatusInternalServerError, err)
}

// parseThrottleQuery reads ?ip=<address> or ?key=<value>: exactly one,
// once, and nothing else.
func parseThrottleQuery(raw string) (registry.ThrottleQuery, error) {
	var q registry.ThrottleQuery
	values, err := url.ParseQuery(raw)
	if err != nil {
		return q, fmt.Errorf("invalid query: %w", err)
	}
	for name, v := range values {
		if name != "ip" && name != "key" {
			return q, fmt.Errorf("unknown query parameter %q: give ip=<address> or key=<value>", name)
		}
		if len(v) != 1 {
			return q, fmt.Errorf("query parameter %q given %d times", name, len(v))
		}
	}
	ip, hasIP := values["ip"]
	k, hasKey := values["key"]
	switch {
	case hasIP && hasKey:
		return q, errors.New("give ip=<address> or key=<value>, not both")
	case hasIP:
		a, err := netip.ParseAddr(ip[0])
		if err != nil {
			return q, fmt.Errorf("ip: %q is not an IP address", ip[0])
		}
		q.IP = a.WithZone("")
	case hasKey:
		if k[0] == "" {
			return q, errors.New("key: empty value (a request whose key is empty is counted by its client IP: use ip=)")
		}
		q.Key = k[0]
	default:
		return q, errors.New("give ip=<address> or key=<value>")
	}
	return q, nil
}

// JWTList is the answer of GET /gateway/jwt.
type JWTList struct {
	KeySets []registry.JWTKeySet `json:"key_sets"`
}

func jwtList() JWTList {
	out := JWTList{KeySets: []registry.JWTKeySet{}}
	for _, s := range registry.JWTKeySets.Members() {
		out.KeySets = append(out.KeySets, s.AdminKeySets()...)
	}
	slices.SortFunc(out.KeySets, func(a, b registry.JWTKeySet) int {
		return cmp.Or(strings.Compare(a.Source, b.Source), strings.Compare(a.Issuer, b.Issuer),
			strings.Compare(a.URL, b.URL), strings.Compare(strings.Join(a.File, "\n"), strings.Join(b.File, "\n")),
			strings.Compare(a.Realm, b.Realm))
	})
	return out
}

// JWTRefresh is the answer of POST /gateway/jwt/refresh.
type JWTRefresh struct {
	KeySets []registry.JWTRefreshResult `json:"key_sets"`
}

// jwtRefresh refreshes every remote key set at once and waits for all.
func jwtRefresh(ctx context.Context) JWTRefresh {
	var sets []registry.JWTRefresher
	for _, s := range registry.JWTKeySets.Members() {
		if rs, ok := s.(registry.JWTRefresher); ok {
			sets = append(sets, rs)
		}
	}
	out := JWTRefresh{KeySets: make([]registry.JWTRefreshResult, len(sets))}
	var wg sync.WaitGroup
	for i, s := range sets {
		wg.Go(func() { out.KeySets[i] = s.AdminRefresh(ctx) })
	}
	wg.Wait()
	slices.SortFunc(out.KeySets, func(a, b registry.JWTRefreshResult) int {
		return cmp.Or(strings.Compare(a.Source, b.Source), strings.Compare(a.Issuer, b.Issuer), strings.Compare(a.URL, b.URL))
	})
	return out
}

// APIKeyList is the answer of GET /gateway/api_key.
type APIKeyList struct {
	Handlers []APIKeyHandler `json:"handlers"`
}

// APIKeyHandler is one api_key handler's entries.
type APIKeyHandler struct {
	Name string                 `json:"name"`
	Keys []registry.APIKeyEntry `json:"keys"`
}

func apiKeyList() APIKeyList {
	out := APIKeyList{Handlers: []APIKeyHandler{}}
	for _, s := range registry.APIKeys.Members() {
		name, entries := s.AdminAPIKeys()
		if entries == nil {
			entries = []registry.APIKeyEntry{}
		}
		out.Handlers = append(out.Handlers, APIKeyHandler{Name: name, Keys: entries})
	}
	slices.SortStableFunc(out.Handlers, func(a, b APIKeyHandler) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AggregateList is the answer of GET /gateway/aggregate.
type AggregateList struct {
	Handlers []AggregateHandler `json:"handlers"`
}

// AggregateHandler is one aggregate handler's backends.
type AggregateHandler struct {
	Backends []registry.AggregateBackend `json:"backends"`
}

func aggregateList() AggregateList {
	out := AggregateList{Handlers: []AggregateHandler{}}
	for _, s := range registry.Aggregates.Members() {
		b := s.AdminAggregate()
		if b == nil {
			b = []registry.AggregateBackend{}
		}
		out.Handlers = append(out.Handlers, AggregateHandler{Backends: b})
	}
	slices.SortStableFunc(out.Handlers, func(a, b AggregateHandler) int {
		return strings.Compare(firstName(a.Backends), firstName(b.Backends))
	})
	return out
}

func firstName(b []registry.AggregateBackend) string {
	if len(b) == 0 {
		return ""
	}
	return b[0].Name
}

// Interface guards
var _ caddy.AdminRouter = Gateway{}
