package aggregate

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFreshness(t *testing.T) {
	for _, tc := range []struct {
		name string
		hdr  http.Header
		want time.Duration
	}{
		{"max-age", http.Header{"Cache-Control": {"max-age=60"}}, 60 * time.Second},
		{"s-maxage wins", http.Header{"Cache-Control": {"max-age=60, s-maxage=10"}}, 10 * time.Second},
		{"s-maxage=0 wins", http.Header{"Cache-Control": {"s-maxage=0, max-age=60"}}, 0},
		{"public", http.Header{"Cache-Control": {"public, max-age=5"}}, 5 * time.Second},
		{"quoted", http.Header{"Cache-Control": {`max-age="7"`}}, 7 * time.Second},
		{"case", http.Header{"Cache-Control": {"Max-Age=3"}}, 3 * time.Second},
		{"two lines", http.Header{"Cache-Control": {"public", "max-age=4"}}, 4 * time.Second},
		{"age", http.Header{"Cache-Control": {"max-age=60"}, "Age": {"15"}}, 45 * time.Second},
		{"age eats it", http.Header{"Cache-Control": {"max-age=60"}, "Age": {"60"}}, 0},
		{"bad age", http.Header{"Cache-Control": {"max-age=60"}, "Age": {"-1"}}, 0},
		{"none", http.Header{}, 0},
		{"expires only", http.Header{"Expires": {"Thu, 01 Dec 2099 16:00:00 GMT"}}, 0},
		{"no-store", http.Header{"Cache-Control": {"max-age=60, no-store"}}, 0},
		{"no-cache", http.Header{"Cache-Control": {"no-cache, max-age=60"}}, 0},
		{"no-cache fields", http.Header{"Cache-Control": {`max-age=60, no-cache="Set-Cookie"`}}, 0},
		{"private", http.Header{"Cache-Control": {"max-age=60", "private"}}, 0},
		{"private fields", http.Header{"Cache-Control": {`private="X-A", max-age=60`}}, 0},
		{"private upper", http.Header{"Cache-Control": {"PRIVATE, max-age=60"}}, 0},
		{"set-cookie", http.Header{"Cache-Control": {"max-age=60"}, "Set-Cookie": {"a=b"}}, 0},
		{"vary star", http.Header{"Cache-Control": {"max-age=60"}, "Vary": {"Accept, *"}}, 0},
		{"vary named", http.Header{"Cache-Control": {"max-age=60"}, "Vary": {"Accept"}}, 60 * time.Second},
		{"malformed", http.Header{"Cache-Control": {"max-age=6x"}}, 0},
		{"empty arg", http.Header{"Cache-Control": {"max-age="}}, 0},
		{"conflict", http.Header{"Cache-Control": {"max-age=60, max-age=10"}}, 0},
		{"same twice", http.Header{"Cache-Control": {"max-age=60, max-age=60"}}, 60 * time.Second},
		{"huge", http.Header{"Cache-Control": {"max-age=99999999999999999999999"}}, maxDeltaSeconds * time.Second},
		{"quoted comma", http.Header{"Cache-Control": {`foo="a,no-store", max-age=9`}}, 9 * time.Second},
		{"unterminated", http.Header{"Cache-Control": {`max-age="9`}}, 0},
	} {
		if got := freshness(tc.hdr); got != tc.want {
			t.Errorf("%s: %v: freshness %v, want %v", tc.name, tc.hdr, got, tc.want)
		}
	}
}

func TestCacheKeySeparatesEveryHeaderValue(t *testing.T) {
	base := http.Header{"Authorization": {"Bearer a"}, "User-Agent": {""}}
	k := makeCacheKey("GET", "http://h/x", base)
	for name, other := range map[string]cacheKey{
		"identity":   makeCacheKey("GET", "http://h/x", http.Header{"Authorization": {"Bearer b"}, "User-Agent": {""}}),
		"method":     makeCacheKey("HEAD", "http://h/x", base),
		"url":        makeCacheKey("GET", "http://h/y", base),
		"extra":      makeCacheKey("GET", "http://h/x", http.Header{"Authorization": {"Bearer a"}, "User-Agent": {""}, "X": {""}}),
		"two values": makeCacheKey("GET", "http://h/x", http.Header{"Authorization": {"Bearer a", ""}, "User-Agent": {""}}),
		"shifted":    makeCacheKey("GET", "http://h/x", http.Header{"Authorization": {"Bearer", " a"}, "User-Agent": {""}}),
	} {
		if other == k {
			t.Errorf("%s: same key", name)
		}
	}
	traced := http.Header{"Authorization": {"Bearer a"}, "User-Agent": {""}, "Traceparent": {"00-x"}, "Tracestate": {"a=b"}}
	if makeCacheKey("GET", "http://h/x", traced) != k {
		t.Error("the trace context changes the key")
	}
}

