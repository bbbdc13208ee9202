package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/procstat"
)

// scenario is one site of the caddy under test, and what was measured on
// it.
type scenario struct {
	name    string
	about   string
	site    []string    // directives of the site
	header  http.Header // sent with every request
	against string      // name of the scenario it is compared with (its baseline)
	budget  *budget     // most it may allocate per request over its baseline
	redis   bool        // Redis script calls and redis-server CPU are reported
	// syscalls: the caddy process's read(2) and write(2) calls per
	// request are reported, beside its baseline's (where a round trip's
	// CPU goes).
	syscalls bool
	skip     string // why it does not run

	addr string
	m    measured
}

// budget is the most a scenario may allocate per request over its
// baseline (and, when cpu is set, the most caddy CPU time it may add per
// request, in µs); bytes or cpu 0 is no such budget.
type budget struct {
	allocs float64
	bytes  float64
	cpu    float64
}

// ran tells whether the scenario ran and measured requests.
func (sc *scenario) ran() bool { return sc.skip == "" && sc.m.requests > 0 }

// indexByName maps each scenario's name to it.
func indexByName(scs []*scenario) map[string]*scenario {
	byName := make(map[string]*scenario, len(scs))
	for _, sc := range scs {
		byName[sc.name] = sc
	}
	return byName
}

// measured sums what the rounds of one scenario measured.
type measured struct {
	requests int64
	lat      []time.Duration // every request's latency, sorted by merge
	rpsSum   float64         // sum of each round's req/s
	rounds   int
	cpu      time.Duration // caddy CPU time while the scenario ran
	mallocs  uint64        // caddy heap objects allocated (memstats Mallocs)
	bytes    uint64        // caddy heap bytes allocated (memstats TotalAlloc)
	calls    int64         // Redis script calls
	rcpu     time.Duration // redis-server CPU time
	reads    int64         // caddy read(2) calls (/proc/<pid>/io syscr)
	writes   int64         // caddy write(2) calls (syscw)
}

