package aggregate

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The aggregate handler's collectors, built once and registered on every
// config's metrics registry (internal/metrics.Register). Labels come from
// the config only: backend names, outcome codes and the handler's own
// statuses; never a path, an ID or a client address.
var (
	backendCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "aggregate",
		Name:      "backend_calls_total",
		Help:      "Backend calls made by aggregate, by backend name and outcome: ok, timeout, status, unreachable, invalid_json, too_large, canceled (the client went away); dependency and circuit_open count backends not called. Cache hits are not calls (see cache_requests_total).",
	}, []string{"backend", "outcome"})

	backendDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "aggregate",
		Name:      "backend_duration_seconds",
		Help:      "Time from the start of a backend call to the end of its body (or its failure), by backend name.",
		Buckets:   prometheus.DefBuckets,
	}, []string{"backend"})

	responses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "aggregate",
		Name:      "responses_total",
		Help:      "Requests answered by aggregate, by status (200, 502, 504; 400 for a refused placeholder value, 499 when the client went away) and completeness (true when every backend succeeded).",
	}, []string{"status", "complete"})

	cacheRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "aggregate",
		Name:      "cache_requests_total",
		Help:      "Lookups in the shared cache of backends with `cache`, by backend name and result: hit (answered from the cache, no call) or miss.",
	}, []string{"backend", "result"})

	breakerState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy",
		Subsystem: "aggregate",
		Name:      "breaker_state",
		Help:      "State of the circuit breaker of backends with `breaker`, by backend name: 0 closed, 1 half-open (an open breaker turns half-open at the first request after its cooldown), 2 open.",
	}, []string{"backend"})
)

// collectors are registered by every Provision.
var collectors = []prometheus.Collector{backendCalls, backendDuration, responses, cacheRequests, breakerState}

// outcomes are the values of the outcome label, in outcomeIndex order.
var outcomes = [...]string{"ok", codeTimeout, codeStatus, codeUnreachable, codeInvalidJSON, codeTooLarge, codeCanceled, codeDependency, codeCircuitOpen}

func outcomeIndex(code string) int {
	switch code {
	case "":
		return 0
	case codeTimeout:
		return 1
	case codeStatus:
		return 2
	case codeUnreachable:
		return 3
	case codeInvalidJSON:
		return 4
	case codeTooLarge:
		return 5
	case codeDependency:
		return 7
	case codeCircuitOpen:
		return 8
	default:
		return 6
	}
}

// backendMetrics are one backend's children, resolved at Provision.
type backendMetrics struct {
	calls        [len(outcomes)]prometheus.Counter
	duration     prometheus.Observer
	hits, misses prometheus.Counter // with `cache`
	breaker      prometheus.Gauge   // with `breaker`
}

func newBackendMetrics(b *Backend) backendMetrics {
	var m backendMetrics
	for i, o := range outcomes {
		m.calls[i] = backendCalls.WithLabelValues(b.Name, o)
	}
	m.duration = backendDuration.WithLabelValues(b.Name)
	if b.Cache != nil {
		m.hits = cacheRequests.WithLabelValues(b.Name, "hit")
		m.misses = cacheRequests.WithLabelValues(b.Name, "miss")
	}
	if b.Breaker != nil {
		m.breaker = breakerState.WithLabelValues(b.Name)
	}
	return m
}

// observe counts one finished call.
func (m *backendMetrics) observe(code string, took time.Duration) {
	m.calls[outcomeIndex(code)].Inc()
	m.duration.Observe(took.Seconds())
}

// notCalled counts a backend that was not called (dependency,
// circuit_open): no latency to observe.
func (m *backendMetrics) notCalled(code string) {
	m.calls[outcomeIndex(code)].Inc()
}

// responseMetrics are the handler's response counters, resolved at
// Provision.
type responseMetrics struct {
	complete, partial, badGateway, gatewayTimeout, badRequest, clientGone prometheus.Counter
}

func newResponseMetrics() responseMetrics {
	return responseMetrics{
		complete:       responses.WithLabelValues("200", "true"),
		partial:        responses.WithLabelValues("200", "false"),
		badGateway:     responses.WithLabelValues("502", "false"),
		gatewayTimeout: responses.WithLabelValues("504", "false"),
		badRequest:     responses.WithLabelValues("400", "false"),
		clientGone:     responses.WithLabelValues("499", "false"),
	}
}

// envelope counts one envelope response.
func (m *responseMetrics) envelope(status int, complete bool) {
	switch {
	case complete:
		m.complete.Inc()
	case status == 200:
		m.partial.Inc()
	case status == 504:
		m.gatewayTimeout.Inc()
	default:
		m.badGateway.Inc()
	}
}
