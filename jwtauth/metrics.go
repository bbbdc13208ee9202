package jwtauth

import (
	"errors"

	"github.com/caddygateway/caddy-gateway/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyserver/caddy/v2"
)

// jwt_auth's collectors, built once and registered on every config's
// metrics registry (internal/metrics.Register). Their labels come from small
// fixed sets, never from a request or a token.
var (
	verificationsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "jwt_auth",
		Name:      "verifications_total",
		Help:      "Requests seen by jwt_auth, by result: ok, anonymous, preflight, no_token, bad_request, malformed, algorithm, signature, expired, claims, no_key, unavailable, forbidden.",
	}, []string{"result"})
	jwksFetchesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "jwt_auth",
		Name:      "jwks_fetches_total",
		Help:      "JWKS and OpenID discovery fetches, by outcome: ok, error.",
	}, []string{"outcome"})
	cacheLookupsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "jwt_auth",
		Name:      "cache_lookups_total",
		Help:      "Verified-token cache lookups, by result: hit, miss.",
	}, []string{"result"})
)

// result is the label of verificationsTotal for one request.
type result uint8

const (
	resultOK result = iota
	resultAnonymous
	resultPreflight
	resultNoToken
	resultBadRequest
	resultMalformed
	resultAlgorithm
	resultSignature
	resultExpired
	resultClaims
	resultNoKey
	resultUnavailable
	resultForbidden
	numResults
)

var resultNames = [numResults]string{
	"ok", "anonymous", "preflight", "no_token", "bad_request", "malformed",
	"algorithm", "signature", "expired", "claims", "no_key", "unavailable", "forbidden",
}

// counters are the labelled children a handler uses, resolved once at
// Provision so that a request only increments.
type counters struct {
	results             [numResults]prometheus.Counter
	cacheHit, cacheMiss prometheus.Counter
}

// jwksFetchOK and jwksFetchError count remote key set fetches; remote sets
// outlive configs, so they are resolved once for the process.
var (
	jwksFetchOK    = jwksFetchesTotal.WithLabelValues("ok")
	jwksFetchError = jwksFetchesTotal.WithLabelValues("error")
)

// newCounters registers the collectors on the config's registry and
// resolves the handler's counters.
func newCounters(ctx caddy.Context) (*counters, error) {
	if err := metrics.Register(ctx.GetMetricsRegistry(), verificationsTotal, jwksFetchesTotal, cacheLookupsTotal); err != nil {
		return nil, err
	}
	c := &counters{
		cacheHit:  cacheLookupsTotal.WithLabelValues("hit"),
		cacheMiss: cacheLookupsTotal.WithLabelValues("miss"),
	}
	for i, name := range resultNames {
		c.results[i] = verificationsTotal.WithLabelValues(name)
	}
	return c, nil
}

// resultOf maps a refusal reason to its result label.
func resultOf(err error) result {
	switch {
	case err == nil:
		return resultOK
	case errors.Is(err, errNoToken):
		return resultNoToken
	case errors.Is(err, errMalformed), errors.Is(err, errTooLarge), errors.Is(err, errCrit), errors.Is(err, errKid), errors.Is(err, errType):
		return resultMalformed
	case errors.Is(err, errAlgorithm):
		return resultAlgorithm
	case errors.Is(err, errSignature):
		return resultSignature
	case errors.Is(err, errExpired), errors.Is(err, errNotYetValid), errors.Is(err, errIssuedFuture), errors.Is(err, errLifetime):
		return resultExpired
	case errors.Is(err, errNoKey):
		return resultNoKey
	case errors.Is(err, errUnavailable):
		return resultUnavailable
	case errors.Is(err, errScope), errors.Is(err, errClaimMismatch):
		return resultForbidden
	case errors.Is(err, errManyTokens), errors.Is(err, errEmptyToken):
		return resultBadRequest
	default:
		return resultClaims
	}
}
