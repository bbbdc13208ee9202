package integration

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// settledGoroutines returns the number of goroutines once it has stopped
// changing (the same for half a second), dropping the client's idle
// connections first so that the server's side of them ends too.
func settledGoroutines(client *http.Transport) int {
	deadline := time.Now().Add(15 * time.Second)
	last, same := -1, 0
	for time.Now().Before(deadline) && same < 10 {
		client.CloseIdleConnections()
		time.Sleep(50 * time.Millisecond)
		if n := runtime.NumGoroutine(); n == last {
			same++
		} else {
			last, same = n, 0
		}
	}
	return last
}

// waitGoroutines waits, up to a generous deadline, for the number of
// goroutines to come back to at most want, and returns the last count.
func waitGoroutines(client *http.Transport, want int) int {
	deadline := time.Now().Add(15 * time.Second)
	for {
		client.CloseIdleConnections()
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Backends that hang, stall after their headers or trickle their body, and
// a client that goes away mid-fan-out: once the request is over, no
// goroutine of it remains (in the gateway, nor in a backend still waiting
// on a connection the gateway should have closed).
func TestAggregateNoGoroutineOutlivesItsRequest(t *testing.T) {
	hang := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers; returns when the gateway hangs up
	})
	stall := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	trickle := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"pad":"`)
		for {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := io.WriteString(w, "x"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	entered := make(chan struct{}, 8)
	gone := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	})
	// The fast backend closes its connections: an idle keep-alive connection
	// is not a leak, but its goroutines would blur the count.
	fast := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, `{"fast":true}`)
	})
	tc := gateway(t, "", `
	handle /hang {
		aggregate {
			backend slow `+hang.URL+`/x
			backend fast `+fast.URL+`/x
			timeout 300ms
		}
	}
	handle /stall {
		aggregate {
			backend slow `+stall.URL+`/x
			backend fast `+fast.URL+`/x
			timeout 300ms
		}
	}
	handle /trickle {
		aggregate {
			backend slow `+trickle.URL+`/x
			backend fast `+fast.URL+`/x
			timeout 300ms
		}
	}
	handle /gone {
		aggregate {
			backend a `+gone.URL+`/a
			backend b `+gone.URL+`/b
			backend fast `+fast.URL+`/x
			timeout 1m
		}
	}`)
	client := tc.Client.Transport.(*http.Transport)

	round := func() {
		for _, path := range []string{"/hang", "/stall", "/trickle"} {
			resp, body := send(t, tc, get(t, path))
			want := `{"data":{"slow":null,"fast":{"fast":true}},"errors":[{"backend":"slow","code":"timeout"}]}`
			if path != "/hang" {
				want = `{"data":{"slow":null,"fast":{"fast":true}},"errors":[{"backend":"slow","code":"timeout","status":200}]}`
			}
			if resp.StatusCode != http.StatusOK || body != want {
				t.Fatalf("%s: status %d: %s", path, resp.StatusCode, body)
			}
		}
		// The client goes away while both slow backends are waiting.
		abandon(t, tc, "/gone", 1, entered, 2)
	}

	// The first round starts what stays for the process or the config
	// (Caddy's lazily started goroutines); every later round must leave
	// nothing behind.
	round()
	before := settledGoroutines(client)
	for range 2 {
		round()
	}
	if after := waitGoroutines(client, before); after > before {
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Fatalf("%d goroutines before, %d after the requests ended:\n%s", before, after, buf.String())
	}
	if hang.hits.Load() != 3 || stall.hits.Load() != 3 || trickle.hits.Load() != 3 || gone.hits.Load() != 6 {
		t.Fatalf("backend calls: hang %d, stall %d, trickle %d, gone %d", hang.hits.Load(), stall.hits.Load(), trickle.hits.Load(), gone.hits.Load())
	}
}

// abandon sends n concurrent requests for path and cancels them once the
// backends have been entered calls times.
func abandon(t *testing.T, tc *caddytest.Tester, path string, n int, entered <-chan struct{}, calls int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			resp, err := tc.Client.Do(get(t, path).WithContext(ctx))
			if err == nil {
				resp.Body.Close()
				t.Errorf("%s answered although the client went away", path)
			}
		})
	}
	for range calls {
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("backends of %s not called", path)
		}
	}
	cancel()
	wg.Wait()
}

// A hung dependency is cut by the total budget and every backend waiting
// for it, directly or down a chain, gets `dependency` or `timeout`; a
// client leaving while a chain waits, or while a shared cached call runs,
// leaves nothing behind either.
func TestAggregateChainNoGoroutineOutlivesItsRequest(t *testing.T) {
	entered := make(chan struct{}, 64)
	hang := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	})
	hungRoot := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	fast := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, `{"id":"x"}`)
	})
	tc := gateway(t, "", `
	handle /chain {
		aggregate {
			backend root `+hungRoot.URL+`/root
			backend a `+fast.URL+`/a/{backends.root.id}
			backend b `+fast.URL+`/b {
				header X-Id {backends.root.id}
			}
			backend c `+fast.URL+`/c?a={backends.a.id}
			backend free `+fast.URL+`/free
			timeout 300ms
		}
	}
	handle /gone {
		aggregate {
			backend root `+hang.URL+`/root
			backend a `+fast.URL+`/a/{backends.root.id}
			backend shared `+hang.URL+`/shared {
				cache
			}
			timeout 1m
		}
	}`)
	client := tc.Client.Transport.(*http.Transport)
	round := func() {
		resp, body := send(t, tc, get(t, "/chain"))
		env := aggDecode(t, body)
		for _, e := range env.Errors {
			if e.Backend == "root" && e.Code != "timeout" || e.Backend != "root" && e.Code != "dependency" && e.Code != "timeout" {
				t.Fatalf("/chain: %v", env.errs())
			}
		}
		if resp.StatusCode != http.StatusOK || len(env.Errors) != 4 || string(env.Data["free"]) != `{"id":"x"}` {
			t.Fatalf("/chain: status %d: %s", resp.StatusCode, body)
		}
		// The client goes away while a waits for root and two requests
		// share one cached call: root twice, shared once or twice (the
		// second request may join the first's call).
		abandon(t, tc, "/gone", 2, entered, 3)
		for len(entered) > 0 {
			<-entered
		}
	}
	round()
	before := settledGoroutines(client)
	for range 2 {
		round()
	}
	if after := waitGoroutines(client, before); after > before {
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Fatalf("%d goroutines before, %d after the requests ended:\n%s", before, after, buf.String())
	}
	if fast.hits.Load() != 3 { // only free, once per round
		t.Fatalf("%d calls of dependents of a hung backend", fast.hits.Load()-3)
	}
}
