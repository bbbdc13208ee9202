package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// redisClients holds one Redis client per resolved URL set, timeout and
// prefix: a reload that keeps them reuses the connections (no reconnect
// storm), and handlers of every zone naming the same Redis share them.
var redisClients = caddy.NewUsagePool()

// Timing of the client's background work.
const (
	// redisMaxDialTimeout bounds one connection attempt; the call timeout
	// bounds it further, so that no call waits longer for a reconnection
	// than for an answer.
	redisMaxDialTimeout = 2 * time.Second
	// redisProbeMin and redisProbeMax bound the pause between probes of a
	// Redis (or a Cluster master) that is down: it doubles from the first
	// to the second.
	redisProbeMin = 100 * time.Millisecond
	redisProbeMax = time.Second
	// redisStartWait is how long Provision waits for the first connection,
	// so that a Caddy starting next to a healthy Redis asks it from the
	// first request; a Redis that is down delays the start by no more.
	redisStartWait = time.Second
	// redisSlotsRefresh is how often the client reads a Cluster's slot
	// map (which master serves which slot), to keep one circuit per master.
	redisSlotsRefresh = 2 * time.Second
)

// redisClient is a Redis client shared by the handlers naming the same
// URLs, with one circuit per Redis master: after a call fails for a reason
// that is not the request's own (a timeout, a lost connection, CLUSTERDOWN,
// an auth error, a refused write), that master's circuit opens and requests
// for its slots go straight to their on_error policy, while one background
// goroutine probes it, with the throttle script, until it answers again.
// A dead or frozen master thus costs at most one timeout per request in
// flight when it fails, and nothing afterwards; the other masters of a
// Cluster go on deciding.
type redisClient struct {
	opt      rueidis.ClientOption
	timeout  time.Duration // per call, probes included
	calls    *callDeadlines
	prefix   string // key prefix of the probe's key
	redacted string // the URLs with passwords masked, for logs and errors
	secrets  string // the URLs as given, only to mask them in errors
	logger   *zap.Logger

	box atomic.Pointer[clientBox]
	// root is the circuit of a single server or a Sentinel's master, and
	// of a Cluster until its slot map is known.
	root redisCircuit

	wake  chan struct{} // a call failed: probe
	done  chan struct{} // closed by Destruct
	ready chan struct{} // closed after the first connection attempt
	wg    sync.WaitGroup
	once  sync.Once

	// Owned by the prober goroutine.
	wasConnected bool // the first connection succeeded (logged once)
}

// clientBox holds the connected rueidis client and, for a Cluster, the
// map of which master serves which slot.
type clientBox struct {
	c       rueidis.Client
	cluster bool
	slots   atomic.Pointer[slotMap]
}

// slotMap maps each Cluster slot to the circuit of its master.
type slotMap struct {
	owner    [clusterSlots]uint16 // 1 + index in circuits; 0: no master known
	circuits []*redisCircuit
}

// redisCircuit is the circuit of one Redis master.
type redisCircuit struct {
	addr string // the master's address in a Cluster, "" otherwise
	tag  string // a hash tag of one of its slots, for the probe's key
	up   atomic.Bool
	// outage is set when the start of an outage was logged, and cleared
	// when its end is.
	outage atomic.Bool

	// Owned by the prober goroutine.
	pause time.Duration
	next  time.Time
}

