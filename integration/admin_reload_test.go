package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/registry"
	"github.com/golang-jwt/jwt/v5"
)

// adminReloadSite is the site of generation gen: a named zone whose name
// changes with every generation (so a stale one is seen), an unnamed
// zone, jwt_auth with a remote and a static key set, and aggregate.
func adminReloadSite(gen int, jwksURL, aggURL string) string {
	return fmt.Sprintf(`
	throttle /t* {
		zone gen%d
		rate 100000/1s
	}
	throttle /u* {
		rate 100000/1s
	}
	jwt_auth /j* {
		jwks_url %s
		secret admin-reload-hmac-secret-0123456789abcdef
	}
	api_key /k* {
		key ci-2026 %s ci-bot
	}
	handle /agg {
		aggregate {
			backend one %s/one {
				breaker 5 10s
				cache
			}
		}
	}
	respond "ok"`, gen, jwksURL, strings.Repeat("ab", 32), aggURL)
}

// TestAdminReloadsUnderLoad: 20 config loads while requests flow and the
// admin API is polled: every answer is 200 and valid JSON, no answer shows
// a zone older than the config being replaced, after each load exactly the
// new config's state is listed, and the registries are back to their size.
func TestAdminReloadsUnderLoad(t *testing.T) {
	srv := newJWKSServer(t)
	srv.cacheControl = "max-age=3600"
	key := signingKey{kid: "reload", method: jwt.SigningMethodES256, priv: ecKey(t)}
	srv.setKeys(key.jwk())
	tok := key.sign(t, claims(nil))
	agg := newAggUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		aggJSON(`{"n":1}`)(w, r)
	})

	tc := gateway(t, "", adminReloadSite(0, srv.URL+"/keys", agg.URL))
	waitStatus(t, tc.Client, tok, 200)
	sizes := func() [4]int {
		return [4]int{registry.ThrottleZones.Len(), registry.JWTKeySets.Len(), registry.Aggregates.Len(), registry.APIKeys.Len()}
	}
	start := sizes()
	if start != [4]int{2, 2, 1, 1} {
		t.Fatalf("registry sizes %v after the first load, want 2 zones, 2 key sets, 1 aggregate, 1 api_key", start)
	}

	// done is the generation whose load has finished; loading the one
	// being loaded. An answer read between them may show either.
	var done, loading atomic.Int64
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var requests, pollsOK atomic.Int64
	fail := func(format string, args ...any) {
		t.Errorf(format, args...)
		stop()
	}

	// Load: every path, always 200.
	client := newHTTPClient(t)
	for w := range 4 {
		wg.Go(func() {
			paths := []string{"/t", "/u", "/j", "/agg"}
			for i := 0; ctx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(ctx, "GET", siteURL(paths[(w+i)%len(paths)]), nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := sendRetrying(client, req)
				if err != nil {
					if ctx.Err() == nil {
						fail("request: %v", err)
					}
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					fail("%s: %d", req.URL.Path, resp.StatusCode)
					return
				}
				requests.Add(1)
			}
		})
	}
	// Pollers: every route, always 200 with valid JSON; no stale zone.
	admin := fmt.Sprintf("localhost:%d", adminPort)
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				for _, path := range []string{"/gateway/throttle", "/gateway/jwt", "/gateway/aggregate", "/gateway/api_key", "/gateway/throttle/throttle?ip=127.0.0.1"} {
					low := done.Load()
					status, body, err := adminTry(ctx, "GET", admin, path, "", "")
					high := loading.Load()
					if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) {
						continue // the admin server is replaced on every load
					}
					if err != nil {
						if ctx.Err() == nil {
							fail("GET %s: %v", path, err)
						}
						return
					}
					if status != 200 || !json.Valid([]byte(body)) {
						fail("GET %s: %d %s", path, status, body)
						return
					}
					if path == "/gateway/throttle" {
						for _, name := range zoneNames(t, body) {
							if g, ok := strings.CutPrefix(name, "gen"); ok {
								if n, _ := strconv.Atoi(g); int64(n) < low || int64(n) > high {
									fail("zone %s listed while generation %d..%d runs: %s", name, low, high, body)
									return
								}
							}
						}
					}
					pollsOK.Add(1)
				}
			}
		})
	}

	for gen := 1; gen <= 20 && ctx.Err() == nil; gen++ {
		loading.Store(int64(gen))
		status, body := adminPost(t, "/load", "text/caddyfile", caddyfile("", adminReloadSite(gen, srv.URL+"/keys", agg.URL)))
		if status != 200 {
			fail("load %d: %d %s", gen, status, body)
			break
		}
		done.Store(int64(gen))
		// Right after a load: exactly the new config's state.
		_, body = adminCall(t, "GET", "/gateway/throttle")
		if names := zoneNames(t, body); !slices.Equal(names, []string{"gen" + strconv.Itoa(gen), "throttle"}) {
			fail("after load %d: zones %v", gen, names)
		}
		var sets struct {
			KeySets []struct {
				Source string `json:"source"`
			} `json:"key_sets"`
		}
		adminJSON(t, "GET", "/gateway/jwt", 200, &sets)
		if len(sets.KeySets) != 2 {
			fail("after load %d: key sets %+v, want jwks_url and static", gen, sets.KeySets)
		}
		var aggs struct {
			Handlers []json.RawMessage `json:"handlers"`
		}
		adminJSON(t, "GET", "/gateway/aggregate", 200, &aggs)
		if len(aggs.Handlers) != 1 {
			fail("after load %d: aggregate handlers %d, want 1", gen, len(aggs.Handlers))
		}
		adminJSON(t, "GET", "/gateway/api_key", 200, &aggs)
		if len(aggs.Handlers) != 1 {
			fail("after load %d: api_key handlers %d, want 1", gen, len(aggs.Handlers))
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	wg.Wait()
	if got := sizes(); got != start {
		t.Fatalf("registry sizes %v after 20 loads, want %v", got, start)
	}
	t.Logf("%d requests and %d admin answers during 20 loads", requests.Load(), pollsOK.Load())
	if requests.Load() == 0 || pollsOK.Load() == 0 {
		t.Fatal("no load or no polling happened")
	}
}

// zoneNames returns the zone names of a GET /gateway/throttle answer.
func zoneNames(t *testing.T, body string) []string {
	var list struct {
		Zones []struct {
			Name string `json:"name"`
		} `json:"zones"`
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Errorf("zones: %v in %s", err, body)
	}
	names := make([]string, len(list.Zones))
	for i, z := range list.Zones {
		names[i] = z.Name
	}
	return names
}
