package jwtauth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
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
	url     string
	client  *http.Client
	logger  *zap.Logger
	metrics *metrics

	current    atomic.Pointer[keySet]
	generation atomic.Uint64 // bumped whenever the keys change
	nextTry    atomic.Int64  // unix nanos of the next background attempt
	lastResult atomic.Pointer[fetchResult]

	mu          sync.Mutex
	inflight    chan struct{}
	lastMissTry time.Time
	jwksURI     string // from discovery

	ctx    context.Context
	cancel context.CancelFunc
}

func newRemoteKeySet(issuer, url string, logger *zap.Logger, m *metrics) *remoteKeySet {
	ctx, cancel := context.WithCancel(context.Background())
	s := &remoteKeySet{
		issuer:  issuer,
		url:     url,
		logger:  logger,
		metrics: m,
		client: &http.Client{
			Timeout: jwksFetchTimeout,
			// Redirects are not followed: the configured URL is the one
			// trusted.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		ctx:    ctx,
		cancel: cancel,
	}
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
	s.mu.Lock()
	ch := s.inflight
	if ch == nil {
		if time.Since(s.lastMissTry) < jwksMissInterval {
			s.mu.Unlock()
			return
		}
		s.lastMissTry = time.Now()
		ch = s.startFetchLocked()
	}
	s.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
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
}

// startFetchLocked starts one fetch in its own goroutine, bound to the
// set's lifetime rather than any request. s.mu must be held.
func (s *remoteKeySet) startFetchLocked() chan struct{} {
	ch := make(chan struct{})
	s.inflight = ch
	go func() {
		next, err := s.fetch()
		s.lastResult.Store(&fetchResult{next: next, err: err})
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
				s.metrics.jwksFetch("error")
				s.logger.Warn("OpenID discovery failed; keeping the last key set", zap.String("issuer", s.issuer), zap.Error(err))
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
		s.metrics.jwksFetch("error")
		s.logger.Warn("fetching JWKS failed; keeping the last key set", zap.String("url", url), zap.Error(err))
		return 0, err
	}
	keys, skipped, err := parseJWKS(body, false)
	if err != nil {
		s.metrics.jwksFetch("error")
		s.logger.Warn("invalid JWKS; keeping the last key set", zap.String("url", url), zap.Error(err))
		return 0, err
	}
	for _, msg := range skipped {
		s.logger.Warn("JWKS key skipped", zap.String("url", url), zap.String("reason", msg))
	}
	if old := s.current.Load(); old == nil || !sameKeys(old.keys, keys) {
		s.current.Store(&keySet{keys: keys})
		s.generation.Add(1)
	}
	s.metrics.jwksFetch("ok")
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
// [jwksMinRefresh, jwksMaxRefresh]; jwksDefaultRefresh without one.
func refreshInterval(cacheControl string) time.Duration {
	for dir := range strings.SplitSeq(cacheControl, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(dir), "=")
		if !strings.EqualFold(name, "max-age") {
			continue
		}
		secs, err := strconv.ParseInt(strings.Trim(value, `"`), 10, 64)
		if err != nil || secs < 0 {
			break
		}
		d := time.Duration(min(secs, int64(jwksMaxRefresh/time.Second))) * time.Second
		return min(max(d, jwksMinRefresh), jwksMaxRefresh)
	}
	return jwksDefaultRefresh
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

// jwk is one JSON Web Key (RFC 7517), the members this module reads.
type jwk struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Alg    string   `json:"alg"`
	Use    string   `json:"use"`
	KeyOps []string `json:"key_ops"`
	Crv    string   `json:"crv"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
	K      string   `json:"k"`
	D      string   `json:"d"`
}

// parseJWKS parses a JWK Set. Keys that are weak, not for signatures,
// private, symmetric (unless allowSymmetric: only local files may hold
// secrets) or of an unsupported type are skipped, each with a reason. Each
// key is pinned to its JWK alg, else to what its type and curve imply.
func parseJWKS(data []byte, allowSymmetric bool) ([]verificationKey, []string, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	if set.Keys == nil {
		return nil, nil, errors.New(`not a JWK Set: no "keys" array`)
	}
	var keys []verificationKey
	var skipped []string
	for i, raw := range set.Keys {
		if len(keys) == jwksMaxKeys {
			skipped = append(skipped, fmt.Sprintf("keys after the first %d ignored", jwksMaxKeys))
			break
		}
		var k jwk
		if err := json.Unmarshal(raw, &k); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		vk, err := k.verificationKey(allowSymmetric)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, k.Kid, err))
			continue
		}
		keys = append(keys, vk)
	}
	return keys, skipped, nil
}

func (k *jwk) verificationKey(allowSymmetric bool) (verificationKey, error) {
	if k.Use != "" && k.Use != "sig" {
		return verificationKey{}, fmt.Errorf("use %q is not sig", k.Use)
	}
	if k.KeyOps != nil && !contains(k.KeyOps, "verify") {
		return verificationKey{}, errors.New("key_ops lacks verify")
	}
	if k.D != "" {
		return verificationKey{}, errors.New("private key material published")
	}
	var pub any
	switch k.Kty {
	case "RSA":
		n, err1 := b64int(k.N)
		e, err2 := b64int(k.E)
		if err1 != nil || err2 != nil || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
			return verificationKey{}, errors.New("bad RSA n or e")
		}
		pub = &rsa.PublicKey{N: n, E: int(e.Int64())}
	case "EC":
		var curve elliptic.Curve
		switch k.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return verificationKey{}, fmt.Errorf("unsupported curve %q", k.Crv)
		}
		x, err1 := b64int(k.X)
		y, err2 := b64int(k.Y)
		if err1 != nil || err2 != nil {
			return verificationKey{}, errors.New("bad EC x or y")
		}
		size := (curve.Params().BitSize + 7) / 8
		point := make([]byte, 1+2*size)
		point[0] = 4
		if len(x.Bytes()) > size || len(y.Bytes()) > size {
			return verificationKey{}, errors.New("bad EC x or y")
		}
		x.FillBytes(point[1 : 1+size])
		y.FillBytes(point[1+size:])
		ecKey, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return verificationKey{}, errors.New("EC point not on the curve")
		}
		pub = ecKey
	case "OKP":
		if k.Crv != "Ed25519" {
			return verificationKey{}, fmt.Errorf("unsupported OKP curve %q", k.Crv)
		}
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return verificationKey{}, errors.New("bad Ed25519 x")
		}
		pub = ed25519.PublicKey(x)
	case "oct":
		if !allowSymmetric {
			return verificationKey{}, errors.New("symmetric key in a remote set")
		}
		secret, err := base64.RawURLEncoding.DecodeString(k.K)
		if err != nil {
			return verificationKey{}, errors.New("bad oct k")
		}
		pub = secret
	default:
		return verificationKey{}, fmt.Errorf("unsupported kty %q", k.Kty)
	}
	algs, err := pinKey(pub, k.Alg, allAlgSet)
	if err != nil {
		return verificationKey{}, err
	}
	return verificationKey{kid: k.Kid, algs: algs, key: pub}, nil
}

func b64int(s string) (*big.Int, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil, errors.New("bad base64url integer")
	}
	return new(big.Int).SetBytes(b), nil
}

// loadJWKSFile reads a local JWK Set (which may hold oct secrets).
func loadJWKSFile(filename string) ([]verificationKey, []string, error) {
	data, err := os.ReadFile(filename)
	if err != nil {
		return nil, nil, err
	}
	keys, skipped, err := parseJWKS(data, true)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", filename, err)
	}
	if len(keys) == 0 {
		return nil, skipped, fmt.Errorf("%s: no usable key (%s)", filename, strings.Join(skipped, "; "))
	}
	return keys, skipped, nil
}
