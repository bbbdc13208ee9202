package registry

import (
	"context"
	"time"
)

// JWTKey is one verification key as the admin API shows it: never its
// material.
type JWTKey struct {
	// Kid is the key's JWK kid; empty for keys configured without one.
	Kid string `json:"kid"`
	// Alg lists the algorithms the key is pinned to.
	Alg []string `json:"alg"`
	// Kty is the JWK key type: "RSA", "EC", "OKP" or "oct".
	Kty string `json:"kty"`
	// Crv is the curve of an EC or OKP key.
	Crv string `json:"crv,omitempty"`
}

// JWTKeySet is one key set of a jwt_auth handler (or one remote set shared
// by several).
type JWTKeySet struct {
	// Source is "jwks_url", "oidc_issuer", "jwks_file" or "static" (secret
	// and public_key).
	Source string `json:"source"`
	// URL is the JWKS URL (for oidc_issuer, the jwks_uri discovery found).
	URL string `json:"url,omitempty"`
	// Issuer is the oidc_issuer.
	Issuer string `json:"issuer,omitempty"`
	// File is the jwks_file, or the public_key files of a static set.
	File []string `json:"file,omitempty"`
	// Realm names the handler of a set local to one handler.
	Realm string `json:"realm,omitempty"`
	// Loaded is false while a remote set has never loaded.
	Loaded bool `json:"loaded"`
	// Keys are the set's keys.
	Keys []JWTKey `json:"keys"`
	// FetchedAt is when the remote set was last fetched successfully;
	// LastAttempt when a fetch last finished; NextRefresh when the next
	// background fetch is due.
	FetchedAt   *time.Time `json:"fetched_at,omitempty"`
	LastAttempt *time.Time `json:"last_attempt,omitempty"`
	NextRefresh *time.Time `json:"next_refresh,omitempty"`
	// LastError is the error of the last fetch, empty when it succeeded.
	LastError string `json:"last_error,omitempty"`
	// Handlers is the number of live handlers using a remote set.
	Handlers int `json:"handlers,omitempty"`
}

// JWTKeySetSource is a live key set, or a handler's local sets.
type JWTKeySetSource interface {
	// AdminKeySets returns the sets as they are now.
	AdminKeySets() []JWTKeySet
}

// JWTRefreshResult is what a refresh did for one remote set.
type JWTRefreshResult struct {
	// Source, URL and Issuer name the set.
	Source string `json:"source"`
	URL    string `json:"url,omitempty"`
	Issuer string `json:"issuer,omitempty"`
	// Fetched is "fetched" (this refresh fetched), "joined" (it waited
	// for a fetch under way) or "recent" (a fetch finished less than the
	// minimum interval ago: its result is reported).
	Fetched string `json:"fetched"`
	// Keys is the number of keys after the fetch; FetchedAt and LastError
	// as in JWTKeySet.
	Keys      int        `json:"keys"`
	FetchedAt *time.Time `json:"fetched_at,omitempty"`
	LastError string     `json:"last_error,omitempty"`
}

// JWTRefresher is a remote key set that can be fetched on demand.
type JWTRefresher interface {
	JWTKeySetSource
	// AdminRefresh fetches the set now, at most once per minimum interval
	// (with the unknown-kid refetch): inside the interval it joins the
	// fetch under way or reports the last one. It waits until ctx ends.
	AdminRefresh(ctx context.Context) JWTRefreshResult
}

// JWTKeySets holds every live key set: the remote ones (shared by the
// handlers naming them, listed once; they implement JWTRefresher) and each
// handler's local ones.
var JWTKeySets Set[JWTKeySetSource]
