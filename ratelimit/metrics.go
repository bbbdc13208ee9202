package ratelimit

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the collectors of every throttle handler, built once and
// registered on each config's registry.
var metrics struct {
	once                     sync.Once
	allowed, refused, dryRun *prometheus.CounterVec
}

func initMetrics() {
	const ns, sub = "caddy", "throttle"
	labels := []string{"zone"}
	metrics.allowed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "allowed_total",
		Help: "Requests admitted by the throttle handler.",
	}, labels)
	metrics.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "refused_total",
		Help: "Requests refused with 429 by the throttle handler.",
	}, labels)
	metrics.dryRun = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Subsystem: sub, Name: "dry_run_total",
		Help: "Requests the throttle handler would have refused, let through in dry-run mode.",
	}, labels)
}

// newCounters registers the collectors on reg (registering again is fine)
// and returns the counters of zone.
func newCounters(reg *prometheus.Registry, zone string) (counters, error) {
	metrics.once.Do(initMetrics)
	vecs := []*prometheus.CounterVec{metrics.allowed, metrics.refused, metrics.dryRun}
	if reg != nil {
		for i, v := range vecs {
			err := reg.Register(v)
			var are prometheus.AlreadyRegisteredError
			switch {
			case err == nil:
			case errors.As(err, &are):
				existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
				if !ok {
					return counters{}, err
				}
				vecs[i] = existing
			default:
				return counters{}, err
			}
		}
	}
	return counters{
		allowed: vecs[0].WithLabelValues(zone),
		refused: vecs[1].WithLabelValues(zone),
		dryRun:  vecs[2].WithLabelValues(zone),
	}, nil
}
