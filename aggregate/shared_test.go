package aggregate

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"

	"github.com/caddyserver/caddy/v2"
)

// A handler joins the admin registry at Provision and leaves it at
// Cleanup; a new config with the same backend takes over its breaker and
// cache (Caddy provisions the new config before it cleans up the old), a
// changed backend gets its own, and the last holder's Cleanup frees them.
func TestSharedStateAndRegistry(t *testing.T) {
	cfg := func(cooldown time.Duration) *Handler {
		return &Handler{Backends: []*Backend{{
			Name: "b", URL: "http://127.0.0.1:9/x",
			Breaker: &BreakerConfig{Failures: 1, Cooldown: caddy.Duration(cooldown)},
			Cache:   &CacheConfig{MaxEntries: 3},
		}}}
	}
	provision := func(h *Handler) *Handler {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		t.Cleanup(cancel)
		if err := h.Provision(ctx); err != nil {
			t.Fatal(err)
		}
		return h
	}
	old := provision(cfg(time.Minute))
	if !slices.Contains(registry.Aggregates.Members(), registry.AggregateSource(old)) {
		t.Fatal("not in the registry after Provision")
	}
	report := old.Backends[0].breaker.allow()
	report(codeUnreachable) // opens it
	same := provision(cfg(time.Minute))
	changed := provision(cfg(2 * time.Minute))
	_ = old.Cleanup()
	if slices.Contains(registry.Aggregates.Members(), registry.AggregateSource(old)) {
		t.Fatal("still in the registry after Cleanup")
	}
	if same.Backends[0].breaker != old.Backends[0].breaker || same.Backends[0].cache != old.Backends[0].cache {
		t.Fatal("an unchanged backend did not keep its breaker and cache")
	}
	if got := same.AdminAggregate()[0]; got.Breaker != "open" || got.Failures != 1 || got.CacheMaxEntries != 3 {
		t.Fatalf("admin view %+v", got)
	}
	if changed.Backends[0].breaker == same.Backends[0].breaker || changed.AdminAggregate()[0].Breaker != "closed" {
		t.Fatal("a changed backend shares the old breaker")
	}
	key := same.poolKeys[0]
	_ = same.Cleanup()
	_ = changed.Cleanup()
	if _, loaded := pool.References(key); loaded {
		t.Fatal("the pool still holds the breaker after the last Cleanup")
	}
}
