package ratelimit

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
)

func TestAuthWarnOnceWhenAuthPlaceholdersUnset(t *testing.T) {
	if newAuthWarn("{client_ip}") != nil || newAuthWarn("{http.request.header.X-Tenant}") != nil {
		t.Fatal("check built for a key without {http.auth.*}")
	}
	a := newAuthWarn("tenant-{http.request.header.X}-{http.auth.user.id}")
	if a == nil || len(a.names) != 1 || a.names[0] != "http.auth.user.id" {
		t.Fatalf("names %+v", a)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	h := &Handler{logger: zap.New(core), zoneName: "z"}

	// Set (even empty, as for an anonymous request): no error.
	known := caddy.NewReplacer()
	known.Set("http.auth.user.id", "")
	a.check(known, h)
	if logs.Len() != 0 {
		t.Fatalf("logged for a set placeholder: %v", logs.All())
	}
	// Unset: one error naming the fix, then never again.
	for range 3 {
		a.check(caddy.NewReplacer(), h)
	}
	if logs.Len() != 1 {
		t.Fatalf("%d lines, want 1", logs.Len())
	}
	e := logs.All()[0]
	if e.Level != zapcore.ErrorLevel || !strings.Contains(e.Message, "route") || !strings.Contains(e.Message, "after the auth directive") {
		t.Fatalf("line %v %q", e.Level, e.Message)
	}
}
