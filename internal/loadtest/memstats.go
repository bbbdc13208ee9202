package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// memStats is the part of runtime.MemStats the report uses, as the caddy
// process publishes it at /debug/vars (expvar "memstats").
type memStats struct {
	Mallocs    uint64 // heap objects allocated, cumulative
	TotalAlloc uint64 // heap bytes allocated, cumulative
}

// admin reads the caddy process's own figures from its admin endpoint.
type admin struct {
	base   string // http://host:port
	client *http.Client
}

func (a *admin) memStats(ctx context.Context) (memStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/debug/vars", nil)
	if err != nil {
		return memStats{}, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return memStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return memStats{}, fmt.Errorf("%s/debug/vars: %s", a.base, resp.Status)
	}
	var vars struct {
		MemStats *memStats `json:"memstats"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&vars); err != nil {
		return memStats{}, fmt.Errorf("%s/debug/vars: %w", a.base, err)
	}
	if vars.MemStats == nil || vars.MemStats.Mallocs == 0 {
		return memStats{}, fmt.Errorf("%s/debug/vars: no memstats", a.base)
	}
	return *vars.MemStats, nil
}

// readingOverhead is what one memstats reading allocates in the caddy
// process between two readings (the tail of one request and the head of
// the next): the least of a few back-to-back readings.
func (a *admin) readingOverhead(ctx context.Context) (memStats, error) {
	prev, err := a.memStats(ctx)
	if err != nil {
		return memStats{}, err
	}
	var least memStats
	for i := range 5 {
		cur, err := a.memStats(ctx)
		if err != nil {
			return memStats{}, err
		}
		d := memStats{Mallocs: cur.Mallocs - prev.Mallocs, TotalAlloc: cur.TotalAlloc - prev.TotalAlloc}
		if i == 0 || d.Mallocs < least.Mallocs {
			least = d
		}
		prev = cur
	}
	return least, nil
}

// saveAllocs writes the caddy process's heap profile (alloc_objects and
// alloc_space are /debug/pprof/allocs; the same profile) to dir/name.pb.gz.
// It is taken as /debug/pprof/heap?gc=1: the profile stands as of the
// last GC, and only the heap endpoint runs one first.
func (a *admin) saveAllocs(ctx context.Context, dir, name string) error {
	return a.saveProfile(ctx, "/debug/pprof/heap?gc=1", dir, name)
}

// saveCPU writes the caddy process's CPU profile over the next d to
// dir/name.pb.gz.
func (a *admin) saveCPU(ctx context.Context, d time.Duration, dir, name string) error {
	return a.saveProfile(ctx, "/debug/pprof/profile?seconds="+strconv.Itoa(int(d/time.Second)), dir, name)
}

// saveProfile writes the profile at path (of the admin endpoint) to
// dir/name.pb.gz.
func (a *admin) saveProfile(ctx context.Context, path, dir, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s: %s", a.base, path, resp.Status)
	}
	f, err := os.Create(filepath.Join(dir, name+".pb.gz"))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, io.LimitReader(resp.Body, 64<<20)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
