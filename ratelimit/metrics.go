package ratelimit

import (
	"github.com/caddygateway/caddy-gateway/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyserver/caddy/v2"
)

// The collectors of every throttle handler, built once and registered on
// each config's registry at Provision. Labelled by zone only.
var (
	allowedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "allowed_total",
		Help: "Requests admitted by the throttle handler.",
	}, []string{"zone"})
	refusedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "refused_total",
		Help: "Requests refused with 429 by the throttle handler.",
	}, []string{"zone"})
	dryRunTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "dry_run_total",
		Help: "Requests the throttle handler would have refused, let through in dry-run mode.",
	}, []string{"zone"})
)

// counters are the handler's metrics, resolved for its zone once at
// Provision.
type counters struct {
	allowed, refused, dryRun prometheus.Counter
}

// newCounters registers the collectors on the config's registry and returns
// the counters of zone.
func newCounters(ctx caddy.Context, zone string) (counters, error) {
	var reg prometheus.Registerer
	if r := ctx.GetMetricsRegistry(); r != nil {
		reg = r
	}
	if err := metrics.Register(reg, allowedTotal, refusedTotal, dryRunTotal); err != nil {
		return counters{}, err
	}
	return counters{
		allowed: allowedTotal.WithLabelValues(zone),
		refused: refusedTotal.WithLabelValues(zone),
		dryRun:  dryRunTotal.WithLabelValues(zone),
	}, nil
}
