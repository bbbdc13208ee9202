package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// The seeds' dashboard: user first, then orders (path value) and
// notifications (query value and header value) from the user's fields;
// an independent backend runs beside the chain, not after it.
func TestAggregateDependentChain(t *testing.T) {
	independentCalled := make(chan struct{})
	user := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		// The user answers only once the independent backend was called:
		// had it waited for the chain, this would time out.
		select {
		case <-independentCalled:
		case <-time.After(5 * time.Second):
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, `{"user":{"id":"u/7 ?&#","org":"acme corp","n":12345678901234567890,"vip":true,"f":1.50e3}}`)
	})
	echo := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"path":%q,"query":%q,"org":%q}`, r.URL.EscapedPath(), r.URL.RawQuery, r.Header.Get("X-Org")) //nolint:gosec // a JSON test backend
	})
	independent := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		close(independentCalled)
		io.WriteString(w, `{"ok":true}`)
	})
	tc := gateway(t, "", `
	aggregate {
		backend user `+user.URL+`/me {
			target user
		}
		backend orders `+echo.URL+`/orders/{backends.user.id}/{backends.user.n} {
			header X-Org "org {backends.user.org}"
		}
		backend notifications `+echo.URL+`/notes?u={backends.user.id}&vip={backends.user.vip}&f={backends.user.f}
		backend status `+independent.URL+`/status
		timeout 10s
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Aggregate-Complete") != "true" {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	env := aggDecode(t, body)
	if got := string(env.Data["orders"]); got != `{"path":"/orders/u%2F7%20%3F%26%23/12345678901234567890","query":"","org":"org acme corp"}` {
		t.Errorf("orders: %s", got)
	}
	if got := string(env.Data["notifications"]); got != `{"path":"/notes","query":"u=u%2F7+%3F%26%23&vip=true&f=1.50e3","org":""}` {
		t.Errorf("notifications: %s", got)
	}
	if user.hits.Load() != 1 || echo.hits.Load() != 2 || independent.hits.Load() != 1 {
		t.Errorf("calls: user %d, echo %d, independent %d", user.hits.Load(), echo.hits.Load(), independent.hits.Load())
	}
}

// A dependency that failed, a missing field, null, an object, an array, a
// value the path rules refuse, or a control character in a header value:
// the dependent backend is not called and gets `dependency`, with its
// fallback; a required one fails the response.
func TestAggregateDependencyFailures(t *testing.T) {
	src := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		io.WriteString(w, `{"null":null,"obj":{"a":1},"arr":[1],"dots":"..","empty":"","ctl":"a\u0001b","ok":"fine"}`)
	})
	dep := newAggUpstream(t, aggJSON(`{"called":true}`))
	tc := gateway(t, "", `
	handle /values {
		aggregate {
			backend src `+src.URL+`/src
			backend missing `+dep.URL+`/x/{backends.src.nope}
			backend null `+dep.URL+`/x/{backends.src.null}
			backend obj `+dep.URL+`/x?v={backends.src.obj}
			backend arr `+dep.URL+`/x?v={backends.src.arr}
			backend dots `+dep.URL+`/x/{backends.src.dots}
			backend empty `+dep.URL+`/x/{backends.src.empty} {
				fallback `+"`\"none\"`"+`
			}
			backend ctl `+dep.URL+`/x {
				header X-V {backends.src.ctl}
			}
			backend deep `+dep.URL+`/x/{backends.src.ok.more}
			backend good `+dep.URL+`/x/{backends.src.ok}
		}
	}
	handle /failed {
		aggregate {
			backend src `+src.URL+`/fail
			backend next `+dep.URL+`/x/{backends.src.ok}
			backend last `+dep.URL+`/x/{backends.next.called} {
				required
			}
		}
	}`)
	resp, body := send(t, tc, get(t, "/values"))
	env := aggDecode(t, body)
	want := []string{"missing:dependency", "null:dependency", "obj:dependency", "arr:dependency", "dots:dependency", "empty:dependency", "ctl:dependency", "deep:dependency"}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Aggregate-Complete") != "false" || !slices.Equal(env.errs(), want) {
		t.Fatalf("status %d, errors %v: %s", resp.StatusCode, env.errs(), body)
	}
	if string(env.Data["empty"]) != `"none"` || string(env.Data["good"]) != `{"called":true}` || string(env.Data["null"]) != "null" {
		t.Fatalf("data: %s", body)
	}
	if dep.hits.Load() != 1 {
		t.Fatalf("%d dependent calls, want only good's", dep.hits.Load())
	}

	// A failed dependency fails the whole chain after it; a required
	// backend of it gives 502.
	resp, body = send(t, tc, get(t, "/failed"))
	env = aggDecode(t, body)
	if resp.StatusCode != http.StatusBadGateway || !slices.Equal(env.errs(), []string{"src:status:500", "next:dependency", "last:dependency"}) {
		t.Fatalf("status %d, errors %v", resp.StatusCode, env.errs())
	}
	if dep.hits.Load() != 1 {
		t.Fatal("a backend was called after its dependency failed")
	}
}

// Cycles, self-references and unknown names are config errors naming the
// line (Caddyfile) or the backend (JSON); nothing is loaded.
func TestAggregateDependencyConfigErrors(t *testing.T) {
	gateway(t, "", `respond "ok"`) // a running admin endpoint
	cases := map[string]struct{ site, want string }{
		"unknown": {`aggregate {
		backend a http://127.0.0.1:9/a
		backend b http://127.0.0.1:9/b/{backends.nobody.id}
	}`, `backend "b": {backends.nobody.id}: unknown backend "nobody", at Caddyfile:13`},
		"self": {`aggregate {
		backend a http://127.0.0.1:9/a {
			header X-A {backends.a.id}
		}
	}`, `backend "a": {backends.a.id}: a backend cannot use its own response, at Caddyfile:13`},
		"cycle": {`aggregate {
		backend a http://127.0.0.1:9/a?b={backends.b.id}
		backend b http://127.0.0.1:9/b?c={backends.c.id}
		backend c http://127.0.0.1:9/c/{backends.a.id}
	}`, `dependency cycle "a" -> "b" -> "c" -> "a", at Caddyfile:`},
	}
	loadErr := func(contentType, config string) (int, string) {
		status, body := aggLoad(t, contentType, config)
		var e struct{ Error string }
		_ = json.Unmarshal([]byte(body), &e)
		return status, e.Error
	}
	for name, tc := range cases {
		status, msg := loadErr("text/caddyfile", caddyfile("", tc.site))
		if status != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: status %d: %s", name, status, msg)
		}
	}
	status, msg := loadErr("application/json", fmt.Sprintf(`{"admin":{"listen":"localhost:%d"},"apps":{"http":{"servers":{"s":{"listen":[":%d"],"routes":[{"handle":[{"handler":"aggregate","backends":[
		{"name":"a","url":"http://127.0.0.1:9/a/{backends.b.x}"},
		{"name":"b","url":"http://127.0.0.1:9/b","header":{"X":["{backends.a.y}"]}}]}]}]}}}}}`, adminPort, httpPort))
	if status != http.StatusBadRequest || !strings.Contains(msg, `backend "b": dependency cycle "a" -> "b" -> "a"`) {
		t.Errorf("JSON cycle: status %d: %s", status, msg)
	}
}
