package jwtauth

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// Bounds of remote key set handling. They are documented in the README.
const (
	// jwksDefaultRefresh applies when the JWKS response has no usable
	// Cache-Control max-age.
	jwksDefaultRefresh = 15 * time.Minute
	// jwksMinRefresh and jwksMaxRefresh clamp the max-age.
	jwksMinRefresh = time.Minute
	jwksMaxRefresh = 24 * time.Hour
	// jwksMissInterval is the least time between two fetches triggered by
	// tokens naming an unknown kid, per URL.
	jwksMissInterval = 5 * time.Second
	// jwksRetryMin and jwksRetryMax bound the back-off after a failed
	// fetch.
	jwksRetryMin = time.Second
	jwksRetryMax = 30 * time.Second
	// jwksFetchTimeout bounds one fetch (discovery plus key set).
	jwksFetchTimeout = 10 * time.Second
	// jwksMaxBody bounds a discovery document or key set.
	jwksMaxBody = 1 << 20
	// jwksMaxKeys bounds the keys taken from one set.
	jwksMaxKeys = 100
)

// remoteSets holds every remote key set, keyed by "jwks:<url>" or
// "oidc:<issuer>", shared by all handlers naming it and kept across config
// reloads while a handler uses it.
var remoteSets = caddy.NewUsagePool()

// keySet is one parsed JWK Set.
type keySet struct {
	keys []verificationKey
}

func (ks *keySet) candidates(a alg, kid string, hasKid bool, dst []verificationKey) []verificationKey {
	return staticKeySet(ks.keys).candidates(a, kid, hasKid, dst)
}

// remoteKeySet is a JWK Set fetched from a URL (jwks_url) or found through
// OpenID Connect discovery (oidc_issuer), refreshed in the background.
type remoteKeySet struct {
	// issuer binds the keys to one issuer (oidc_issuer); empty for jwks_url.
	issuer string
	// url is the JWKS URL (jwks_url), or found by discovery.
	url    string
	client *http.Client
	// logger is the logger of the config that last took the set: a set
	// outlives the config that made it.
	logger atomic.Pointer[zap.Logger]

	current    atomic.Pointer[keySet]
	generation atomic.Uint64 // bumped whenever the keys change
	nextTry    atomic.Int64  // unix nanos of the next background attempt
	lastResult atomic.Pointer[fetchResult]
	fetchedAt  atomic.Int64 // unix nanos of the last successful fetch

	mu          sync.Mutex
	inflight    chan struct{}
	lastMissTry time.Time
	jwksURI     string // from discovery

	ctx    context.Context
	cancel context.CancelFunc
}

