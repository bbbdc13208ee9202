package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/procstat"
)

// measuredScenario is a scenario that ran one round of requests whose
// latencies are lat, during which the caddy process's counters moved by
// mallocs and bytes (plus what the two readings allocate).
func measuredScenario(name, against string, b *budget, requests int, mallocs, bytes uint64, cpu time.Duration) *scenario {
	sc := &scenario{name: name, against: against, budget: b, site: site("respond 200"), header: header("Authorization", "Bearer t")}
	lat := make([]time.Duration, requests)
	for i := range lat {
		lat[i] = time.Duration(requests-i) * time.Microsecond // unsorted, 1..n µs
	}
	overhead := memStats{Mallocs: 70, TotalAlloc: 9000}
	before := memStats{Mallocs: 1_000_000, TotalAlloc: 50_000_000}
	after := memStats{Mallocs: before.Mallocs + overhead.Mallocs + mallocs, TotalAlloc: before.TotalAlloc + overhead.TotalAlloc + bytes}
	sc.m.addRound(result{lat: lat, rps: 1000}, cpu, procstat.IOStats{}, before, after, overhead)
	return sc
}

func TestRowsDeltasOverBaseline(t *testing.T) {
	base := measuredScenario("baseline", "", nil, 1000, 192_300, 15_980_000, 100*time.Millisecond)
	jwt := measuredScenario("jwt_auth", "baseline", &budget{allocs: 3}, 1000, 201_300, 16_930_000, 110*time.Millisecond)
	stack := measuredScenario("stack", "baseline", &budget{allocs: 4, bytes: 400}, 1000, 196_300, 16_480_000, 120*time.Millisecond)
	lean := measuredScenario("lean", "baseline", &budget{allocs: 4, bytes: 400}, 1000, 196_000, 16_300_000, 120*time.Millisecond)
	skipped := &scenario{name: "redis", against: "baseline", skip: "no redis-server"}
	orphan := measuredScenario("orphan", "redis", &budget{allocs: 1}, 1000, 1, 1, time.Millisecond)

	got := rows([]*scenario{base, jwt, stack, lean, skipped, orphan})
	if len(got) != 6 {
		t.Fatalf("%d rows, want 6", len(got))
	}
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	b := got[0]
	near("baseline allocs/req", b.allocs, 192.3)
	near("baseline B/req", b.bytes, 15_980)
	near("baseline CPU/req", b.cpu, 100)
	if b.p50 != 500*time.Microsecond || b.p99 != 990*time.Microsecond {
		t.Errorf("baseline p50, p99 = %v, %v; want 500µs, 990µs", b.p50, b.p99)
	}
	if b.against != "" || b.verdict != "" {
		t.Errorf("baseline compared with %q (%q)", b.against, b.verdict)
	}

	j := got[1]
	near("jwt_auth Δallocs", j.dAllocs, 9)
	near("jwt_auth ΔB", j.dBytes, 950)
	near("jwt_auth ΔCPU", j.dCPU, 10)
	near("jwt_auth req/s ratio", j.rRPS, 1)
	if j.against != "baseline" || j.verdict != "≤+3 OVER" {
		t.Errorf("jwt_auth over %q: %q, want baseline: ≤+3 OVER", j.against, j.verdict)
	}
	// Within the allocation budget, over the byte budget.
	if s := got[2]; s.verdict != "≤+4 / +400 B OVER" {
		t.Errorf("stack (+4 allocs, +500 B): %q, want OVER", s.verdict)
	}
	if l := got[3]; l.verdict != "≤+4 / +400 B ok" {
		t.Errorf("lean (+3.7 allocs, +320 B): %q, want ok", l.verdict)
	}
	if got[4].skip == "" {
		t.Error("skipped scenario reported as run")
	}
	if o := got[5]; o.against != "" || o.verdict != "" {
		t.Errorf("scenario whose baseline was skipped compared with %q (%q)", o.against, o.verdict)
	}

	var out bytes.Buffer
	printReport(&out, []*scenario{base, jwt, skipped})
	for _, want := range []string{"allocs/req", "192.30", "+9.00", "+950", "≤+3 OVER", "redis               skipped: no redis-server"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestVerdictRoundsToATenth(t *testing.T) {
	b := &budget{allocs: 3, bytes: 400}
	cpu := &budget{allocs: 6, cpu: 10}
	for _, c := range []struct {
		b                  *budget
		allocs, bytes, cpu float64
		ok                 bool
	}{
		{b, 3.04, 400.4, 99, true},
		{b, 3.06, 0, 0, false},
		{b, -2, -100, 0, true},
		{b, 1, 400.6, 0, false},
		{cpu, 5, 5000, 10.04, true},
		{cpu, 5, 0, 10.2, false},
		{cpu, 6.2, 0, 0, false},
	} {
		got := c.b.verdict(c.allocs, c.bytes, c.cpu)
		if strings.HasSuffix(got, " ok") != c.ok {
			t.Errorf("verdict(%v, %v, %v) = %q, want ok %v", c.allocs, c.bytes, c.cpu, got, c.ok)
		}
	}
	if got := cpu.verdict(0, 0, 0); got != "≤+6 / +10µs CPU ok" {
		t.Errorf("verdict = %q", got)
	}
}

func TestAddRoundNeverUnderflows(t *testing.T) {
	var m measured
	// A reading that allocated less than the calibrated overhead.
	m.addRound(result{lat: []time.Duration{time.Millisecond}, rps: 1}, 0, procstat.IOStats{},
		memStats{Mallocs: 100, TotalAlloc: 100}, memStats{Mallocs: 120, TotalAlloc: 150}, memStats{Mallocs: 30, TotalAlloc: 80})
	if m.mallocs != 0 || m.bytes != 0 {
		t.Errorf("mallocs, bytes = %d, %d; want 0, 0", m.mallocs, m.bytes)
	}
}

func TestCheckTable(t *testing.T) {
	auth := header("Authorization", "Bearer t")
	origin := header("Authorization", "Bearer t", "Origin", "https://app.example")
	ok := []*scenario{
		{name: "baseline", site: site("x"), header: auth},
		{name: "plain_origin", site: site("x"), header: origin},
		{name: "cors", site: site("x"), header: origin, against: "plain_origin", budget: &budget{allocs: 2}},
		{name: "redis", skip: "no redis-server", header: auth, against: "baseline"},
	}
	if err := checkTable(ok); err != nil {
		t.Errorf("good table refused: %v", err)
	}
	for _, c := range []struct {
		name string
		scs  []*scenario
		want string
	}{
		{"other header", []*scenario{ok[0], {name: "cors", site: site("x"), header: origin, against: "baseline"}}, "scenario cors: sends other headers than its baseline"},
		{"unknown baseline", []*scenario{ok[0], {name: "cors", site: site("x"), header: auth, against: "plain"}}, `unknown baseline "plain"`},
		{"twice", []*scenario{ok[0], ok[0]}, "name used twice"},
		{"no site", []*scenario{{name: "empty", header: auth}}, "no site"},
		{"budget alone", []*scenario{{name: "b", site: site("x"), budget: &budget{allocs: 1}}}, "a budget needs a baseline"},
		{"itself", []*scenario{{name: "b", site: site("x"), against: "b"}}, "its own baseline"},
	} {
		err := checkTable(c.scs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

// TestScenarioTable checks the real table: every baseline sends the same
// request as the scenarios compared with it.
func TestScenarioTable(t *testing.T) {
	e := &env{dir: t.TempDir(), upstream: "127.0.0.1:1", pubFile: "k.pem", token: "t", redis: "127.0.0.1:2"}
	if err := checkTable(scenarios(e)); err != nil {
		t.Fatal(err)
	}
	e.redis, e.redisSkip = "", "no redis-server"
	if err := checkTable(scenarios(e)); err != nil {
		t.Fatal(err)
	}
}

func TestSelectScenarios(t *testing.T) {
	scs := []*scenario{
		{name: "baseline"},
		{name: "throttle", against: "baseline"},
		{name: "jwt_auth", against: "baseline"},
		{name: "throttle_redis", against: "throttle"},
		{name: "plain_origin"},
		{name: "cors", against: "plain_origin"},
	}
	names := func(scs []*scenario) string {
		out := make([]string, 0, len(scs))
		for _, sc := range scs {
			out = append(out, sc.name)
		}
		return strings.Join(out, ",")
	}
	for only, want := range map[string]string{
		"":               "baseline,throttle,jwt_auth,throttle_redis,plain_origin,cors",
		"throttle_redis": "baseline,throttle,throttle_redis",
		"cors, jwt_auth": "baseline,jwt_auth,plain_origin,cors",
	} {
		got, err := selectScenarios(scs, only)
		if err != nil || names(got) != want {
			t.Errorf("-only %q: %s, %v; want %s", only, names(got), err, want)
		}
	}
	if _, err := selectScenarios(scs, "nope"); err == nil {
		t.Error("-only with an unknown scenario accepted")
	}
}

// TestSyscallsFootnote: a scenario marked syscalls gets its read(2) and
// write(2) calls per request printed beside its baseline's.
func TestSyscallsFootnote(t *testing.T) {
	base := measuredScenario("throttle", "", nil, 1000, 1, 1, time.Millisecond)
	base.m.reads, base.m.writes = 3000, 2000
	redis := measuredScenario("throttle_redis", "throttle", nil, 1000, 1, 1, time.Millisecond)
	redis.syscalls = true
	redis.m.reads, redis.m.writes = 4500, 3000
	var out bytes.Buffer
	printReport(&out, []*scenario{base, redis})
	want := "throttle_redis: the caddy process made 4.50 read(2) and 3.00 write(2) calls per request (throttle: 3.00 and 2.00)"
	if !strings.Contains(out.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, out.String())
	}
	if strings.Contains(out.String(), "throttle: the caddy process") {
		t.Errorf("a scenario not marked syscalls got the footnote:\n%s", out.String())
	}
}
