package ratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/caddygateway/caddy-gateway/internal/registry"
	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// provisionCost compiles Cost and CostHeader (after the bursts' defaults).
func (h *Handler) provisionCost() {
	h.units = 1
	h.maxUnits = 0
	for _, r := range h.Rate {
		if h.maxUnits == 0 || int64(r.Burst) < h.maxUnits {
			h.maxUnits = int64(r.Burst)
		}
	}
	switch {
	case h.Cost == "":
	case strings.Contains(h.Cost, "{"):
		h.costExpr = true
		h.costVar = singlePlaceholder(h.Cost)
	default:
		n, err := strconv.ParseInt(h.Cost, 10, 64)
		if err == nil {
			h.units = n
		} else {
			h.units = 0 // refused by checkCost
		}
	}
	if h.CostHeader != "" {
		h.costHdr = http.CanonicalHeaderKey(h.CostHeader)
		h.trailer = http.TrailerPrefix + h.costHdr
	}
	h.holds = h.Concurrent > 0 || h.CostHeader != ""
}

// checkCost checks concurrent, cost and cost_header (after provisionCost).
func (h *Handler) checkCost() error {
	if h.Concurrent < 0 {
		return fmt.Errorf("concurrent must be at least 1, got %d", h.Concurrent)
	}
	if (h.Cost != "" || h.CostHeader != "") && len(h.Rate) == 0 {
		return errors.New("cost and cost_header need at least one rate")
	}
	if h.Cost != "" && !h.costExpr && (h.units < 1 || h.units > h.maxUnits) {
		return fmt.Errorf("cost %q: want a whole number from 1 to the smallest burst (%d), or a placeholder", h.Cost, h.maxUnits)
	}
	if h.CostHeader != "" && !httpguts.ValidHeaderFieldName(h.CostHeader) {
		return fmt.Errorf("cost_header %q is not a valid header name", h.CostHeader)
	}
	return nil
}

// costOf resolves the cost of a request: a whole number from 1 to the
// smallest burst, or false.
func (h *Handler) costOf(r *http.Request) (int64, bool) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	var s string
	if h.costVar != "" {
		s, _ = repl.GetString(h.costVar)
	} else {
		s = repl.ReplaceAll(h.Cost, "")
	}
	n, ok := wholeNumber(s)
	if !ok || n < 1 || n > h.maxUnits {
		return 0, false
	}
	return n, true
}

// wholeNumber parses a whole number of at least 0, digits only.
func wholeNumber(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// serveHolding serves a request that holds a slot or awaits a settlement,
// and gives back what it holds once its response is finished or its client
// has gone (next returns either way). An upgrade request gives its slot back
// as soon as the upgrade is answered.
func (h *Handler) serveHolding(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, k key, q ask, d decision) error {
	held := d.held || d.lease != nil
	if held {
		h.counters.inProgress.Inc()
	}
	var err error
	var released bool
	if held && isUpgrade(r) {
		uw := &upgradeWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, ctx: r.Context(), h: h, k: k, d: d, connect: r.Method == http.MethodConnect}
		err = next.ServeHTTP(uw, r)
		released = !uw.held.CompareAndSwap(false, true)
	} else {
		err = next.ServeHTTP(w, r)
	}
	delta, settle := int64(0), false
	if h.costHdr != "" {
		if actual, ok := h.reportedCost(w.Header()); ok {
			delta, settle = actual-q.units, actual != q.units
		}
	}
	h.finish(r.Context(), k, d, held && !released, settle, delta)
	return err
}

// reportedCost reads the settled cost from the response's header or
// trailer.
func (h *Handler) reportedCost(hdr http.Header) (int64, bool) {
	v := hdr[h.costHdr]
	if len(v) == 0 {
		v = hdr[h.trailer]
	}
	if len(v) == 0 {
		return 0, false
	}
	return wholeNumber(v[len(v)-1])
}