// newRedisClient returns a client for opt and starts its connector, which
// connects in the background: NewClient fails while Redis is down, and
// Caddy must start all the same. timeout bounds every call, probes and
// reconnections included.
func newRedisClient(opt rueidis.ClientOption, urls []string, timeout time.Duration, prefix string, logger *zap.Logger) *redisClient {
	redacted := make([]string, len(urls))
	for i, u := range urls {
		redacted[i] = redactURL(u)
	}
	// A reconnection (rueidis dials on the path of the call that finds
	// its connection broken, and other calls wait for that dial) must not
	// outlast a call's timeout.
	opt.Dialer.Timeout = min(timeout, redisMaxDialTimeout)
	// The background PING of an idle connection, and rueidis's own slot
	// refresh, give up after this: a frozen node's connection is dropped
	// within a second or the call timeout, never the default 10 s.
	opt.ConnWriteTimeout = max(timeout, time.Second)
	// One connection per node, as rueidis gives a Cluster by default,
	// also for a single server or a Sentinel's master (2 or 4 by
	// default): every check then queues on one pipe, so concurrent checks
	// share a write(2) and a read(2) more often. BenchmarkRedisRoundTrip
	// at 16 and 64 callers: 18-35% less CPU per check (at 16, 0.37 writes
	// per check instead of 0.91); at 1 and 4 callers, no change.
	opt.PipelineMultiplex = -1
	c := &redisClient{
		opt:      opt,
		timeout:  timeout,
		calls:    newCallDeadlines(timeout),
		prefix:   prefix,
		redacted: strings.Join(redacted, " "),
		secrets:  strings.Join(urls, " "),
		logger:   logger,
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		ready:    make(chan struct{}),
	}
	c.root.tag = "probe"
	c.wg.Add(1)
	go c.run()
	return c
}

// get returns the circuit of the master serving the keys whose hash tag is
// tag (see redisTag), and the client to call, which is nil while that circuit
// is open (then the caller applies its on_error policy without waiting).
func (c *redisClient) get(tag string) (*redisCircuit, rueidis.Client) {
	b := c.box.Load()
	if b == nil {
		return &c.root, nil
	}
	cc := &c.root
	if b.cluster {
		if m := b.slots.Load(); m != nil {
			if i := m.owner[clusterSlot(tag)]; i != 0 {
				cc = m.circuits[i-1]
			}
		}
	}
	if !cc.up.Load() {
		return cc, nil
	}
	return cc, b.c
}

// connected returns the client once connected, for commands of no slot
// (Pub/Sub), or nil.
func (c *redisClient) connected() rueidis.Client {
	if b := c.box.Load(); b != nil && c.root.up.Load() {
		return b.c
	}
	return nil
}

// callContext returns the context of a call starting now: done when the
// call's timeout is over (and at most a few milliseconds later).
func (c *redisClient) callContext() context.Context { return c.calls.context() }

