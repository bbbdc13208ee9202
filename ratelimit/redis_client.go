package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// redisClients holds one Redis client per resolved URL set: a reload that
// keeps the URLs reuses the connections (no reconnect storm), and handlers
// of every zone naming the same Redis share them.
var redisClients = caddy.NewUsagePool()

// Timing of the client's background work.
const (
	// redisDialTimeout bounds one connection attempt of the background
	// connector; requests never wait for it.
	redisDialTimeout = 2 * time.Second
	// redisProbeTimeout bounds the probe's PING.
	redisProbeTimeout = time.Second
	// redisProbeMin and redisProbeMax bound the pause between probes of a
	// Redis that is down: it doubles from the first to the second.
	redisProbeMin = 100 * time.Millisecond
	redisProbeMax = time.Second
	// redisStartWait is how long Provision waits for the first connection,
	// so that a Caddy starting next to a healthy Redis asks it from the
	// first request; a Redis that is down delays the start by no more.
	redisStartWait = time.Second
)

// redisClient is a Redis client shared by the handlers naming the same
// URLs, with a circuit: after a call fails for a reason that is not the
// request's own (a timeout, a lost connection, CLUSTERDOWN, an auth error),
// the client is marked down and requests go straight to their on_error
// policy, while one background goroutine probes Redis until it answers
// again. A dead or frozen Redis thus costs at most one timeout per request
// in flight when it fails, and nothing afterwards.
type redisClient struct {
	opt      rueidis.ClientOption
	redacted string // the URLs with passwords masked, for logs and errors
	secrets  string // the URLs as given, only to mask them in errors
	logger   *zap.Logger

	client atomic.Pointer[clientBox]
	up     atomic.Bool

	wake  chan struct{} // a call failed: probe
	done  chan struct{} // closed by Destruct
	ready chan struct{} // closed after the first connection attempt
	wg    sync.WaitGroup
	once  sync.Once
}

// clientBox holds the rueidis client (an interface) for atomic.Pointer.
type clientBox struct{ c rueidis.Client }

// newRedisClient returns a client for opt and starts its connector, which
// connects in the background: NewClient fails while Redis is down, and
// Caddy must start all the same.
func newRedisClient(opt rueidis.ClientOption, urls []string, logger *zap.Logger) *redisClient {
	redacted := make([]string, len(urls))
	for i, u := range urls {
		redacted[i] = redactURL(u)
	}
	c := &redisClient{
		opt:      opt,
		redacted: strings.Join(redacted, " "),
		secrets:  strings.Join(urls, " "),
		logger:   logger,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		ready:    make(chan struct{}),
	}
	c.wg.Add(1)
	go c.run()
	return c
}

// get returns the connected client, or nil while Redis is considered
// down (then the caller applies its on_error policy without waiting).
func (c *redisClient) get() rueidis.Client {
	if !c.up.Load() {
		return nil
	}
	if b := c.client.Load(); b != nil {
		return b.c
	}
	return nil
}

// fail reports a failed call: the first report after Redis was up opens
// the circuit and wakes the prober.
func (c *redisClient) fail(err error) {
	if c.up.CompareAndSwap(true, false) {
		c.logger.Warn("redis unavailable; requests follow on_error until it answers again",
			zap.String("redis", c.redacted), zap.String("error", redactError(err, c.secrets)))
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// run is the one prober of the client: it connects, and whenever a call
// failed, probes Redis until it answers, with a growing pause.
func (c *redisClient) run() {
	defer c.wg.Done()
	defer func() {
		if b := c.client.Load(); b != nil {
			b.c.Close()
		}
	}()
	pause := redisProbeMin
	var lastErr string
	for {
		if !c.up.Load() {
			err := c.probe()
			c.once.Do(func() { close(c.ready) })
			if err == nil {
				pause = redisProbeMin
				lastErr = ""
				c.up.Store(true)
				c.logger.Info("redis available", zap.String("redis", c.redacted))
			} else {
				// Log each new reason once: a wrong password must be
				// visible, a dead Redis must not flood the log.
				if msg := redactError(err, c.secrets); msg != lastErr {
					lastErr = msg
					c.logger.Error("redis probe failed", zap.String("redis", c.redacted), zap.String("error", msg))
				}
				select {
				case <-time.After(pause):
				case <-c.done:
					return
				}
				pause = min(pause*2, redisProbeMax)
				continue
			}
		}
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
	}
}

// probe connects when not connected yet, then PINGs.
func (c *redisClient) probe() error {
	b := c.client.Load()
	if b == nil {
		rc, err := rueidis.NewClient(c.opt)
		if err != nil {
			return err
		}
		select {
		case <-c.done: // Destruct ran meanwhile
			rc.Close()
			return errRedisClosed
		default:
		}
		b = &clientBox{c: rc}
		c.client.Store(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), redisProbeTimeout)
	defer cancel()
	return b.c.Do(ctx, b.c.B().Ping().Build()).Error()
}

var errRedisClosed = errors.New("redis client closed")

// waitReady waits, at most d, for the first connection attempt.
func (c *redisClient) waitReady(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.ready:
	case <-t.C:
	}
}

// Destruct stops the prober, which closes the connections as it exits; the
// pool calls it when the last handler using these URLs is cleaned up. It
// does not wait for a connection attempt in progress (at most the dial
// timeout), so a reload is never held up by a dead Redis.
func (c *redisClient) Destruct() error {
	close(c.done)
	return nil
}

// wait waits until the prober has exited and closed the connections.
func (c *redisClient) wait() { c.wg.Wait() }

// joinRedisClient returns the pooled client of the resolved urls, creating
// it (and its connector) when no handler uses them yet, and waits a moment
// for its first connection. The caller releases it with
// redisClients.Delete(key) in Cleanup.
func joinRedisClient(opt rueidis.ClientOption, urls []string, logger *zap.Logger) (c *redisClient, key string, err error) {
	key = strings.Join(urls, "\n")
	val, _, err := redisClients.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newRedisClient(opt, urls, logger.Named("redis")), nil
	})
	if err != nil {
		return nil, "", err
	}
	c = val.(*redisClient)
	c.waitReady(redisStartWait)
	return c, key, nil
}

