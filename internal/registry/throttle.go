package registry

import (
	"context"
	"errors"
	"net/netip"
)

// ThrottleRate is one rate of a throttle zone.
type ThrottleRate struct {
	// Name is the rate's item name in the RateLimit headers: the zone's
	// name, then <zone>-2, <zone>-3, ...
	Name string `json:"name"`
	// Events per Period, with bursts of up to Burst requests.
	Events int    `json:"events"`
	Period string `json:"period"`
	Burst  int    `json:"burst"`
}

// ThrottleZoneInfo describes one live throttle zone.
type ThrottleZoneInfo struct {
	// Name is the zone's name; an unnamed zone (private to its handler) is
	// named "throttle".
	Name string `json:"name"`
	// Named is false for a handler without a zone.
	Named bool `json:"named"`
	// Rates are the zone's rates, in config order.
	Rates []ThrottleRate `json:"rates"`
	// Concurrent is the limit of requests of one key in progress; 0 when
	// the zone has none.
	Concurrent int `json:"concurrent"`
	// Engine is "memory" or "redis".
	Engine string `json:"engine"`
	// Keys is the number of keys the zone holds in this instance's memory
	// (for a Redis zone: its on_error local state).
	Keys int `json:"keys"`
	// MaxKeys bounds Keys.
	MaxKeys int `json:"max_keys"`
	// IPv4Prefix and IPv6Prefix group client addresses.
	IPv4Prefix int `json:"ipv4_prefix"`
	IPv6Prefix int `json:"ipv6_prefix"`
	// Handlers is the number of live handlers using the zone.
	Handlers int `json:"handlers"`
	// Seq orders zone states by creation (the higher, the newer): when
	// several share a name (handlers without a zone, or a reload changing
	// a zone's rates), the newest answers a GET.
	Seq uint64 `json:"-"`
}

// ThrottleQuery names one client of a zone: either IP, the client address
// (grouped by the zone's prefixes as a request's would be, and counted in
// the client-IP namespace), or Key, the value a configured key resolved to
// (in the configured-key namespace, never shared with the client IP's).
type ThrottleQuery struct {
	IP  netip.Addr
	Key string
}

// ThrottleClientRate is one client's state under one rate.
type ThrottleClientRate struct {
	// Name is the rate's item name.
	Name string `json:"name"`
	// Burst is the rate's bucket size; Remaining the requests the client
	// may make now.
	Burst     int   `json:"burst"`
	Remaining int64 `json:"remaining"`
	// RetryAfter is the number of seconds until the client's next request
	// passes (0: now); FullIn the seconds until the bucket is full again.
	RetryAfter float64 `json:"retry_after"`
	FullIn     float64 `json:"full_in"`
}

// ThrottleClient is one client's state in a zone.
type ThrottleClient struct {
	// Zone is the zone's name.
	Zone string `json:"zone"`
	// Kind is "ip" (the client-IP namespace) or "key" (a configured key).
	Kind string `json:"kind"`
	// Client is what the client is counted under: the address grouped by
	// the zone's prefix ("203.0.113.0/24"), or the key's text (an address
	// given as a key is grouped the same way).
	Client string `json:"client"`
	// ID is the client's key in text form: "c:<addr>/<bits>" for the
	// client IP, "a:<addr>/<bits>" for a configured key that is an address,
	// "t:<text>" for another configured key (the form Redis key names use).
	ID string `json:"id"`
	// Rates holds the state under each rate, in config order.
	Rates []ThrottleClientRate `json:"rates"`
	// InProgress is the number of the client's requests in progress (in
	// this instance, or fleet-wide on Redis); Concurrent the limit (0:
	// none).
	InProgress int `json:"in_progress"`
	Concurrent int `json:"concurrent"`
	// Engine is "memory" or "redis"; Source says where the state was read:
	// "memory", "redis", or "local" when Redis could not answer and the
	// on_error local state was read instead.
	Engine string `json:"engine"`
	Source string `json:"source"`
}

// Errors a view returns (wrapped), which the admin API turns into statuses.
var (
	// ErrBadQuery: a query the view cannot answer, such as an empty key
	// (400).
	ErrBadQuery = errors.New("bad query")
	// ErrNotFound: the thing asked for is not (or no longer) loaded (404).
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: a shared store (Redis) could not be reached; what
	// could be done locally was (503).
	ErrUnavailable = errors.New("unavailable")
)

// ThrottleZone is the admin API's view of one live zone state (shared by
// every handler naming the zone, and listed once).
type ThrottleZone interface {
	// AdminZone describes the zone.
	AdminZone() ThrottleZoneInfo
	// AdminClient returns one client's state without changing it.
	AdminClient(ctx context.Context, q ThrottleQuery) (ThrottleClient, error)
	// AdminReset resets one client, as if it had not made a request: in
	// memory, and for a Redis zone in Redis, telling every instance to
	// forget its refusal. It returns the client's state afterwards.
	AdminReset(ctx context.Context, q ThrottleQuery) (ThrottleClient, error)
}

// ThrottleZones holds every live zone state.
var ThrottleZones Set[ThrottleZone]

// ThrottleConcurrency is the concurrency limiter of a zone (`concurrent`),
// as the zone view asks it.
type ThrottleConcurrency interface {
	// Concurrent returns the limit of requests of one key in progress.
	Concurrent() int
	// InProgress returns the number of requests of the client with key id
	// (ThrottleClient.ID's form) in progress: in this instance in memory,
	// fleet-wide (live leases) on Redis.
	InProgress(ctx context.Context, id string) (int, error)
}
