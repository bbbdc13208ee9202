package ratelimit

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/redistest"
	"github.com/caddygateway/caddy-gateway/internal/registry"

	"github.com/caddyserver/caddy/v2"
)

// The admin view of a Redis zone against a real redis-server: the state is
// read in Redis, a reset published by any instance empties this one's
// refusal cache, and DELETE removes the client's keys.
func TestAdminRedisPeekResetAndPubSub(t *testing.T) {
	srv := redistest.Start(t)
	h := &Handler{
		Zone: "adminunit", Key: "{http.request.header.X-Key}",
		Rate:  []Rate{rate(2, time.Hour, 2)},
		Redis: &Redis{URLs: []string{srv.URL()}, Timeout: caddy.Duration(2 * time.Second)},
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.Cleanup() }()
	zoneViews.Lock()
	v := zoneViews.m[h.poolKey]
	zoneViews.Unlock()
	if v == nil {
		t.Fatal("the handler did not join the admin view")
	}
	z := h.redis.z
	out := make([]verdict, 1)
	for i, want := range []bool{true, true, false} {
		if res, ok := z.take(t.Context(), "t:victim", out); res != redisDecided || ok != want {
			t.Fatalf("request %d: %v %v", i, res, ok)
		}
	}
	if !z.refused.lookup("t:victim", z.limits, 1, out) {
		t.Fatal("the refusal is not cached")
	}
	st, err := v.AdminClient(t.Context(), registry.ThrottleQuery{Key: "victim"})
	if err != nil || st.Source != "redis" || st.ID != "t:victim" || st.Rates[0].Remaining != 0 || st.Rates[0].RetryAfter < 1700 {
		t.Fatalf("state %+v %v", st, err)
	}

	// A reset published by another instance.
	for deadline := time.Now().Add(5 * time.Second); !strings.HasSuffix(strings.TrimSpace(srv.MustCli("PUBSUB", "NUMSUB", "throttle:reset")), "1"); {
		if time.Now().After(deadline) {
			t.Fatal("no subscriber on throttle:reset")
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.MustCli("PUBLISH", "throttle:reset", z.base+"{t:victim}")
	for deadline := time.Now().Add(5 * time.Second); z.refused.lookup("t:victim", z.limits, 1, out); {
		if time.Now().After(deadline) {
			t.Fatal("the published reset did not empty the refusal cache")
		}
		time.Sleep(10 * time.Millisecond)
	}

	st, err = v.AdminReset(context.Background(), registry.ThrottleQuery{Key: "victim"})
	if err != nil || st.Rates[0].Remaining != 2 || st.Rates[0].FullIn != 0 {
		t.Fatalf("after reset %+v %v", st, err)
	}
	if n := srv.MustCli("EXISTS", z.keys("t:victim")[0]); strings.TrimSpace(n) != "0" {
		t.Fatalf("the client's key is still in Redis (%s)", n)
	}
	if res, ok := z.take(t.Context(), "t:victim", out); res != redisDecided || !ok {
		t.Fatal("refused after the reset")
	}
}
