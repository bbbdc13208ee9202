package apikey

import (
	"github.com/caddygateway/caddy-gateway/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyserver/caddy/v2"
)

// requestsTotal counts the requests api_key sees, by result only: built
// once, registered on every config's metrics registry. No key, digest, id
// or identity is ever a label.
var requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "api_key",
	Name:      "requests_total",
	Help:      "Requests seen by api_key, by result: allowed, anonymous (no key, optional), missing (no key, refused), invalid (unknown, expired, not yet valid or disabled key, or keys in more than one place).",
}, []string{"result"})

// counters are the labelled children, resolved once at Provision so that
// a request only increments.
type counters struct {
	allowed, anonymous, missing, invalid prometheus.Counter
}

func newCounters(ctx caddy.Context) (*counters, error) {
	if err := metrics.Register(ctx.GetMetricsRegistry(), requestsTotal); err != nil {
		return nil, err
	}
	return &counters{
		allowed:   requestsTotal.WithLabelValues("allowed"),
		anonymous: requestsTotal.WithLabelValues("anonymous"),
		missing:   requestsTotal.WithLabelValues("missing"),
		invalid:   requestsTotal.WithLabelValues("invalid"),
	}, nil
}