// redisOptions turns resolved URLs into client options. One URL names a
// server (or any node of a Cluster, or the Sentinels with master_set);
// several URLs are seed nodes of one Cluster and must agree on scheme,
// credentials and options. Errors never carry a password.
func redisOptions(urls []string) (rueidis.ClientOption, error) {
	var opt rueidis.ClientOption
	if len(urls) == 0 {
		return opt, errors.New("redis: at least one URL is required")
	}
	for i, s := range urls {
		if err := checkRedisURL(s); err != nil {
			return opt, err
		}
		o, err := rueidis.ParseURL(s)
		if err != nil {
			return opt, fmt.Errorf("redis URL %s: %s", redactURL(s), redactError(err, s))
		}
		if i == 0 {
			opt = o
			continue
		}
		if o.Username != opt.Username || o.Password != opt.Password || o.SelectDB != opt.SelectDB ||
			(o.TLSConfig == nil) != (opt.TLSConfig == nil) || o.Sentinel.MasterSet != "" || opt.Sentinel.MasterSet != "" {
			return opt, fmt.Errorf("redis URL %s: several URLs are seed nodes of one Cluster and must share scheme, user, password and database (for Sentinel, give one URL with addr= and master_set=)", redactURL(s))
		}
		if opt.SelectDB != 0 {
			return opt, fmt.Errorf("redis URL %s: a Cluster has only database 0", redactURL(s))
		}
		opt.InitAddress = append(opt.InitAddress, o.InitAddress...)
	}
	opt.DisableCache = true // no client-side caching: every call is a script
	opt.Dialer.Timeout = redisDialTimeout
	opt.ClientName = "caddy-throttle"
	if opt.TLSConfig != nil && len(opt.InitAddress) > 1 {
		// Cluster nodes have names of their own: verify each against the
		// address dialled rather than the first seed's host.
		opt.TLSConfig.ServerName = ""
	}
	return opt, nil
}

// checkRedisURL checks the form of one URL without contacting anything.
func checkRedisURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("redis URL %s: not a valid URL", redactURL(s))
	}
	switch u.Scheme {
	case "redis", "rediss", "valkey", "valkeys":
	case "unix":
		if u.Path == "" {
			return fmt.Errorf("redis URL %s: unix URL without a socket path", redactURL(s))
		}
		return nil
	default:
		return fmt.Errorf("redis URL %s: scheme must be redis, rediss, valkey, valkeys or unix", redactURL(s))
	}
	if u.Host == "" {
		return fmt.Errorf("redis URL %s: no host", redactURL(s))
	}
	return nil
}

// splitRedisURLs splits resolved URL arguments: a placeholder may expand
// to several URLs separated by spaces or commas.
func splitRedisURLs(args []string) []string {
	out := make([]string, 0, len(args))
	for _, a := range args {
		out = append(out, strings.FieldsFunc(a, func(r rune) bool {
			return r == ',' || r == ' ' || r == '\t' || r == '\n'
		})...)
	}
	return out
}

// redactURL masks the password of a URL, even of one that does not parse:
// everything between the first ':' of the user info and its last '@'.
func redactURL(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		if strings.ContainsAny(s, "@") {
			return "(unparsable URL hidden)"
		}
		return s
	}
	rest := s[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	user, _, hasPass := strings.Cut(rest[:at], ":")
	if !hasPass {
		return s
	}
	return s[:i+3] + user + ":xxxxx" + rest[at:]
}

// redactError returns err's text with every password of the URLs in
// secrets masked.
func redactError(err error, secrets ...string) string {
	msg := err.Error()
	for _, s := range secrets {
		for u := range strings.FieldsSeq(s) {
			if p := urlPassword(u); p != "" {
				msg = strings.ReplaceAll(msg, p, "xxxxx")
				if e := url.PathEscape(p); e != p {
					msg = strings.ReplaceAll(msg, e, "xxxxx")
				}
			}
		}
	}
	return msg
}

// urlPassword returns the password part of a URL as written.
func urlPassword(s string) string {
	_, rest, ok := strings.Cut(s, "://")
	if !ok {
		return ""
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	_, p, _ := strings.Cut(rest[:at], ":")
	return p
}

// Interface guards
var _ caddy.Destructor = (*redisClient)(nil)
