package integration

import (
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// cacheBackend answers with its call count and the identity headers it
// received, with the Cache-Control (and other headers) that cc gives.
func cacheBackend(t *testing.T, cc func(r *http.Request) http.Header) *aggUpstream {
	t.Helper()
	var n atomic.Int64
	return newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		maps.Copy(w.Header(), cc(r))
		fmt.Fprintf(w, `{"n":%d,"user":%q,"tenant":%q,"path":%q}`, n.Add(1), r.Header.Get("X-User"), r.Header.Get("X-Tenant"), r.URL.RequestURI()) //nolint:gosec // a JSON test backend
	})
}

func maxAge(s string) func(*http.Request) http.Header {
	return func(*http.Request) http.Header { return http.Header{"Cache-Control": {s}} }
}

// A cacheable answer is served from the cache with no backend call, until
// it expires; what RFC 9111 forbids a shared cache to store is never
// stored.
func TestAggregateCacheRules(t *testing.T) {
	cases := []struct {
		name   string
		header http.Header
		stored bool
	}{
		{"max-age", http.Header{"Cache-Control": {"max-age=60"}}, true},
		{"s-maxage wins", http.Header{"Cache-Control": {"max-age=60, s-maxage=0"}}, false},
		{"s-maxage", http.Header{"Cache-Control": {"s-maxage=60"}}, true},
		{"no-store", http.Header{"Cache-Control": {"max-age=60, no-store"}}, false},
		{"no-cache", http.Header{"Cache-Control": {"max-age=60, no-cache"}}, false},
		{"private", http.Header{"Cache-Control": {"max-age=60, private"}}, false},
		{"set-cookie", http.Header{"Cache-Control": {"max-age=60"}, "Set-Cookie": {"s=1"}}, false},
		{"vary star", http.Header{"Cache-Control": {"max-age=60"}, "Vary": {"*"}}, false},
		{"age", http.Header{"Cache-Control": {"max-age=60"}, "Age": {"60"}}, false},
		{"none", http.Header{}, false},
	}
	ups := map[string]*aggUpstream{}
	var site strings.Builder
	for _, c := range cases {
		ups[c.name] = cacheBackend(t, func(*http.Request) http.Header { return c.header })
		fmt.Fprintf(&site, "\thandle /%s {\n\t\taggregate {\n\t\t\tbackend b %s/x {\n\t\t\t\tcache\n\t\t\t}\n\t\t}\n\t}\n", strings.ReplaceAll(c.name, " ", "-"), ups[c.name].URL)
	}
	created := cacheBackend(t, maxAge("max-age=60"))
	fmt.Fprintf(&site, "\thandle /status201 {\n\t\taggregate {\n\t\t\tbackend b %s/created {\n\t\t\t\tcache\n\t\t\t}\n\t\t}\n\t}\n", created.URL)
	short := cacheBackend(t, maxAge("max-age=1"))
	fmt.Fprintf(&site, "\thandle /short {\n\t\taggregate {\n\t\t\tbackend b %s/x {\n\t\t\t\tcache\n\t\t\t}\n\t\t}\n\t}\n", short.URL)
	tc := gateway(t, "", site.String())
	for _, c := range cases {
		path := "/" + strings.ReplaceAll(c.name, " ", "-")
		_, first := send(t, tc, get(t, path))
		_, second := send(t, tc, get(t, path))
		calls := ups[c.name].hits.Load()
		if c.stored && (calls != 1 || first != second) {
			t.Errorf("%s: %d calls, %s then %s; want one call, the same answer", c.name, calls, first, second)
		}
		if !c.stored && (calls != 2 || first == second) {
			t.Errorf("%s: %d calls; want no answer stored", c.name, calls)
		}
	}
	// Only a 200 is stored.
	created.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		created.hits.Add(1)
		w.Header().Set("Cache-Control", "max-age=60")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{}`)
	})
	send(t, tc, get(t, "/status201"))
	send(t, tc, get(t, "/status201"))
	if created.hits.Load() != 2 {
		t.Errorf("a 201 was stored: %d calls", created.hits.Load())
	}
	// Never stale: after max-age, a new call.
	send(t, tc, get(t, "/short"))
	send(t, tc, get(t, "/short"))
	time.Sleep(1100 * time.Millisecond)
	send(t, tc, get(t, "/short"))
	if short.hits.Load() != 2 {
		t.Errorf("max-age=1: %d calls over 1.1 s, want 2", short.hits.Load())
	}
	m := metricsText(t)
	if !strings.Contains(m, `caddy_aggregate_cache_requests_total{backend="b",result="hit"}`) ||
		!strings.Contains(m, `caddy_aggregate_cache_requests_total{backend="b",result="miss"}`) {
		t.Error("cache metrics missing")
	}
	if st := adminAggregate(t, "b"); st["cache_max_entries"] != 1000.0 {
		t.Errorf("admin: %v", st)
	}
}

// Two identities (from jwt_auth, and from a forwarded header) on one cached
// backend each get their own data, never the other's.
func TestAggregateCacheNoCrossIdentityLeak(t *testing.T) {
	const secret = "aggregate-cache-secret-0123456789abcdef" //nolint:gosec // a test key
	up := cacheBackend(t, maxAge("public, max-age=600"))
	tc := gateway(t, "", `
	jwt_auth /jwt {
		secret `+secret+`
	}
	handle /jwt {
		aggregate {
			backend me `+up.URL+`/me {
				header X-User {http.auth.user.id}
				cache 10
			}
		}
	}
	handle /fwd {
		aggregate {
			backend me `+up.URL+`/me {
				cache 10
			}
			forward_headers X-Tenant
		}
	}`)
	tok := func(sub string) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": sub, "exp": time.Now().Add(time.Hour).Unix(),
		}).SignedString([]byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + s
	}
	for round := range 3 {
		for _, who := range []string{"alice", "bob"} {
			_, body := send(t, tc, get(t, "/jwt", "Authorization", tok(who)))
			if !strings.Contains(body, `"user":"`+who+`"`) {
				t.Fatalf("round %d, %s got %s", round, who, body)
			}
			_, body = send(t, tc, get(t, "/fwd", "X-Tenant", who))
			if !strings.Contains(body, `"tenant":"`+who+`"`) {
				t.Fatalf("round %d, tenant %s got %s", round, who, body)
			}
		}
	}
	if up.hits.Load() != 4 {
		t.Fatalf("%d calls, want 4: one per identity and route", up.hits.Load())
	}
}

// Property: over random sequences of identities and of cacheable or
// uncacheable answers, every response carries the data of the identity
// that asked, and an answer is reused only while it is fresh.
func TestAggregateCacheIdentityProperty(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1)) //nolint:gosec // a reproducible test sequence, not a secret
	t.Logf("seed %d", seed)
	directives := []string{"max-age=600", "s-maxage=600", "private, max-age=600", "no-store", "max-age=600, no-cache", "", "max-age=0"}
	var mu sync.Mutex
	next := map[string]string{} // per path: the Cache-Control of the next answer
	up := cacheBackend(t, func(r *http.Request) http.Header {
		mu.Lock()
		defer mu.Unlock()
		return http.Header{"Cache-Control": {next[r.URL.Path]}}
	})
	tc := gateway(t, "", `
	aggregate {
		backend data `+up.URL+`/{http.request.uri.query.item} {
			cache 3
		}
		forward_headers X-User X-Tenant
	}`)
	users := []string{"ann", "ben", "cat", ""}
	for i := range 300 {
		user, tenant := users[rng.IntN(len(users))], users[rng.IntN(len(users))]
		item := fmt.Sprintf("i%d", rng.IntN(3))
		mu.Lock()
		next["/"+item] = directives[rng.IntN(len(directives))]
		mu.Unlock()
		var hdr []string
		if user != "" {
			hdr = append(hdr, "X-User", user)
		}
		if tenant != "" {
			hdr = append(hdr, "X-Tenant", tenant)
		}
		_, body := send(t, tc, get(t, "/?item="+item, hdr...))
		env := aggDecode(t, body)
		want := fmt.Sprintf(`"user":%q,"tenant":%q,"path":"/%s"`, user, tenant, item)
		if !strings.Contains(string(env.Data["data"]), want) {
			t.Fatalf("step %d (seed %d): user %q tenant %q item %s got %s", i, seed, user, tenant, item, body)
		}
	}
}

// N concurrent misses for one key make exactly one backend call, and every
// request gets its answer.
func TestAggregateCacheCollapsesConcurrentMisses(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	up := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		<-release
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, `{"v":1}`)
	})
	tc := gateway(t, "", `
	aggregate {
		backend hot `+up.URL+`/hot {
			cache
		}
		timeout 20s
	}`)
	missesBefore := cacheCount(t, "hot", "miss")
	const n = 25
	var wg sync.WaitGroup
	bodies := make([]string, n)
	for i := range n {
		wg.Go(func() {
			resp, err := tc.Client.Do(get(t, "/"))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			bodies[i] = string(b)
		})
	}
	// Every request has missed (and waits for the one call) before the
	// backend answers.
	deadline := time.Now().Add(15 * time.Second)
	for cacheCount(t, "hot", "miss")-missesBefore < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	for _, b := range bodies {
		if b != `{"data":{"hot":{"v":1}}}` {
			t.Fatalf("answer %s", b)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d backend calls for %d concurrent misses", calls.Load(), n)
	}
	// And the next request is a hit.
	send(t, tc, get(t, "/"))
	if calls.Load() != 1 {
		t.Fatal("no hit after the shared call")
	}
}

// cacheCount reads caddy_aggregate_cache_requests_total for a backend.
func cacheCount(t *testing.T, backend, result string) float64 {
	t.Helper()
	return sample(t, scrape(t, "caddy_aggregate_cache_requests_total"), fmt.Sprintf(`caddy_aggregate_cache_requests_total{backend=%q,result=%q}`, backend, result))
}

// The shared cache survives a reload that keeps the backend.
func TestAggregateCacheSurvivesReload(t *testing.T) {
	up := cacheBackend(t, maxAge("max-age=600"))
	site := func(extra string) string {
		return `
	handle /other {
		respond "` + extra + `"
	}
	aggregate {
		backend kept ` + up.URL + `/x {
			cache 5
		}
	}`
	}
	tc := gateway(t, "", site("one"))
	send(t, tc, get(t, "/"))
	tc = gateway(t, "", site("two"))
	send(t, tc, get(t, "/"))
	if up.hits.Load() != 1 {
		t.Fatalf("%d calls: the cache did not survive the reload", up.hits.Load())
	}
	if st := adminAggregate(t, "kept"); st["cache_entries"] != 1.0 || st["cache_bytes"].(float64) <= 0 {
		t.Fatalf("admin: %v", st)
	}
}
