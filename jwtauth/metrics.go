package jwtauth

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are jwt_auth's collectors. They are built once and registered on
// every config's metrics registry; their labels come from a small fixed set
// of values, never from token content.
type metrics struct {
	verifications *prometheus.CounterVec
	jwksFetches   *prometheus.CounterVec
	cache         *prometheus.CounterVec
}

var jwtMetrics = &metrics{
	verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "jwt_auth",
		Name:      "verifications_total",
		Help:      "Requests seen by jwt_auth, by result: ok, anonymous, preflight, no_token, bad_request, malformed, algorithm, signature, expired, claims, no_key, unavailable, forbidden.",
	}, []string{"result"}),
	jwksFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "jwt_auth",
		Name:      "jwks_fetches_total",
		Help:      "JWKS and OpenID discovery fetches, by outcome: ok, error.",
	}, []string{"outcome"}),
	cache: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "jwt_auth",
		Name:      "cache_lookups_total",
		Help:      "Verified-token cache lookups, by result: hit, miss.",
	}, []string{"result"}),
}

// register adds the collectors to a registry; already registered is fine
// (a reload registers them again).
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.verifications, m.jwksFetches, m.cache} {
		if err := reg.Register(c); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				return err
			}
		}
	}
	return nil
}

func (m *metrics) jwksFetch(outcome string) {
	if m != nil {
		m.jwksFetches.WithLabelValues(outcome).Inc()
	}
}

// result maps a refusal reason to its metric label.
func resultLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, errNoToken):
		return "no_token"
	case errors.Is(err, errMalformed), errors.Is(err, errTooLarge), errors.Is(err, errCrit), errors.Is(err, errKid), errors.Is(err, errType):
		return "malformed"
	case errors.Is(err, errAlgorithm):
		return "algorithm"
	case errors.Is(err, errSignature):
		return "signature"
	case errors.Is(err, errExpired), errors.Is(err, errNotYetValid), errors.Is(err, errIssuedFuture), errors.Is(err, errLifetime):
		return "expired"
	case errors.Is(err, errNoKey):
		return "no_key"
	case errors.Is(err, errUnavailable):
		return "unavailable"
	case errors.Is(err, errScope), errors.Is(err, errClaimMismatch):
		return "forbidden"
	case errors.Is(err, errManyTokens), errors.Is(err, errEmptyToken):
		return "bad_request"
	default:
		return "claims"
	}
}
