package ratelimit

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"
	"github.com/redis/rueidis"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
)

// Faults of Redis in fleet mode: a frozen Cluster master, a Redis that
// answers but refuses writes, client text that could choose the slot.

// countLogs counts the log entries at level whose message starts with msg.
func countLogs(logs *observer.ObservedLogs, level zapcore.Level, msg string) int {
	n := 0
	for _, e := range logs.All() {
		if e.Level == level && strings.HasPrefix(e.Message, msg) {
			n++
		}
	}
	return n
}

// nodeOfKeys returns, for each key, the index of the Cluster node holding
// it (-1 when none does); the keys start with prefix.
func nodeOfKeys(cl *redistest.Cluster, prefix string, keys []string) []int {
	where := map[string]int{}
	for n, node := range cl.Nodes {
		for k := range strings.FieldsSeq(node.MustCli("--scan", "--pattern", prefix+"*")) {
			where[k] = n
		}
	}
	owner := make([]int, len(keys))
	for i, k := range keys {
		owner[i] = -1
		if n, ok := where[k]; ok {
			owner[i] = n
		}
	}
	return owner
}

// TestRedisFrozenMasterOwnCircuit: on a 3-master Cluster under load, one
// master frozen (SIGSTOP): no check takes longer than the timeout + 50 ms,
// the outage logs once, the clients of the two healthy masters are still
// decided by Redis (counted on Redis), and after the master resumes its
// clients are decided by Redis again and the end of the outage logs once.
func TestRedisFrozenMasterOwnCircuit(t *testing.T) {
	// The healthy masters serve their slots while one is down (with full
	// coverage required, the Cluster refuses every key once it marks the
	// frozen master failed, after cluster-node-timeout; that moment itself
	// is kept out of the 2.5 s freeze).
	cl := redistest.StartCluster(t, "--cluster-require-full-coverage", "no", "--cluster-node-timeout", "10000")
	const timeout = 100 * time.Millisecond
	z, logs := testRedisZone(t, cl.URLs(), Redis{Timeout: caddy.Duration(timeout)},
		rate(1, time.Hour, 1_000_000_000))
	const clients = 60
	ids := make([]string, clients)
	keys := make([]string, clients)
	out := make([]verdict, 1)
	for i := range ids {
		ids[i] = "t:fz" + strconv.Itoa(i)
		keys[i] = z.keys(ids[i])[0]
		if res, _ := z.take(context.Background(), ids[i], out); res != redisDecided {
			t.Fatalf("client %d not decided by Redis before the freeze", i)
		}
	}
	owner := nodeOfKeys(cl, z.base, keys)
	const frozen = 0
	healthy := 0
	for i, n := range owner {
		if n < 0 {
			t.Fatalf("key of client %d on no node", i)
		}
		if n != frozen {
			healthy++
		}
	}
	if healthy == 0 || healthy == clients {
		t.Fatalf("clients per node %v: not spread", owner)
	}

	type check struct {
		start, end time.Time
		res        redisOutcome
		client     int
	}
	var (
		mu     sync.Mutex
		checks []check
		stop   = make(chan struct{})
		wg     sync.WaitGroup
	)
	const workers = 30
	for w := range workers {
		wg.Go(func() {
			out := make([]verdict, 1)
			var mine []check
			for n := 0; ; n++ {
				select {
				case <-stop:
					mu.Lock()
					checks = append(checks, mine...)
					mu.Unlock()
					return
				default:
				}
				i := (w + n*workers) % clients
				start := time.Now()
				res, _ := z.take(context.Background(), ids[i], out)
				mine = append(mine, check{start, time.Now(), res, i})
				time.Sleep(time.Millisecond)
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	cl.ResetStats()
	warnBefore := countLogs(logs, zapcore.WarnLevel, "redis unavailable")
	freezeAt := time.Now()
	cl.Nodes[frozen].Freeze()
	time.Sleep(2500 * time.Millisecond)
	healthyCalls := 0
	for n, node := range cl.Nodes {
		if n != frozen {
			healthyCalls += node.CommandCalls("evalsha")
		}
	}
	frozenEnd := time.Now()
	warns := countLogs(logs, zapcore.WarnLevel, "redis unavailable") - warnBefore
	cl.Nodes[frozen].Resume()
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	var firstFail time.Time
	for _, c := range checks {
		if c.res != redisDecided && c.start.After(freezeAt) && (firstFail.IsZero() || c.end.Before(firstFail)) {
			firstFail = c.end
		}
	}
	if firstFail.IsZero() {
		t.Fatal("no check failed with a master frozen")
	}
	var slow, healthyChecks, healthyDecided, frozenDecidedAfter int
	var worst time.Duration
	for _, c := range checks {
		d := c.end.Sub(c.start)
		// The bound holds while the master is frozen; after it resumes,
		// its backlog is answered late.
		if c.end.After(firstFail) && c.end.Before(frozenEnd) {
			worst = max(worst, d)
			if d > timeout+50*time.Millisecond {
				slow++
			}
		}
		if c.start.After(freezeAt) && c.end.Before(frozenEnd) && owner[c.client] != frozen {
			healthyChecks++
			if c.res == redisDecided {
				healthyDecided++
			}
		}
		if owner[c.client] == frozen && c.start.After(frozenEnd.Add(time.Second)) && c.res == redisDecided {
			frozenDecidedAfter++
		}
	}
	t.Logf("%d checks; first failure %v after the freeze; %d over timeout+50ms (max after it %v); healthy masters: %d of %d checks decided, %d script calls on them; %d WARN",
		len(checks), firstFail.Sub(freezeAt), slow, worst, healthyDecided, healthyChecks, healthyCalls, warns)
	if slow > 0 {
		t.Errorf("%d checks took over timeout+50ms after the first failure (max %v)", slow, worst)
	}
	if healthyChecks == 0 || healthyDecided*10 < healthyChecks*9 {
		t.Errorf("healthy masters decided %d of %d checks while one master was frozen", healthyDecided, healthyChecks)
	}
	if healthyCalls*10 < healthyChecks*9 {
		t.Errorf("healthy masters ran the script %d times for %d checks of their clients", healthyCalls, healthyChecks)
	}
	if warns != 1 {
		t.Errorf("%d WARN lines for one frozen master (%s), want 1", warns, cl.Nodes[frozen].Addr())
		for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
			t.Logf("%s %v", e.Message, e.ContextMap())
		}
	}
	if frozenDecidedAfter == 0 {
		t.Error("the clients of the resumed master are not decided by Redis again")
	}
	// Each outage logs one line when it starts and one when it ends (the
	// resumed master may have a short outage of its own, CLUSTERDOWN while
	// it catches up with the Cluster).
	if w, i := countLogs(logs, zapcore.WarnLevel, "redis unavailable"), countLogs(logs, zapcore.InfoLevel, "redis available"); i < 1 || w != i {
		t.Errorf("%d WARN and %d INFO lines: want one of each per outage", w, i)
	}
	for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
		t.Logf("%s %s %v", e.Time.Format("15:04:05.000"), e.Message, e.ContextMap())
	}
}

// TestRedisWriteRefusalIsAnOutage: a Redis that answers PING but refuses
// writes (OOM with noeviction, a replica: READONLY, unmet
// min-replicas-to-write: NOREPLICAS) is an outage: the requests follow
// on_error without asking Redis again, until a probe's script call
// succeeds; the outage logs one WARN when it starts and one INFO when it
// ends.
func TestRedisWriteRefusalIsAnOutage(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (url string, srv *redistest.Server, refuse, fix func())
	}{
		{"OOM", func(t *testing.T) (string, *redistest.Server, func(), func()) {
			srv := redistest.Start(t, "--maxmemory-policy", "noeviction")
			return srv.URL(), srv,
				func() { srv.MustCli("CONFIG", "SET", "maxmemory", "1") },
				func() { srv.MustCli("CONFIG", "SET", "maxmemory", "0") }
		}},
		{"READONLY", func(t *testing.T) (string, *redistest.Server, func(), func()) {
			master, replica := redistest.Start(t), redistest.Start(t)
			return replica.URL(), replica,
				func() { replica.MustCli("REPLICAOF", "127.0.0.1", strconv.Itoa(master.Port)) },
				func() { replica.MustCli("REPLICAOF", "NO", "ONE") }
		}},
		{"NOREPLICAS", func(t *testing.T) (string, *redistest.Server, func(), func()) {
			srv := redistest.Start(t)
			return srv.URL(), srv,
				func() { srv.MustCli("CONFIG", "SET", "min-replicas-to-write", "1") },
				func() { srv.MustCli("CONFIG", "SET", "min-replicas-to-write", "0") }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, srv, refuse, fix := tc.start(t)
			z, logs := testRedisZone(t, []string{url}, Redis{OnError: OnErrorAllow, Timeout: caddy.Duration(time.Second)},
				rate(1000, time.Second, 1000))
			out := make([]verdict, 1)
			if res, _ := z.take(context.Background(), "t:w", out); res != redisDecided {
				t.Fatalf("outcome %d before the refusal, want a Redis decision", res)
			}
			refuse()
			srv.ResetStats()
			var decided int
			for range 200 {
				if res, _ := z.take(context.Background(), "t:w", out); res == redisDecided {
					decided++
				}
			}
			calls := srv.CommandCalls("evalsha") + srv.CommandCalls("eval")
			warn := countLogs(logs, zapcore.WarnLevel, "")
			info := countLogs(logs, zapcore.InfoLevel, "redis available")
			t.Logf("200 requests: %d decided by Redis, %d script calls, %d WARN, %d INFO", decided, calls, warn, info)
			if decided != 0 {
				t.Errorf("%d of 200 requests decided by a Redis refusing writes", decided)
			}
			if calls > 10 {
				t.Errorf("%d script calls for 200 requests: the circuit does not stay open", calls)
			}
			if warn != 1 || info != 0 {
				t.Errorf("%d WARN and %d INFO lines during one outage, want 1 and 0", warn, info)
			}
			fix()
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if res, _ := z.take(context.Background(), "t:w", out); res == redisDecided {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("Redis not used within 5s of accepting writes again")
				}
			}
			for range 50 {
				if res, _ := z.take(context.Background(), "t:w", out); res != redisDecided {
					t.Fatalf("outcome %d after the recovery", res)
				}
			}
			if w, i := countLogs(logs, zapcore.WarnLevel, ""), countLogs(logs, zapcore.InfoLevel, "redis available"); w != 1 || i != 1 {
				t.Errorf("%d WARN and %d INFO lines for one outage and its end, want 1 and 1", w, i)
			}
		})
	}
}

