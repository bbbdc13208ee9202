// Package metrics holds the one way every gateway module registers its
// Prometheus collectors.
//
// Each module keeps its collectors in package-level variables, built once,
// and calls Register from Provision with ctx.GetMetricsRegistry(): a reload
// registers the same collectors again, which is fine. Handlers resolve their
// labelled children (WithLabelValues) once at Provision, never per request.
// Labels come from the config only, never from a request.
package metrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register adds the collectors to reg. A collector already registered there
// (by an earlier Provision of the same config, or a reload) is not an error.
// A nil reg (no metrics registry, as in unit tests) registers nothing.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				return err
			}
		}
	}
	return nil
}
