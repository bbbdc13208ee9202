package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// zones holds the state of every zone in use, keyed by zone identity (its
// name and its rates, or an unnamed handler's fingerprint): a new config is
// provisioned before the old one is cleaned up, so state outlives reloads
// that keep a zone's rates, and a reload that changes them starts afresh.
var zones = caddy.NewUsagePool()

// loading records, per config being loaded or running (keyed by its
// context's Done channel), what its handlers declared: the rates of each
// named zone, and how many unnamed handlers share each fingerprint. An
// entry goes away with its config's context.
var loading = struct {
	sync.Mutex
	configs map[<-chan struct{}]*declared
}{configs: make(map[<-chan struct{}]*declared)}

type declared struct {
	zones   map[string]zoneDecl // zone name -> the rates its first handler declared
	unnamed map[string]int      // fingerprint -> handlers seen
}

type zoneDecl struct {
	id    string // ratesID
	rates []Rate
}

// declaredFor returns the declarations of ctx's config, creating them.
// Called with loading locked.
func declaredFor(ctx caddy.Context) *declared {
	done := ctx.Done()
	d := loading.configs[done]
	if d == nil {
		d = &declared{zones: make(map[string]zoneDecl), unnamed: make(map[string]int)}
		loading.configs[done] = d
		if done != nil {
			context.AfterFunc(ctx, func() {
				loading.Lock()
				delete(loading.configs, done)
				loading.Unlock()
			})
		}
	}
	return d
}

// declareZone records that a handler of ctx's config names zone with these
// rates, and refuses rates that differ from those of an earlier handler of
// the same config naming it.
func declareZone(ctx caddy.Context, zone string, rates []Rate, limits []limit) error {
	id := ratesID(limits)
	loading.Lock()
	defer loading.Unlock()
	d := declaredFor(ctx)
	prev, ok := d.zones[zone]
	if !ok {
		d.zones[zone] = zoneDecl{id: id, rates: rates}
		return nil
	}
	if prev.id != id {
		return fmt.Errorf("zone %q is declared with different rates (%s; and %s): every handler naming a zone must declare the same rates",
			zone, formatRates(prev.rates), formatRates(rates))
	}
	return nil
}

// unnamedKey returns the pool key of an unnamed zone: its handler's
// fingerprint and its rank among identical handlers of the same config, so
// identical unnamed handlers stay private to each other while each finds
// its own state again after a reload.
func unnamedKey(ctx caddy.Context, fingerprint string) string {
	loading.Lock()
	defer loading.Unlock()
	d := declaredFor(ctx)
	n := d.unnamed[fingerprint]
	d.unnamed[fingerprint] = n + 1
	return "unnamed/" + fingerprint + "/" + strconv.Itoa(n)
}

// namedKey returns the pool key of a named zone: its name and its rates, so
// state is never read under rates other than those that wrote it.
func namedKey(zone string, limits []limit) string {
	return "zone/" + zone + "/" + ratesID(limits)
}

// joinMemZone joins (or creates) the in-memory state under poolKey. It is
// the handler's only side effect, made once the configuration is known to be
// good; Cleanup releases it.
func joinMemZone(poolKey string, maxKeys, nRates int, now func() int64) (*memStore, error) {
	val, _, err := zones.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		s := newMemStore(maxKeys, nRates, now)
		go s.run(sweepInterval)
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	s := val.(*memStore)
	s.configure(maxKeys)
	return s, nil
}
