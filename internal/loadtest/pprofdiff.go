package main

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// flatAllocs is, per function, the heap objects it allocated itself (flat
// alloc_objects) between a scenario's .before and .after profiles, as `go
// tool pprof -top` lists them.
func flatAllocs(ctx context.Context, dir, name string) (map[string]int64, error) {
	cmd := exec.CommandContext(ctx, "go", "tool", "pprof", "-sample_index=alloc_objects", "-top",
		"-nodecount=1000000", "-nodefraction=0", "-edgefraction=0",
		"-diff_base", filepath.Join(dir, name+".before.pb.gz"), filepath.Join(dir, name+".after.pb.gz"))
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go tool pprof (%s): %w", name, err)
	}
	return parseTop(strings.NewReader(string(out))), nil
}

// topLine is a line of `go tool pprof -top`: flat, flat%, sum%, cum,
// cum%, function.
var topLine = regexp.MustCompile(`^\s*(-?\d+)\s+\S+%\s+\S+%\s+-?\d+\s+\S+%\s+(.+?)\s*$`)

func parseTop(r io.Reader) map[string]int64 {
	flat := map[string]int64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := topLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err == nil {
			flat[m[2]] += n
		}
	}
	return flat
}

// funcDelta is a function's allocations per request in a scenario less
// those in its baseline.
type funcDelta struct {
	fn    string
	delta float64
}

// allocDeltas compares two flat profiles of n requests each, per request,
// leaving out the profiler's own work and deltas under min.
func allocDeltas(base, scen map[string]int64, n int, least float64) []funcDelta {
	var out []funcDelta
	for fn := range joinKeys(base, scen) {
		if strings.HasPrefix(fn, "runtime/pprof.") || strings.HasPrefix(fn, "compress/") {
			continue // writing the profile itself
		}
		d := float64(scen[fn]-base[fn]) / float64(n)
		if math.Abs(d) >= least {
			out = append(out, funcDelta{fn, d})
		}
	}
	slices.SortFunc(out, func(a, b funcDelta) int {
		return cmp.Or(cmp.Compare(math.Abs(b.delta), math.Abs(a.delta)), strings.Compare(a.fn, b.fn))
	})
	return out
}

func joinKeys(a, b map[string]int64) map[string]bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}