func TestCacheExpiresAndEvicts(t *testing.T) {
	c, err := newResponseCache(2)
	if err != nil {
		t.Fatal(err)
	}
	k := func(s string) cacheKey { return makeCacheKey("GET", s, nil) }
	c.put(k("a"), []byte("aaaa"), time.Hour)
	c.put(k("b"), []byte("bb"), time.Millisecond)
	if n, size := c.stats(); n != 2 || size != 6 {
		t.Fatalf("stats %d %d", n, size)
	}
	if c.get(k("b"), time.Now().Add(time.Second)) != nil {
		t.Fatal("stale entry served")
	}
	c.put(k("a"), []byte("a"), time.Hour) // replaced: bytes follow
	c.put(k("c"), []byte("ccc"), time.Hour)
	c.put(k("d"), []byte("dd"), time.Hour) // evicts a, the least recently used
	if c.get(k("a"), time.Now()) != nil || c.get(k("d"), time.Now()) == nil {
		t.Fatal("LRU order")
	}
	if n, size := c.stats(); n != 2 || size != 5 {
		t.Fatalf("stats %d %d, want 2 entries of 5 bytes", n, size)
	}
}

// N concurrent requests of one key make one call; the call goes on when
// the request that started it leaves, and is canceled when every waiting
// request has left.
func TestCacheDoCollapsesAndOutlivesItsStarter(t *testing.T) {
	c, _ := newResponseCache(10)
	k := makeCacheKey("GET", "http://h/x", nil)
	var calls atomic.Int32
	release := make(chan struct{})
	fetch := func(ctx context.Context) flightResult {
		calls.Add(1)
		select {
		case <-release:
			return flightResult{status: 200, value: []byte("1")}
		case <-ctx.Done():
			return flightResult{code: failureCode(ctx, ctx.Err())}
		}
	}
	starter, leave := context.WithTimeout(context.Background(), time.Minute)
	first := make(chan flightResult)
	go func() { first <- c.do(starter, k, fetch) }()
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	const n = 20
	var wg sync.WaitGroup
	results := make([]flightResult, n)
	for i := range n {
		wg.Go(func() { results[i] = c.do(context.Background(), k, fetch) })
	}
	for {
		c.mu.Lock()
		w := c.flights[k].waiters
		c.mu.Unlock()
		if w == n+1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	leave() // the starter goes away
	if r := <-first; r.code != codeCanceled {
		t.Fatalf("starter: %+v", r)
	}
	close(release)
	wg.Wait()
	for _, r := range results {
		if r.code != "" || string(r.value) != "1" {
			t.Fatalf("waiter: %+v", r)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d calls", calls.Load())
	}

	// Everyone leaves: the call is canceled.
	ctx, cancel := context.WithCancel(context.Background())
	canceled := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.do(ctx, k, func(ctx context.Context) flightResult {
			<-ctx.Done()
			canceled <- "yes"
			return flightResult{code: codeCanceled}
		})
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	<-done
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the shared call went on with nobody waiting")
	}
}

// A shared call keeps the budget of the request that started it.
func TestCacheDoKeepsTheBudget(t *testing.T) {
	c, _ := newResponseCache(10)
	k := makeCacheKey("GET", "http://h/x", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	r := c.do(ctx, k, func(ctx context.Context) flightResult {
		if _, ok := ctx.Deadline(); !ok {
			return flightResult{code: "no deadline"}
		}
		<-ctx.Done()
		return flightResult{code: failureCode(ctx, ctx.Err())}
	})
	if r.code != codeTimeout {
		t.Fatalf("%+v", r)
	}
}

func TestQueryNamesHideValues(t *testing.T) {
	tmpl, err := compileURL("http://u:pw@h:1/a/{id}?key=s3cret&user={http.auth.user.id};flag#frag")
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.shown != "http://h:1/a/{id}?key&user&flag" || strings.Contains(tmpl.shown, "s3cret") {
		t.Fatalf("shown %q", tmpl.shown)
	}
}