// fail reports a call on cc that failed for a reason that is not the
// request's own: the first report after cc was up opens the circuit, logs
// the outage, and wakes the prober.
func (c *redisClient) fail(cc *redisCircuit, err error) {
	if !cc.up.CompareAndSwap(true, false) {
		return
	}
	if !cc.outage.Swap(true) {
		c.logger.Warn("redis unavailable; requests follow on_error until it answers again",
			c.fields(cc, zap.String("error", redactError(err, c.secrets)))...)
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// fields are the log fields naming the Redis of cc.
func (c *redisClient) fields(cc *redisCircuit, more ...zap.Field) []zap.Field {
	f := make([]zap.Field, 0, 2+len(more))
	f = append(f, zap.String("redis", c.redacted))
	if cc.addr != "" {
		f = append(f, zap.String("node", cc.addr))
	}
	return append(f, more...)
}

// run is the one prober of the client: it connects, keeps a Cluster's
// slot map, and probes each open circuit until its master answers, with a
// growing pause.
func (c *redisClient) run() {
	defer c.wg.Done()
	defer func() {
		if b := c.box.Load(); b != nil {
			b.c.Close()
		}
	}()
	c.root.pause = redisProbeMin
	refresh := time.NewTicker(redisSlotsRefresh)
	defer refresh.Stop()
	for {
		wait := c.round()
		c.once.Do(func() { close(c.ready) })
		t := time.NewTimer(wait)
		select {
		case <-c.wake:
		case <-t.C:
		case <-refresh.C:
			if b := c.box.Load(); b != nil && b.cluster && c.root.up.Load() {
				_ = c.refreshSlots(b)
			}
		case <-c.done:
			t.Stop()
			return
		}
		t.Stop()
	}
}

// round connects when not connected yet, then probes every open circuit
// whose pause is over, at once; it returns how long to wait for the next
// round (a wake-up comes earlier).
func (c *redisClient) round() time.Duration {
	now := time.Now()
	b := c.box.Load()
	if b == nil || !c.root.up.Load() {
		if c.root.next.After(now) {
			return c.root.next.Sub(now)
		}
		if err := c.connect(); err != nil {
			c.down(&c.root, err, now)
			return c.root.pause
		}
		c.upAgain(&c.root)
		b = c.box.Load()
	}
	var open []*redisCircuit
	if b.cluster {
		if m := b.slots.Load(); m != nil {
			for _, cc := range m.circuits {
				if !cc.up.Load() {
					open = append(open, cc)
				}
			}
		}
	}
	wait := redisSlotsRefresh
	var due []*redisCircuit
	for _, cc := range open {
		if cc.next.After(now) {
			wait = min(wait, cc.next.Sub(now))
			continue
		}
		due = append(due, cc)
	}
	if len(due) == 0 {
		return wait
	}
	errs := make([]error, len(due))
	var wg sync.WaitGroup
	for i, cc := range due {
		wg.Go(func() { errs[i] = c.probe(b, cc) })
	}
	wg.Wait()
	for i, cc := range due {
		if errs[i] != nil {
			c.down(cc, errs[i], now)
			wait = min(wait, cc.pause)
			continue
		}
		c.upAgain(cc)
	}
	// A master that stays down may have been replaced: read the map again.
	_ = c.refreshSlots(b)
	return wait
}

// down records a failed probe of cc: the next one waits longer. The
// outage is logged once, when it starts (here for a Redis down from the
// start); each probe's error is logged at debug level only.
func (c *redisClient) down(cc *redisCircuit, err error, now time.Time) {
	cc.up.Store(false)
	msg := redactError(err, c.secrets)
	if !cc.outage.Swap(true) {
		c.logger.Warn("redis unavailable; requests follow on_error until it answers again",
			c.fields(cc, zap.String("error", msg))...)
	} else if ce := c.logger.Check(zap.DebugLevel, "redis probe failed"); ce != nil {
		ce.Write(c.fields(cc, zap.String("error", msg))...)
	}
	if cc.pause == 0 {
		cc.pause = redisProbeMin
	}
	cc.next = now.Add(cc.pause)
	cc.pause = min(cc.pause*2, redisProbeMax)
}

// upAgain closes cc's circuit after a probe succeeded, logging the end of
// its outage (or the first connection).
func (c *redisClient) upAgain(cc *redisCircuit) {
	cc.pause = redisProbeMin
	cc.next = time.Time{}
	switch {
	case cc.outage.Swap(false):
		c.logger.Info("redis available", c.fields(cc)...)
	case cc == &c.root && !c.wasConnected:
		c.logger.Info("redis connected", c.fields(cc)...)
	}
	if cc == &c.root {
		c.wasConnected = true
	}
	cc.up.Store(true)
}

// connect creates the rueidis client when there is none yet, reads a
// Cluster's slot map and probes Redis with the script (for a Cluster, each
// master is probed when its first call fails).
func (c *redisClient) connect() error {
	b := c.box.Load()
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
		b = &clientBox{c: rc, cluster: rc.Mode() == rueidis.ClientModeCluster}
		c.box.Store(b)
	}
	if b.cluster {
		return c.refreshSlots(b)
	}
	return c.probe(b, &c.root)
}

// probe runs the throttle script on cc's master, on a key of the client's
// prefix in one of its slots, within the call timeout: it succeeds only
// when that master would decide a request, writes included (a Redis that
// answers PING but refuses writes stays down).
func (c *redisClient) probe(b *clientBox, cc *redisCircuit) error {
	client := b.c
	if cc.addr != "" {
		n, ok := b.c.Nodes()[cc.addr]
		if !ok {
			return fmt.Errorf("redis node %s: not connected", cc.addr)
		}
		client = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	key := c.prefix + "{" + cc.tag + "}:probe"
	return gcraLua.Exec(ctx, client, []string{key}, redisProbeArgs).Error()
}

// redisProbeArgs is the ARGV of gcraScript for the probe: cost 1, no slots,
// one rate of a microsecond's interval and a second's tolerance and cap:
// always admitted, the key expiring a millisecond later.
var redisProbeArgs = []string{"1", "0", "0", "", "1", "1000000", "1000000"}

// refreshSlots reads the Cluster's slot map from a master that is up, and
// installs it, keeping the circuits of the masters already known.
func (c *redisClient) refreshSlots(b *clientBox) error {
	old := b.slots.Load()
	known := map[string]*redisCircuit{}
	if old != nil {
		for _, cc := range old.circuits {
			known[cc.addr] = cc
		}
	}
	nodes := b.c.Nodes()
	addrs := make([]string, 0, len(nodes))
	for addr := range nodes {
		if cc, ok := known[addr]; !ok || cc.up.Load() {
			addrs = append([]string{addr}, addrs...) // masters that are up first
		} else {
			addrs = append(addrs, addr)
		}
	}
	err := errors.New("redis cluster: no node known")
	for _, addr := range addrs {
		n := nodes[addr]
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		var reply []rueidis.RedisMessage
		reply, err = n.Do(ctx, n.B().ClusterSlots().Build()).ToArray()
		cancel()
		if err != nil {
			continue
		}
		var m *slotMap
		if m, err = parseSlotMap(reply, addr, known); err != nil {
			continue
		}
		b.slots.Store(m)
		c.forget(old, m)
		return nil
	}
	return err
}

// forget ends the outage of the masters of old that serve no slot in m
// (replaced by a failover, or removed).
func (c *redisClient) forget(old, m *slotMap) {
	if old == nil {
		return
	}
	still := make(map[*redisCircuit]bool, len(m.circuits))
	for _, cc := range m.circuits {
		still[cc] = true
	}
	for _, cc := range old.circuits {
		if !still[cc] && cc.outage.Swap(false) {
			c.logger.Info("redis node serves no slot any more; its outage is over", c.fields(cc)...)
		}
	}
}

// parseSlotMap reads a CLUSTER SLOTS reply from the node at from, reusing
// the circuits of known masters; each new master's circuit starts closed.
func parseSlotMap(reply []rueidis.RedisMessage, from string, known map[string]*redisCircuit) (*slotMap, error) {
	m := &slotMap{}
	index := map[string]uint16{}
	for _, r := range reply {
		v, err := r.ToArray()
		if err != nil || len(v) < 3 {
			return nil, errors.New("redis cluster: malformed CLUSTER SLOTS reply")
		}
		first, err1 := v[0].AsInt64()
		last, err2 := v[1].AsInt64()
		node, err3 := v[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(node) < 2 || first < 0 || last >= clusterSlots || first > last {
			return nil, errors.New("redis cluster: malformed CLUSTER SLOTS reply")
		}
		host, _ := node[0].ToString()
		port, err := node[1].AsInt64()
		if err != nil || host == "?" {
			continue
		}
		if host == "" {
			host, _, _ = net.SplitHostPort(from)
		}
		addr := net.JoinHostPort(host, strconv.FormatInt(port, 10))
		i, ok := index[addr]
		if !ok {
			cc := known[addr]
			if cc == nil {
				cc = &redisCircuit{addr: addr}
				cc.up.Store(true)
			}
			m.circuits = append(m.circuits, cc)
			i = uint16(len(m.circuits))
			index[addr] = i
		}
		for s := first; s <= last; s++ {
			m.owner[s] = i
		}
	}
	if len(m.circuits) == 0 {
		return nil, errors.New("redis cluster: no slot served")
	}
	// The probe of each master uses a key of one of its slots.
	for i, cc := range m.circuits {
		if cc.tag != "" {
			continue
		}
		for n := range 1 << 20 {
			tag := "probe" + strconv.Itoa(n)
			if m.owner[clusterSlot(tag)] == uint16(i+1) {
				cc.tag = tag
				break
			}
		}
	}
	return m, nil
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
// does not wait for a probe in progress (at most the call timeout), so a
// reload is never held up by a dead Redis.
func (c *redisClient) Destruct() error {
	close(c.done)
	return nil
}

// wait waits until the prober has exited and closed the connections.
func (c *redisClient) wait() { c.wg.Wait() }

// joinRedisClient returns the pooled client of the resolved urls, timeout
// and prefix, creating it (and its connector) when no handler uses them
// yet, and waits a moment for its first connection. The caller releases it
// with redisClients.Delete(key) in Cleanup.
func joinRedisClient(opt rueidis.ClientOption, urls []string, timeout time.Duration, prefix string, logger *zap.Logger) (c *redisClient, key string, err error) {
	key = strings.Join(urls, "\n") + "\n" + timeout.String() + "\n" + prefix
	val, _, err := redisClients.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newRedisClient(opt, urls, timeout, prefix, logger.Named("redis")), nil
	})
	if err != nil {
		return nil, "", err
	}
	c = val.(*redisClient)
	c.waitReady(redisStartWait)
	return c, key, nil
}

// clusterSlots is the number of Redis Cluster hash slots.
const clusterSlots = 16384

// clusterSlot returns the Cluster slot of the keys whose hash tag is tag
// (a text without braces, as redisTag returns): CRC16 (XMODEM) of the tag,
// modulo 16384, as Redis computes it. rueidis computes the same only for
// a built command (Completed.Slot); this needs no command.
func clusterSlot(tag string) uint16 {
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^tag[i]]
	}
	return crc & (clusterSlots - 1)
}