// TestRedisBraceKeysSpreadSlots: client texts holding braces do not choose
// the Cluster slot: 1,000 keys `}<n>` (and `{<n>}`) land in as many slots
// as 1,000 plain keys would, as Redis computes them.
func TestRedisBraceKeysSpreadSlots(t *testing.T) {
	cl := redistest.StartCluster(t)
	z, _ := testRedisZone(t, cl.URLs(), Redis{Timeout: caddy.Duration(5 * time.Second)}, rate(1, time.Hour, 10))
	rl := &redisLimiter{z: z, local: newMemStore(10, 1, nil)}
	defer rl.local.Destruct()
	for _, form := range []string{"}%d", "{%d}", "%d}x{", "{}%d"} {
		out := make([]verdict, 1)
		for n := range 1000 {
			text := strings.Replace(form, "%d", strconv.Itoa(n), 1)
			if ok, err := rl.take(context.Background(), key{kind: kindText, text: text}, nil, out); !ok || err != nil {
				t.Fatalf("key %q: %v %v", text, ok, err)
			}
		}
	}
	stored := cl.Keys(z.base + "*")
	if len(stored) != 4000 {
		t.Fatalf("%d keys stored, want 4000", len(stored))
	}
	slots := map[int]bool{}
	for _, s := range cl.Nodes[0].Slots(stored) {
		slots[s] = true
	}
	// 4,000 keys over 16,384 slots: about 3,550 distinct ones.
	t.Logf("4000 keys holding braces in %d slots", len(slots))
	if len(slots) < 3000 {
		t.Fatalf("4000 keys holding braces in %d slots: client text chooses the slot", len(slots))
	}
}

