package main

import (
	"strings"
	"testing"
)

func TestAllocDeltasFromPprofTop(t *testing.T) {
	const head = `File: caddy
Type: alloc_objects
Showing nodes accounting for 412000, 100% of 412000 total
      flat  flat%   sum%        cum   cum%
`
	base := parseTop(strings.NewReader(head + `
     20000  4.85%  4.85%      20000  4.85%  net/http.Header.Clone (inline)
      2000  0.49%  5.34%      62000 15.05%  github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy.Handler.prepareRequest
      4000  0.97%  6.31%       4000  0.97%  runtime/pprof.allFrames
`))
	scen := parseTop(strings.NewReader(head + `
     20000  4.85%  4.85%      20000  4.85%  net/http.Header.Clone (inline)
      8000  1.94%  6.79%      70000 16.99%  github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy.Handler.prepareRequest
      2000  0.49%  7.28%     150000 36.41%  github.com/caddygateway/caddy-gateway/jwtauth.(*Handler).ServeHTTP
     -1000  0.24%  7.04%      -1000  0.24%  net/http.(*Transport).tryPutIdleConn
       100  0.02%  7.06%        100  0.02%  net/netip.Addr.string4 (inline)
      9000  2.18%  9.24%       9000  2.18%  runtime/pprof.allFrames
`))
	if scen["net/http.Header.Clone (inline)"] != 20000 {
		t.Fatalf("parsed %v", scen)
	}
	got := allocDeltas(base, scen, 2000, 0.1)
	want := []funcDelta{
		{"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy.Handler.prepareRequest", 3},
		{"github.com/caddygateway/caddy-gateway/jwtauth.(*Handler).ServeHTTP", 1},
		{"net/http.(*Transport).tryPutIdleConn", -0.5},
	}
	if len(got) != len(want) {
		t.Fatalf("deltas %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("delta %d = %v, want %v", i, got[i], want[i])
		}
	}
}