// finish gives back a request's slot (release) and settles its cost by
// delta units (settle).
func (h *Handler) finish(ctx context.Context, k key, d decision, release, settle bool, delta int64) {
	if release {
		h.counters.inProgress.Dec()
		if d.held {
			h.mem.release(k)
		}
	}
	var l *lease
	if release {
		l = d.lease
	}
	if d.local {
		if settle {
			h.mem.settle(k, h.limits, delta)
		}
		settle = false
	}
	if l == nil && !settle {
		return
	}
	h.redis.z.finish(ctx, d.id, l, settle, delta, h.counters.settleFailures)
}

// isUpgrade reports whether r asks to switch protocols: an HTTP/1.1 Upgrade
// or an extended CONNECT (WebSocket over HTTP/2 and HTTP/3).
func isUpgrade(r *http.Request) bool {
	return r.Method == http.MethodConnect || r.Header.Get("Upgrade") != ""
}

// upgradeWriter gives a request's slot back once its upgrade is answered
// (101 Switching Protocols, or 2xx to an extended CONNECT): the connection
// it becomes may last for hours.
type upgradeWriter struct {
	caddyhttp.ResponseWriterWrapper
	ctx     context.Context
	h       *Handler
	k       key
	d       decision
	connect bool
	held    atomic.Bool // set once the slot is given back
}

func (u *upgradeWriter) WriteHeader(code int) {
	if code == http.StatusSwitchingProtocols || (u.connect && code >= 200 && code < 300) {
		if u.held.CompareAndSwap(false, true) {
			u.h.finish(u.ctx, u.k, u.d, true, false, 0)
		}
	}
	u.ResponseWriter.WriteHeader(code)
}

// concurrencyView is the admin API's view of the handler's slots (nil
// without `concurrent`).
func (h *Handler) concurrencyView() registry.ThrottleConcurrency {
	if h.Concurrent == 0 {
		return nil
	}
	return slotsView{h}
}

// slotsView answers the admin API about a handler's slots.
type slotsView struct{ h *Handler }

func (v slotsView) Concurrent() int { return v.h.Concurrent }

// InProgress returns the requests in progress of the client whose key has
// the text form id (key.appendText): in this instance's memory, or
// fleet-wide (live leases) on Redis.
func (v slotsView) InProgress(ctx context.Context, id string) (int, error) {
	k, ok := parseKeyText(id)
	if !ok {
		return 0, fmt.Errorf("%w: %q is not a client id", registry.ErrBadQuery, id)
	}
	if v.h.redis != nil && v.h.redis.z != nil {
		return v.h.redis.z.inProgress(ctx, redisTag(k))
	}
	return int(v.h.mem.inProgress(k)), nil
}

// parseKeyText is the inverse of key.appendText.
func parseKeyText(id string) (key, bool) {
	kind, rest, ok := strings.Cut(id, ":")
	if !ok {
		return key{}, false
	}
	switch kind {
	case "t":
		return key{kind: kindText, text: rest}, rest != ""
	case "a", "c":
		k := key{kind: kindClient}
		if kind == "a" {
			k.kind = kindAddr
		}
		if rest == "" {
			return k, kind == "c"
		}
		p, err := netip.ParsePrefix(rest)
		if err != nil {
			return key{}, false
		}
		k.addr, k.bits = p.Addr(), p.Bits()
		return k, true
	}
	return key{}, false
}

// UnmarshalJSON decodes a handler, strictly (unknown fields are errors, as
// Caddy decodes modules), taking `cost` as a JSON number or a string.
func (h *Handler) UnmarshalJSON(b []byte) error {
	type plain Handler
	aux := struct {
		*plain
		Cost json.RawMessage `json:"cost,omitempty"`
	}{plain: (*plain)(h)}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&aux); err != nil {
		return err
	}
	h.Cost = ""
	if len(aux.Cost) == 0 || string(aux.Cost) == "null" {
		return nil
	}
	if aux.Cost[0] == '"' {
		return json.Unmarshal(aux.Cost, &h.Cost)
	}
	var n json.Number
	if err := json.Unmarshal(aux.Cost, &n); err != nil {
		return fmt.Errorf("cost: want a whole number or a placeholder string: %w", err)
	}
	h.Cost = n.String()
	return nil
}