// crc16Table is the CRC16-CCITT (XMODEM, polynomial 0x1021) table.
var crc16Table = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

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
	opt.ClientName = "caddy-throttle"
	if opt.TLSConfig != nil {
		// Verify each node against the address dialled (what TLS does
		// when no ServerName is set), not against the first URL's host,
		// which rueidis pins: the other nodes of a Cluster, found through
		// one seed, have addresses and certificates of their own.
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

// callDeadlines hands out the contexts of calls to Redis: one shared
// context per short slice of time, whose deadline ends that slice, so that
// a call costs no timer, no context and no allocation of its own (at a few
// thousand calls a second, one context serves dozens of them). A call
// started at t gets a deadline between t + timeout and t + timeout + step.
//
// These contexts carry no values and ignore the request's cancellation: a
// call whose client went away still ends within the timeout, and its
// verdict is simply not used.
type callDeadlines struct {
	timeout time.Duration
	step    time.Duration
	base    time.Time // slices are counted from here, on the monotonic clock
	cur     atomic.Pointer[deadlineCtx]
	mu      sync.Mutex
}

// deadlineCtx is a context that is done at its deadline.
type deadlineCtx struct {
	slice    int64 // index of the slice it ends
	deadline time.Time
	done     chan struct{}
}

func (d *deadlineCtx) Deadline() (time.Time, bool) { return d.deadline, true }
func (d *deadlineCtx) Done() <-chan struct{}       { return d.done }
func (d *deadlineCtx) Value(any) any               { return nil }
func (d *deadlineCtx) Err() error {
	select {
	case <-d.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func newCallDeadlines(timeout time.Duration) *callDeadlines {
	return &callDeadlines{timeout: timeout, step: max(min(timeout/16, 5*time.Millisecond), time.Microsecond), base: time.Now()}
}

// context returns the context of a call starting now.
func (d *callDeadlines) context() context.Context {
	// The first slice ending at or after now + timeout.
	slice := int64((time.Since(d.base) + d.timeout + d.step - 1) / d.step)
	if c := d.cur.Load(); c != nil && c.slice >= slice && c.slice <= slice+1 {
		return c
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.cur.Load(); c != nil && c.slice >= slice && c.slice <= slice+1 {
		return c
	}
	end := d.base.Add(time.Duration(slice * int64(d.step)))
	c := &deadlineCtx{slice: slice, deadline: end, done: make(chan struct{})}
	time.AfterFunc(time.Until(c.deadline), func() { close(c.done) })
	d.cur.Store(c)
	return c
}
