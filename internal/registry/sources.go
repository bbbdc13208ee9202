package registry

import "time"

// The admin API's views of the handlers' live state. Each module package
// makes its live handlers (or the state they share) join one of these sets
// at Provision and leave it at Cleanup; package admin only reads them. The
// JSON field names are the admin API's documented answer fields.

// APIKeyEntry is one api_key credential as the admin API shows it: never its
// digest.
type APIKeyEntry struct {
	// ID names the credential (never secret).
	ID string `json:"id"`
	// Identity is the consumer the key authenticates ({http.auth.user.id}).
	Identity string `json:"identity"`
	// NotBefore and Expires bound its validity (RFC 3339), when set.
	NotBefore *time.Time `json:"not_before,omitempty"`
	Expires   *time.Time `json:"expires,omitempty"`
	// Disabled keys are refused.
	Disabled bool `json:"disabled"`
}

// APIKeySource is implemented by a provisioned api_key handler.
type APIKeySource interface {
	// AdminAPIKeys returns the handler's name for the admin API (its realm,
	// or the server and route it sits in) and its entries in config order.
	AdminAPIKeys() (name string, entries []APIKeyEntry)
}

// APIKeys holds every live api_key handler.
var APIKeys Set[APIKeySource]

// AggregateBackend is one aggregate backend's breaker and cache state.
type AggregateBackend struct {
	// Name is the backend's name in the config.
	Name string `json:"name"`
	// Breaker is "closed", "open" or "half_open"; empty without a breaker.
	Breaker string `json:"breaker,omitempty"`
	// Failures counts the failures in a row the breaker has seen.
	Failures int `json:"failures"`
	// CacheEntries and CacheBytes describe the backend's cache (zero
	// without one); CacheMaxEntries is its bound.
	CacheEntries    int   `json:"cache_entries"`
	CacheBytes      int64 `json:"cache_bytes"`
	CacheMaxEntries int   `json:"cache_max_entries,omitempty"`
}

// AggregateSource is implemented by a provisioned aggregate handler.
type AggregateSource interface {
	// AdminAggregate returns the backends of one aggregate handler in config
	// order.
	AdminAggregate() []AggregateBackend
}

// Aggregates holds every live aggregate handler.
var Aggregates Set[AggregateSource]
