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
	refusalsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "refusals_total",
		Help: "Requests refused with 429 by the throttle handler, by reason: rate (a rate was spent) or concurrency (no slot was free).",
	}, []string{"zone", "reason"})
	inProgressGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "in_progress",
		Help: "Requests in progress holding a slot of a zone with concurrent, in this instance.",
	}, []string{"zone"})
	settleFailuresTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "settle_failures_total",
		Help: "Settlements (cost_header) or slot releases that Redis could not record; each is tried once.",
	}, []string{"zone"})
)

// counters are the handler's metrics, resolved for its zone once at
// Provision.
type counters struct {
	allowed, refused, dryRun prometheus.Counter
	refusedRate, refusedConc prometheus.Counter
	settleFailures           prometheus.Counter
	inProgress               prometheus.Gauge
}

// newCounters registers the collectors on the config's registry and returns
// the counters of zone.
func newCounters(ctx caddy.Context, zone string) (counters, error) {
	var reg prometheus.Registerer
	if r := ctx.GetMetricsRegistry(); r != nil {
		reg = r
	}
	if err := metrics.Register(reg, allowedTotal, refusedTotal, dryRunTotal, refusalsTotal, inProgressGauge, settleFailuresTotal); err != nil {
		return counters{}, err
	}
	return counters{
		allowed: allowedTotal.WithLabelValues(zone),
		refused: refusedTotal.WithLabelValues(zone),
		dryRun:  dryRunTotal.WithLabelValues(zone),

		refusedRate:    refusalsTotal.WithLabelValues(zone, "rate"),
		refusedConc:    refusalsTotal.WithLabelValues(zone, "concurrency"),
		settleFailures: settleFailuresTotal.WithLabelValues(zone),
		inProgress:     inProgressGauge.WithLabelValues(zone),
	}, nil
}
