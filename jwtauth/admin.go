package jwtauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"strings"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"
)

// The admin API (admin.api.gateway) sees the key sets through
// registry.JWTKeySets: every remote set (shared by the handlers naming it,
// listed once) and each handler's local sets (secret, public_key,
// jwks_file). A handler joins at the end of Provision and leaves in
// Cleanup. Only kids, algorithms and key types are shown: never key
// material.

// adminFile is the keys one jwks_file contributed.
type adminFile struct {
	file string
	keys []verificationKey
}

// localKeySets is a handler's own key sets, as the admin API shows them.
type localKeySets struct {
	realm      string
	static     []verificationKey // secret and public_key
	publicKeys []string          // the public_key files
	files      []adminFile
}

// AdminKeySets implements registry.JWTKeySetSource.
func (l *localKeySets) AdminKeySets() []registry.JWTKeySet {
	var out []registry.JWTKeySet
	if len(l.static) > 0 {
		out = append(out, registry.JWTKeySet{
			Source: "static", File: l.publicKeys, Realm: l.realm, Loaded: true, Keys: adminKeys(l.static),
		})
	}
	for _, f := range l.files {
		out = append(out, registry.JWTKeySet{
			Source: "jwks_file", File: []string{f.file}, Realm: l.realm, Loaded: true, Keys: adminKeys(f.keys),
		})
	}
	return out
}

// joinAdmin makes the handler's key sets visible to the admin API.
func (h *Handler) joinAdmin() {
	if len(h.adminLocal.static) > 0 || len(h.adminLocal.files) > 0 {
		h.adminLocal.realm = h.Realm
		h.adminLocal.publicKeys = h.PublicKeys
		h.admin = append(h.admin, &h.adminLocal)
	}
	for _, rs := range h.verifier.remote {
		h.admin = append(h.admin, rs)
	}
	for _, s := range h.admin {
		registry.JWTKeySets.Join(s)
	}
}

// leaveAdmin undoes joinAdmin.
func (h *Handler) leaveAdmin() {
	for _, s := range h.admin {
		registry.JWTKeySets.Leave(s)
	}
	h.admin = nil
}

// poolKey is the set's key in remoteSets.
func (s *remoteKeySet) poolKey() string {
	if s.issuer != "" {
		return "oidc:" + s.issuer
	}
	return "jwks:" + s.url
}

// source and url name the set.
func (s *remoteKeySet) source() (source, url string) {
	if s.issuer != "" {
		s.mu.Lock()
		defer s.mu.Unlock()
		return "oidc_issuer", s.jwksURI
	}
	return "jwks_url", s.url
}

// AdminKeySets implements registry.JWTKeySetSource.
func (s *remoteKeySet) AdminKeySets() []registry.JWTKeySet {
	src, url := s.source()
	set := registry.JWTKeySet{Source: src, URL: url, Issuer: s.issuer, Keys: []registry.JWTKey{}}
	if ks := s.current.Load(); ks != nil {
		set.Loaded = true
		set.Keys = adminKeys(ks.keys)
	}
	set.FetchedAt = unixTime(s.fetchedAt.Load())
	if res := s.lastResult.Load(); res != nil {
		set.LastAttempt = timePtr(res.at)
		if res.err != nil {
			set.LastError = res.err.Error()
		}
	}
	set.NextRefresh = unixTime(s.nextTry.Load())
	set.Handlers, _ = remoteSets.References(s.poolKey())
	return []registry.JWTKeySet{set}
}

// Refresh outcomes.
const (
	refreshFetched = "fetched"
	refreshJoined  = "joined"
	refreshRecent  = "recent"
)

// AdminRefresh implements registry.JWTRefresher: a fetch now, bounded with
// the unknown-kid refetch (at most one on-demand fetch per
// jwksMissInterval): inside the interval it joins the fetch under way, or
// reports the last one.
func (s *remoteKeySet) AdminRefresh(ctx context.Context) registry.JWTRefreshResult {
	how := s.refetch(ctx)
	src, url := s.source()
	res := registry.JWTRefreshResult{Source: src, URL: url, Issuer: s.issuer, Fetched: how}
	if ks := s.current.Load(); ks != nil {
		res.Keys = len(ks.keys)
	}
	res.FetchedAt = unixTime(s.fetchedAt.Load())
	if last := s.lastResult.Load(); last != nil && last.err != nil {
		res.LastError = last.err.Error()
	}
	return res
}

// refetch fetches the set on demand, at most once per jwksMissInterval;
// concurrent callers share one fetch. It waits for that fetch until ctx
// ends, and tells whether it fetched, joined a fetch under way, or did
// nothing because one ran less than the interval ago.
func (s *remoteKeySet) refetch(ctx context.Context) string {
	s.mu.Lock()
	ch := s.inflight
	how := refreshJoined
	if ch == nil {
		if time.Since(s.lastMissTry) < jwksMissInterval {
			s.mu.Unlock()
			return refreshRecent
		}
		s.lastMissTry = time.Now()
		ch = s.startFetchLocked()
		how = refreshFetched
	}
	s.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return how
}

// adminKeys describes keys without their material.
func adminKeys(keys []verificationKey) []registry.JWTKey {
	out := make([]registry.JWTKey, len(keys))
	for i, k := range keys {
		out[i] = registry.JWTKey{Kid: k.kid, Alg: strings.Fields(k.algs.String())}
		switch pub := k.key.(type) {
		case []byte:
			out[i].Kty = "oct"
		case *rsa.PublicKey:
			out[i].Kty = "RSA"
		case *ecdsa.PublicKey:
			out[i].Kty, out[i].Crv = "EC", pub.Curve.Params().Name
		case ed25519.PublicKey:
			out[i].Kty, out[i].Crv = "OKP", "Ed25519"
		}
	}
	return out
}

func unixTime(ns int64) *time.Time {
	if ns == 0 {
		return nil
	}
	return timePtr(time.Unix(0, ns))
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

var (
	_ registry.JWTRefresher    = (*remoteKeySet)(nil)
	_ registry.JWTKeySetSource = (*localKeySets)(nil)
)
