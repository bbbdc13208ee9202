package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// rawBackend is a loopback backend that writes raw bytes on each connection
// (after reading the request head), so it can declare what it does not send.
func rawBackend(t *testing.T, respond func(c net.Conn)) string {
	t.Helper()
	l, err := new(net.ListenConfig).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				respond(c)
			})
		}
	})
	return "http://" + l.Addr().String()
}

// A backend declaring a huge Content-Length and sending two bytes must not
// make the gateway reserve memory for the declared length: within max_body
// the allocation follows the bytes received, beyond it the backend is
// too_large before any byte is read.
func TestAggregateDeclaredContentLengthReservesNoMemory(t *testing.T) {
	declare := func(n int64) func(c net.Conn) {
		return func(c net.Conn) {
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{}", n)
		}
	}
	huge := rawBackend(t, declare(500<<30)) // 500 GiB
	near := rawBackend(t, declare(60<<20))  // 60 MiB, within max_body
	good := newAggUpstream(t, aggJSON(`{"ok":true}`))
	tc := gateway(t, "", `
	handle /huge {
		aggregate {
			backend huge `+huge+`
			backend good `+good.URL+`
		}
	}
	handle /near {
		aggregate {
			backend n1 `+near+`/1
			backend n2 `+near+`/2
			backend n3 `+near+`/3
			backend n4 `+near+`/4
			backend good `+good.URL+`
			max_body 64MiB
		}
	}`)
	resp, body := send(t, tc, get(t, "/huge"))
	if resp.StatusCode != http.StatusOK || body != `{"data":{"huge":null,"good":{"ok":true}},"errors":[{"backend":"huge","code":"too_large","status":200}]}` {
		t.Fatalf("huge: status %d: %s", resp.StatusCode, body)
	}

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const requests = 3
	for range requests {
		resp, body := send(t, tc, get(t, "/near"))
		// The body ends early: the backend is unreachable (truncated), the
		// others are intact.
		env := aggDecode(t, body)
		if resp.StatusCode != http.StatusOK || string(env.Data["good"]) != `{"ok":true}` ||
			!slices.Equal(env.errs(), []string{"n1:unreachable:200", "n2:unreachable:200", "n3:unreachable:200", "n4:unreachable:200"}) {
			t.Fatalf("near: status %d: %s", resp.StatusCode, body)
		}
	}
	runtime.ReadMemStats(&after)
	// Reserving the declared length would allocate 4 x 60 MiB per request.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 32<<20 {
		t.Fatalf("%d MiB allocated for %d requests of 4 two-byte bodies declared as 60 MiB each", alloc>>20, requests)
	}
}

func TestAggregateMaxBodyCeiling(t *testing.T) {
	gateway(t, "", `respond "ok"`) // a running admin endpoint
	cf := caddyfile("", "\taggregate {\n\t\tbackend a http://127.0.0.1:9/a\n\t\tmax_body 1TiB\n\t}")
	status, body := aggLoad(t, "text/caddyfile", cf)
	if status == http.StatusOK || !strings.Contains(body, "max_body 1TiB: must be between 1 byte and 64MiB") {
		t.Fatalf("Caddyfile: %d %s", status, body)
	}
	cfg := fmt.Sprintf(`{"admin":{"listen":"localhost:%d"},"apps":{"http":{"servers":{"s":{"listen":[":%d"],"routes":[{"handle":[{"handler":"aggregate","max_body":1099511627776,"backends":[{"name":"a","url":"http://127.0.0.1:9/a"}]}]}]}}}}}`,
		adminPort, httpPort)
	status, body = aggLoad(t, "application/json", cfg)
	if status == http.StatusOK || !strings.Contains(body, "must be between 1 byte and 64MiB") {
		t.Fatalf("JSON: %d %s", status, body)
	}
}

// Invalid UTF-8 passes json.Valid; spliced raw it would make the whole
// envelope invalid. That backend alone is invalid_json.
func TestAggregateInvalidUTF8IsInvalidJSON(t *testing.T) {
	latin1 := newAggUpstream(t, aggJSON("{\"name\":\"caf\xe9\"}"))
	surrogate := newAggUpstream(t, aggJSON("[\"\xed\xa0\x80\"]"))
	outsideTarget := newAggUpstream(t, aggJSON("{\"user\":{\"id\":1},\"note\":\"\xff\"}"))
	good := newAggUpstream(t, aggJSON(`{"name":"café"}`))
	tc := gateway(t, "", `
	aggregate {
		backend latin1 `+latin1.URL+`
		backend surrogate `+surrogate.URL+`
		backend target `+outsideTarget.URL+` {
			target user
		}
		backend good `+good.URL+`
	}`)
	resp, body := send(t, tc, get(t, "/"))
	if !utf8.ValidString(body) || !json.Valid([]byte(body)) {
		t.Fatalf("envelope is not valid UTF-8 JSON: %q", body)
	}
	want := `{"data":{"latin1":null,"surrogate":null,"target":null,"good":{"name":"café"}},"errors":[` +
		`{"backend":"latin1","code":"invalid_json","status":200},{"backend":"surrogate","code":"invalid_json","status":200},` +
		`{"backend":"target","code":"invalid_json","status":200}]}`
	if resp.StatusCode != http.StatusOK || body != want {
		t.Fatalf("status %d\n got %s\nwant %s", resp.StatusCode, body, want)
	}
}

