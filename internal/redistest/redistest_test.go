package redistest

import (
	"strings"
	"testing"
	"time"
)

func TestServerLifecycle(t *testing.T) {
	s := Start(t)
	s.MustCli("SET", "k", "v")
	if got := s.MustCli("GET", "k"); got != "v" {
		t.Fatalf("GET = %q", got)
	}
	s.ResetStats()
	s.MustCli("GET", "k")
	if n := s.CommandCalls("get"); n != 1 {
		t.Fatalf("get calls = %d, want 1", n)
	}
	s.Freeze()
	start := time.Now()
	if _, err := s.Cli("-t", "1", "PING"); err == nil && time.Since(start) < 500*time.Millisecond {
		t.Fatal("a frozen server answered")
	}
	s.Resume()
	if got := s.MustCli("PING"); got != "PONG" {
		t.Fatalf("after resume: %q", got)
	}
	s.Restart()
	if got := s.MustCli("EXISTS", "k"); got != "0" {
		t.Fatal("data survived a restart without persistence")
	}
	s.Kill()
	if out, err := s.Cli("PING"); err == nil && strings.Contains(out, "PONG") {
		t.Fatal("a killed server answered")
	}
}

func TestCommandCallsParse(t *testing.T) {
	info := "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=30,usec_per_call=2.5\r\ncmdstat_eval:calls=3,usec=1\r\n"
	if n := commandCalls(info, "evalsha"); n != 12 {
		t.Fatalf("evalsha = %d", n)
	}
	if n := commandCalls(info, "eval"); n != 3 {
		t.Fatalf("eval = %d", n)
	}
	if n := commandCalls(info, "get"); n != 0 {
		t.Fatalf("get = %d", n)
	}
}
