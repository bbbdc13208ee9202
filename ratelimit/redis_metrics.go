package ratelimit

import (
	gwmetrics "github.com/caddygateway/caddy-gateway/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Collectors of the redis block, labelled by zone (and policy) only: built
// once, registered at every Provision.
var (
	redisCallsVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "redis_calls_total",
		Help: "Calls of the throttle script on Redis.",
	}, []string{"zone"})
	redisErrorsVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "redis_errors_total",
		Help: "Calls of the throttle script that failed or timed out.",
	}, []string{"zone"})
	redisFallbacksVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "redis_fallbacks_total",
		Help: "Requests decided by the on_error policy because Redis could not answer.",
	}, []string{"zone", "policy"})
	redisLocalRefusalsVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "redis_local_refusals_total",
		Help: "Requests refused without asking Redis, because Redis refused their client and its wait is not over.",
	}, []string{"zone"})
	redisDurationVec = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "throttle", Name: "redis_call_duration_seconds",
		Help:    "Duration of the calls of the throttle script on Redis, failed ones included.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"zone"})
)

// redisCounters are the redis collectors of one handler, resolved once.
type redisCounters struct {
	calls, errors, fallbacks, localRefusals prometheus.Counter
	duration                                prometheus.Observer
}

// newRedisCounters registers the collectors on reg and resolves the
// children of zone and policy.
func newRedisCounters(reg prometheus.Registerer, zone, policy string) (redisCounters, error) {
	err := gwmetrics.Register(reg, redisCallsVec, redisErrorsVec, redisFallbacksVec, redisLocalRefusalsVec, redisDurationVec)
	return redisCounters{
		calls:         redisCallsVec.WithLabelValues(zone),
		errors:        redisErrorsVec.WithLabelValues(zone),
		fallbacks:     redisFallbacksVec.WithLabelValues(zone, policy),
		localRefusals: redisLocalRefusalsVec.WithLabelValues(zone),
		duration:      redisDurationVec.WithLabelValues(zone),
	}, err
}