// hungListener returns the address of a loopback listener whose accept
// queue is full: a new connect to it never completes (the kernel drops the
// SYN), as with a backend host that does not answer.
func hungListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; ; i++ {
		c, err := (&net.Dialer{Timeout: 300 * time.Millisecond}).DialContext(t.Context(), "tcp", addr)
		if err != nil {
			break // the queue is full
		}
		t.Cleanup(func() { c.Close() })
		if i == 16 {
			t.Skip("cannot fill a listen queue on this system")
		}
	}
	return addr
}

// A connect that does not complete is bounded by the backend's timeout and
// the total budget, not by a fixed dial timeout; the same for a TLS
// handshake that never completes.
func TestAggregateConnectRespectsBudget(t *testing.T) {
	hung := hungListener(t)
	// Accepts the TCP connection and never answers the TLS ClientHello.
	silent, err := new(net.ListenConfig).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		silent.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	tc := gateway(t, "", `
	handle /total {
		aggregate {
			backend a http://`+hung+`/a
			timeout 5s
		}
	}
	handle /backend {
		aggregate {
			backend a http://`+hung+`/a {
				timeout 4500ms
			}
			timeout 30s
		}
	}
	handle /tls {
		aggregate {
			backend a https://`+silent.Addr().String()+`/a
			timeout 6s
		}
	}`)
	// The three run at once: the test takes as long as the longest budget.
	var wg sync.WaitGroup
	for path, least := range map[string]time.Duration{
		"/total":   5 * time.Second,
		"/backend": 4500 * time.Millisecond,
		"/tls":     6 * time.Second,
	} {
		wg.Go(func() {
			start := time.Now()
			resp, err := sendRetrying(tc.Client, get(t, path))
			if err != nil {
				t.Errorf("%s: %v", path, err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(start)
			if resp.StatusCode != http.StatusGatewayTimeout || string(body) != `{"data":{"a":null},"errors":[{"backend":"a","code":"timeout"}]}` {
				t.Errorf("%s: status %d: %s", path, resp.StatusCode, body)
			}
			// A fixed 3s dial (or 5s TLS handshake) timeout gives up early.
			if took < least-200*time.Millisecond {
				t.Errorf("%s: gave up after %v, before the budget of %v", path, took, least)
			}
		})
	}
	wg.Wait()
}

// Responses built from request-dependent values other than the URL carry
// Cache-Control: private, no-store; those built from the URL alone do not.
func TestAggregatePrivateWhenRequestDependent(t *testing.T) {
	up := newAggUpstream(t, aggJSON(`{}`))
	routes := map[string]string{
		"/remote":   `backend a ` + up.URL + `/u/{remote_host}`,
		"/clientip": `backend a ` + up.URL + `/u?ip={client_ip}`,
		"/cookie":   `backend a ` + up.URL + `/u/{cookie.session}`,
		"/header":   `backend a ` + up.URL + `/u/{header.X-Tenant}`,
		"/vars":     `backend a ` + up.URL + `/u/{vars.tenant}`,
		"/hdrline":  "backend a " + up.URL + "/u {\n header X-Client {remote_host}\n }",
		"/query":    `backend a ` + up.URL + `/u/{query.id}?p={path.0}&m={method}`,
		"/static":   `backend a ` + up.URL + `/u/static`,
	}
	var site strings.Builder
	site.WriteString("vars tenant t1\n")
	for path, b := range routes {
		fmt.Fprintf(&site, "handle %s {\n aggregate {\n %s\n }\n}\n", path, b)
	}
	tc := gateway(t, "", site.String())
	for path := range routes {
		resp, body := send(t, tc, get(t, path+"?id=7", "Cookie", "session=s1", "X-Tenant", "t1"))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", path, resp.StatusCode, body)
		}
		want := "private, no-store"
		if path == "/query" || path == "/static" {
			want = ""
		}
		if cc := resp.Header.Get("Cache-Control"); cc != want {
			t.Errorf("%s: Cache-Control %q, want %q", path, cc, want)
		}
	}
}

// Literal URL text that needs escaping would make Go re-encode the whole
// path on the wire (an escaped %2F in a value arriving as '/'), and a
// backend name is a metric label: both are refused at load.
func TestAggregateURLLiteralAndBackendNameRefused(t *testing.T) {
	gateway(t, "", `respond "ok"`) // a running admin endpoint
	for what, backend := range map[string]string{
		"character ' ' must be percent-encoded": `{"name":"a","url":"http://127.0.0.1:9/my files/{http.request.uri.query.id}"}`,
		"not a valid percent-encoding":          `{"name":"a","url":"http://127.0.0.1:9/a%zz/{http.request.uri.query.id}"}`,
		"without control characters":            `{"name":"a\nb","url":"http://127.0.0.1:9/a"}`,
	} {
		cfg := fmt.Sprintf(`{"admin":{"listen":"localhost:%d"},"apps":{"http":{"servers":{"s":{"listen":[":%d"],"routes":[{"handle":[{"handler":"aggregate","backends":[%s]}]}]}}}}}`,
			adminPort, httpPort, backend)
		status, body := aggLoad(t, "application/json", cfg)
		if status == http.StatusOK || !strings.Contains(body, what) {
			t.Errorf("%s: %d %s", what, status, body)
		}
	}
}