// TestRedisTLSClusterOneSeed: a TLS Cluster given one seed URL, whose
// nodes have certificates of their own (the seed's names `localhost`, the
// others' only their address): every master is reached and verified, so
// clients of every slot are decided by Redis.
func TestRedisTLSClusterOneSeed(t *testing.T) {
	cl := redistest.StartTLSCluster(t)
	seed := "rediss://localhost:" + strconv.Itoa(cl.Nodes[0].Port)
	z, logs := testRedisZoneOpt(t, []string{seed}, Redis{Timeout: caddy.Duration(5 * time.Second)},
		func(o *rueidis.ClientOption) { o.TLSConfig.RootCAs = cl.CA }, rate(1, time.Hour, 10))
	out := make([]verdict, 1)
	failed := 0
	for i := range 60 {
		if res, _ := z.take(context.Background(), "t:tls"+strconv.Itoa(i), out); res != redisDecided {
			failed++
		}
	}
	used := 0
	for _, node := range cl.Nodes {
		if strings.TrimSpace(node.MustCli("DBSIZE")) != "0" {
			used++
		}
	}
	if failed > 0 || used != len(cl.Nodes) {
		t.Fatalf("%d of 60 clients not decided by Redis, %d of %d masters used: %v", failed, used, len(cl.Nodes), logs.All())
	}
}
