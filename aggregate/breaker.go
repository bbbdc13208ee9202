package aggregate

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// breaker is one backend's circuit breaker, kept across reloads that leave
// the backend unchanged (a caddy.UsagePool value). The state machine is
// gobreaker's: closed until `failures` failures in a row, then open for
// `cooldown`, then half-open for exactly one trial call, whose success
// closes it and whose failure opens it again.
type breaker struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
	// run counts the failures in a row, for the admin API (gobreaker
	// clears its counts when the state changes).
	run atomic.Int64
}

// errFailure is what a failed call reports to gobreaker; errCanceled, a
// call the client abandoned, counts neither way.
var (
	errFailure  = errors.New("backend failure")
	errCanceled = errors.New("canceled")
)

func newBreaker(name string, failures int, cooldown time.Duration, state prometheus.Gauge) *breaker {
	b := &breaker{}
	state.Set(stateValue(gobreaker.StateClosed))
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        name,
		MaxRequests: 1,
		Timeout:     cooldown,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= uint32(failures)
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errCanceled) },
		OnStateChange: func(_ string, _, to gobreaker.State) {
			state.Set(stateValue(to))
		},
	})
	return b
}

// Destruct implements caddy.Destructor: a breaker holds nothing to release.
func (*breaker) Destruct() error { return nil }

// allow asks for a call: it returns the function that reports the call's
// outcome code, or nil when the breaker refuses (open, or half-open with its
// trial call under way).
func (b *breaker) allow() func(code string) {
	done, err := b.cb.Allow()
	if err != nil {
		return nil
	}
	return func(code string) {
		switch {
		case code == codeCanceled:
			done(errCanceled)
		case breakerFailure(code):
			b.run.Add(1)
			done(errFailure)
		default:
			b.run.Store(0)
			done(nil)
		}
	}
}

// breakerFailure reports whether an outcome counts as a failure: a timeout,
// no response, or a 5xx (code status with a 5xx is passed as codeStatus5xx).
func breakerFailure(code string) bool {
	return code == codeTimeout || code == codeUnreachable || code == codeStatus5xx
}

// codeStatus5xx is the outcome reported to the breaker for a 5xx status
// (the envelope says `status`).
const codeStatus5xx = "status_5xx"

// state returns the breaker's state for the admin API.
func (b *breaker) state() string {
	switch b.cb.State() {
	case gobreaker.StateOpen:
		return "open"
	case gobreaker.StateHalfOpen:
		return "half_open"
	case gobreaker.StateClosed:
		return "closed"
	default:
		return "closed"
	}
}

// stateValue is the caddy_aggregate_breaker_state gauge's value: 0 closed,
// 1 half-open, 2 open.
func stateValue(s gobreaker.State) float64 {
	switch s {
	case gobreaker.StateOpen:
		return 2
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateClosed:
		return 0
	default:
		return 0
	}
}