// addRound adds one round's figures. The memstats counters are the
// difference between two readings less the readings' own allocations.
func (m *measured) addRound(r result, cpu time.Duration, sys procstat.IOStats, before, after, overhead memStats) {
	m.requests += int64(len(r.lat))
	m.lat = append(m.lat, r.lat...)
	m.rpsSum += r.rps
	m.rounds++
	m.cpu += cpu
	m.reads += sys.Reads
	m.writes += sys.Writes
	m.mallocs += sub(after.Mallocs, before.Mallocs+overhead.Mallocs)
	m.bytes += sub(after.TotalAlloc, before.TotalAlloc+overhead.TotalAlloc)
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

func (m *measured) rps() float64 {
	if m.rounds == 0 {
		return 0
	}
	return m.rpsSum / float64(m.rounds)
}

func (m *measured) pct(p int) time.Duration {
	if len(m.lat) == 0 {
		return 0
	}
	slices.Sort(m.lat)
	return m.lat[(len(m.lat)-1)*p/100]
}

func (m *measured) perReq(total float64) float64 {
	if m.requests == 0 {
		return 0
	}
	return total / float64(m.requests)
}

func (m *measured) allocsPerReq() float64 { return m.perReq(float64(m.mallocs)) }
func (m *measured) bytesPerReq() float64  { return m.perReq(float64(m.bytes)) }
func (m *measured) cpuPerReq() float64    { return m.perReq(float64(m.cpu.Nanoseconds())) / 1e3 } // µs

// row is one line of the report: a scenario's figures and, when it has a
// baseline that ran, the deltas and ratios over it.
type row struct {
	name                  string
	rps                   float64
	p50, p99              time.Duration
	cpu                   float64 // µs per request
	allocs, bytes         float64 // per request
	skip                  string
	against               string
	dAllocs, dBytes, dCPU float64
	rRPS, rP50, rP99      float64 // ratios over the baseline
	verdict               string  // budget and whether the delta meets it
}

// rows computes the report from measured scenarios.
func rows(scs []*scenario) []row {
	byName := indexByName(scs)
	out := make([]row, 0, len(scs))
	for _, sc := range scs {
		r := row{name: sc.name, skip: sc.skip}
		if sc.skip != "" {
			out = append(out, r)
			continue
		}
		m := &sc.m
		r.rps, r.p50, r.p99, r.cpu = m.rps(), m.pct(50), m.pct(99), m.cpuPerReq()
		r.allocs, r.bytes = m.allocsPerReq(), m.bytesPerReq()
		if b, ok := byName[sc.against]; ok && b.ran() {
			bm := &b.m
			r.against = b.name
			r.dAllocs, r.dBytes, r.dCPU = r.allocs-bm.allocsPerReq(), r.bytes-bm.bytesPerReq(), r.cpu-bm.cpuPerReq()
			r.rRPS, r.rP50, r.rP99 = ratio(r.rps, bm.rps()), ratio(float64(r.p50), float64(bm.pct(50))), ratio(float64(r.p99), float64(bm.pct(99)))
			if sc.budget != nil {
				r.verdict = sc.budget.verdict(r.dAllocs, r.dBytes, r.dCPU)
			}
		}
		out = append(out, r)
	}
	return out
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// verdict states the budget and whether the deltas meet it. Deltas are
// rounded to a tenth of an allocation and to a byte first: a reading
// repeats to about ±0.05 allocations.
func (b *budget) verdict(dAllocs, dBytes, dCPU float64) string {
	s := fmt.Sprintf("≤+%g", b.allocs)
	ok := round(dAllocs, 10) <= b.allocs
	if b.bytes > 0 {
		s += fmt.Sprintf(" / +%g B", b.bytes)
		ok = ok && round(dBytes, 1) <= b.bytes
	}
	if b.cpu > 0 {
		s += fmt.Sprintf(" / +%gµs CPU", b.cpu)
		ok = ok && round(dCPU, 10) <= b.cpu
	}
	if ok {
		return s + " ok"
	}
	return s + " OVER"
}

func round(v, per float64) float64 {
	if v < 0 {
		return -round(-v, per)
	}
	return float64(int64(v*per+0.5)) / per
}

// printReport writes the table, one line per scenario.
func printReport(w io.Writer, scs []*scenario) {
	fmt.Fprintf(w, "%-19s %8s %9s %9s %9s %10s %9s | %-13s %8s %8s %8s %6s %6s %6s | %s\n",
		"scenario", "req/s", "p50", "p99", "CPU/req", "allocs/req", "B/req",
		"over", "Δallocs", "ΔB", "ΔCPU", "req/s", "p50", "p99", "budget (allocs / B / CPU over baseline)")
	for _, r := range rows(scs) {
		if r.skip != "" {
			fmt.Fprintf(w, "%-19s skipped: %s\n", r.name, r.skip)
			continue
		}
		line := fmt.Sprintf("%-19s %8.0f %9v %9v %7.1fµs %10.2f %9.0f |", r.name, r.rps,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.cpu, r.allocs, r.bytes)
		if r.against != "" {
			line += fmt.Sprintf(" %-13s %+8.2f %+8.0f %+6.1fµs %6.3f %6.3f %6.3f | %s", r.against, r.dAllocs, r.dBytes, r.dCPU,
				r.rRPS, r.rP50, r.rP99, r.verdict)
		}
		fmt.Fprintln(w, strings.TrimRight(line, " |"))
	}
	for _, sc := range scs {
		if sc.redis && sc.ran() {
			fmt.Fprintf(w, "\n%s: %.3f Redis script calls (EVALSHA+EVAL, INFO commandstats) per request; redis-server CPU %.1fµs per request (not in CPU/req above)\n",
				sc.name, sc.m.perReq(float64(sc.m.calls)), sc.m.perReq(float64(sc.m.rcpu.Nanoseconds()))/1e3)
		}
	}
	byName := indexByName(scs)
	for _, sc := range scs {
		if !sc.syscalls || !sc.ran() {
			continue
		}
		line := fmt.Sprintf("\n%s: the caddy process made %.2f read(2) and %.2f write(2) calls per request", sc.name,
			sc.m.perReq(float64(sc.m.reads)), sc.m.perReq(float64(sc.m.writes)))
		if b, ok := byName[sc.against]; ok && b.ran() {
			line += fmt.Sprintf(" (%s: %.2f and %.2f)", b.name, b.m.perReq(float64(b.m.reads)), b.m.perReq(float64(b.m.writes)))
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w, "\nscenarios:")
	for _, sc := range scs {
		fmt.Fprintf(w, "  %-19s %s\n", sc.name, sc.about)
	}
	fmt.Fprintln(w, "CPU/req is the caddy process's utime+stime while the scenario ran, divided by its requests (upstreams and this client run in another process).")
	fmt.Fprintln(w, "allocs/req and B/req are the caddy process's memstats Mallocs and TotalAlloc (/debug/vars) over the scenario's requests, less what reading them allocates.")
	fmt.Fprintln(w, "ratios (req/s, p50, p99) and deltas are over the scenario named in \"over\", which sent the same request in the same run.")
}

// checkTable refuses a scenario table whose names repeat, whose baselines
// are unknown, or whose baseline sends another request than the scenario:
// a delta is the directive's work only when the requests are the same.
func checkTable(scs []*scenario) error {
	byName := map[string]*scenario{}
	var errs []error
	for _, sc := range scs {
		if byName[sc.name] != nil {
			errs = append(errs, fmt.Errorf("scenario %s: name used twice", sc.name))
		}
		byName[sc.name] = sc
	}
	for _, sc := range scs {
		if sc.skip == "" && len(sc.site) == 0 {
			errs = append(errs, fmt.Errorf("scenario %s: no site", sc.name))
		}
		if sc.against == "" {
			if sc.budget != nil {
				errs = append(errs, fmt.Errorf("scenario %s: a budget needs a baseline", sc.name))
			}
			continue
		}
		b := byName[sc.against]
		switch {
		case b == nil:
			errs = append(errs, fmt.Errorf("scenario %s: unknown baseline %q", sc.name, sc.against))
		case b == sc:
			errs = append(errs, fmt.Errorf("scenario %s: its own baseline", sc.name))
		case !sameHeader(sc.header, b.header):
			errs = append(errs, fmt.Errorf("scenario %s: sends other headers than its baseline %s", sc.name, b.name))
		}
	}
	return errors.Join(errs...)
}

func sameHeader(a, b http.Header) bool {
	return maps.EqualFunc(a, b, slices.Equal)
}

// selectScenarios keeps the named scenarios and, transitively, their
// baselines; "" keeps all. The first scenario (the plain baseline) always
// stays.
func selectScenarios(scs []*scenario, only string) ([]*scenario, error) {
	if only == "" {
		return scs, nil
	}
	byName := indexByName(scs)
	keep := map[string]bool{scs[0].name: true}
	for name := range strings.SplitSeq(only, ",") {
		name = strings.TrimSpace(name)
		if byName[name] == nil {
			return nil, fmt.Errorf("-only: no scenario %q", name)
		}
		for sc := byName[name]; sc != nil && !keep[sc.name]; sc = byName[sc.against] {
			keep[sc.name] = true
		}
	}
	return slices.DeleteFunc(slices.Clone(scs), func(sc *scenario) bool { return !keep[sc.name] }), nil
}