// newRemoteKeySet makes the set and starts its refresh loop, which runs
// until Destruct. Only called once the config naming it is known good.
func newRemoteKeySet(issuer, url string, logger *zap.Logger) *remoteKeySet {
	ctx, cancel := context.WithCancel(context.Background())
	s := &remoteKeySet{
		issuer: issuer,
		url:    url,
		client: &http.Client{
			Timeout: jwksFetchTimeout,
			// Redirects are not followed: the configured URL is the one
			// trusted.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		ctx:    ctx,
		cancel: cancel,
	}
	s.logger.Store(logger)
	go s.refreshLoop()
	return s
}

// Destruct stops the background refresh; the pool calls it when the last
// handler using the set is cleaned up.
func (s *remoteKeySet) Destruct() error {
	s.cancel()
	return nil
}

// loaded reports whether a key set has ever loaded.
func (s *remoteKeySet) loaded() bool { return s.current.Load() != nil }

// retryAfter is how long until the next attempt to load the set, for the
// Retry-After of a 503, in whole seconds rounded up, at least 1.
func (s *remoteKeySet) retryAfter() int {
	d := time.Until(time.Unix(0, s.nextTry.Load()))
	secs := max(int((d+time.Second-1)/time.Second), 1)
	return secs
}

func (s *remoteKeySet) refreshLoop() {
	backoff := jwksRetryMin
	for {
		next, err := s.fetchCoalesced()
		if err != nil {
			next = backoff
			backoff = min(backoff*2, jwksRetryMax)
		} else {
			backoff = jwksRetryMin
		}
		s.nextTry.Store(time.Now().Add(next).UnixNano())
		t := time.NewTimer(next)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// refreshForMiss refetches the set for a token naming a kid the set lacks,
// at most once per jwksMissInterval; concurrent misses share one fetch. It
// waits for that fetch until ctx ends.
func (s *remoteKeySet) refreshForMiss(ctx context.Context) {
	s.refetch(ctx)
}

// fetchCoalesced fetches now (or joins a fetch under way) and returns how
// long until the next scheduled refresh.
func (s *remoteKeySet) fetchCoalesced() (time.Duration, error) {
	s.mu.Lock()
	ch := s.inflight
	if ch == nil {
		ch = s.startFetchLocked()
	}
	s.mu.Unlock()
	select {
	case <-ch:
	case <-s.ctx.Done():
		return 0, s.ctx.Err()
	}
	res := s.lastResult.Load()
	return res.next, res.err
}

type fetchResult struct {
	next time.Duration
	err  error
	at   time.Time // when the fetch ended
}

// startFetchLocked starts one fetch in its own goroutine, bound to the
// set's lifetime rather than any request. s.mu must be held.
func (s *remoteKeySet) startFetchLocked() chan struct{} {
	ch := make(chan struct{})
	s.inflight = ch
	go func() {
		next, err := s.fetch()
		s.lastResult.Store(&fetchResult{next: next, err: err, at: time.Now()})
		s.mu.Lock()
		s.inflight = nil
		s.mu.Unlock()
		close(ch)
	}()
	return ch
}

// fetch loads the set once. On failure the last good set stays in use.
func (s *remoteKeySet) fetch() (time.Duration, error) {
	ctx, cancel := context.WithTimeout(s.ctx, jwksFetchTimeout)
	defer cancel()
	url := s.url
	if s.issuer != "" {
		s.mu.Lock()
		url = s.jwksURI
		s.mu.Unlock()
		if url == "" {
			u, err := s.discover(ctx)
			if err != nil {
				jwksFetchError.Inc()
				s.logger.Load().Warn("OpenID discovery failed; keeping the last key set", zap.String("issuer", s.issuer), zap.Error(err))
				return 0, err
			}
			s.mu.Lock()
			s.jwksURI = u
			s.mu.Unlock()
			url = u
		}
	}
	body, header, err := s.get(ctx, url)
	if err != nil {
		if s.issuer != "" {
			// Rediscover next time: the provider may have moved its keys.
			s.mu.Lock()
			s.jwksURI = ""
			s.mu.Unlock()
		}
		jwksFetchError.Inc()
		s.logger.Load().Warn("fetching JWKS failed; keeping the last key set", zap.String("url", url), zap.Error(err))
		return 0, err
	}
	keys, skipped, err := parseJWKS(body, false)
	if err != nil {
		jwksFetchError.Inc()
		s.logger.Load().Warn("invalid JWKS; keeping the last key set", zap.String("url", url), zap.Error(err))
		return 0, err
	}
	if len(skipped) > 0 {
		// One line per fetch, however much junk the set holds.
		s.logger.Load().Warn("JWKS keys skipped", zap.String("url", url),
			zap.Int("skipped", len(skipped)), zap.Strings("reasons", firstReasons(skipped)))
	}
	if old := s.current.Load(); old == nil || !sameKeys(old.keys, keys) {
		s.current.Store(&keySet{keys: keys})
		s.generation.Add(1)
	}
	jwksFetchOK.Inc()
	s.fetchedAt.Store(time.Now().UnixNano())
	return refreshInterval(header.Get("Cache-Control")), nil
}

// discover reads <issuer>/.well-known/openid-configuration and returns its
// jwks_uri. The document must name the same issuer (OpenID Connect
// Discovery 1.0 §4.3).
func (s *remoteKeySet) discover(ctx context.Context) (string, error) {
	body, _, err := s.get(ctx, strings.TrimSuffix(s.issuer, "/")+"/.well-known/openid-configuration")
	if err != nil {
		return "", err
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("discovery document: %w", err)
	}
	if doc.Issuer != s.issuer {
		return "", fmt.Errorf("discovery document names issuer %q, not %q", doc.Issuer, s.issuer)
	}
	if !strings.HasPrefix(doc.JWKSURI, "https://") && !strings.HasPrefix(doc.JWKSURI, "http://") {
		return "", errors.New("discovery document has no http(s) jwks_uri")
	}
	return doc.JWKSURI, nil
}

func (s *remoteKeySet) get(ctx context.Context, url string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, jwksMaxBody))
		return nil, nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBody+1))
	if err != nil {
		return nil, nil, err
	}
	if len(body) > jwksMaxBody {
		return nil, nil, fmt.Errorf("body larger than %d bytes", jwksMaxBody)
	}
	return body, resp.Header, nil
}

// refreshInterval reads max-age from Cache-Control, clamped to
// [jwksMinRefresh, jwksMaxRefresh]; no-store or no-cache mean
// jwksMinRefresh (the issuer wants the set fetched afresh); jwksDefaultRefresh
// without any of them.
func refreshInterval(cacheControl string) time.Duration {
	interval := jwksDefaultRefresh
	for dir := range strings.SplitSeq(cacheControl, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(dir), "=")
		switch {
		case strings.EqualFold(name, "no-store"), strings.EqualFold(name, "no-cache"):
			return jwksMinRefresh
		case strings.EqualFold(name, "max-age") && interval == jwksDefaultRefresh:
			secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64)
			if err != nil || secs < 0 {
				continue
			}
			d := time.Duration(min(secs, int64(jwksMaxRefresh/time.Second))) * time.Second
			interval = min(max(d, jwksMinRefresh), jwksMaxRefresh)
		}
	}
	return interval
}

// maxLoggedReasons bounds the reasons a "keys skipped" line carries.
const maxLoggedReasons = 5

func firstReasons(reasons []string) []string {
	if len(reasons) > maxLoggedReasons {
		return append(reasons[:maxLoggedReasons:maxLoggedReasons], fmt.Sprintf("and %d more", len(reasons)-maxLoggedReasons))
	}
	return reasons
}

func sameKeys(a, b []verificationKey) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].kid != b[i].kid || a[i].algs != b[i].algs || !keyEqual(a[i].key, b[i].key) {
			return false
		}
	}
	return true
}

func keyEqual(a, b any) bool {
	switch x := a.(type) {
	case []byte:
		y, ok := b.([]byte)
		return ok && string(x) == string(y)
	case interface{ Equal(crypto.PublicKey) bool }:
		return x.Equal(b)
	}
	return false
}
