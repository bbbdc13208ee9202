package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// trailerUpstream records, for each request, the headers and the trailers
// it received (read after the body, as net/http fills them in).
type trailerUpstream struct {
	*httptest.Server
	mu       sync.Mutex
	headers  []http.Header
	trailers []http.Header
}

func newTrailerUpstream(t *testing.T) *trailerUpstream {
	t.Helper()
	u := &trailerUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.headers = append(u.headers, r.Header.Clone())
		u.trailers = append(u.trailers, r.Trailer.Clone())
		u.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *trailerUpstream) last(t *testing.T) (http.Header, http.Header) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.headers) == 0 {
		t.Fatal("upstream never reached")
	}
	return u.headers[len(u.headers)-1], u.trailers[len(u.trailers)-1]
}

// rawChunked sends a chunked HTTP/1.1 request by hand, with a Trailer
// header announcing some trailers and a trailer section holding others as
// well (net/http merges every trailer it reads, announced or not).
func rawChunked(t *testing.T, path string, headers, trailers []string) int {
	t.Helper()
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(context.Background(), "tcp", fmt.Sprintf("localhost:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: localhost:%d\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n", path, httpPort)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n5\r\nhello\r\n0\r\n")
	for _, tr := range trailers {
		b.WriteString(tr + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// Identity headers sent as request trailers (HTTP/1.1 chunked, HTTP/2)
// never reach the upstream, neither as trailers nor as headers, through
// jwt_auth and api_key alike; other trailers go on.
func TestIdentityTrailersNeverReachUpstream(t *testing.T) {
	up := newTrailerUpstream(t)
	tc := gateway(t, "servers {\n\t\tprotocols h1 h2c\n\t}", `
	route /jwt/* {
		jwt_auth {
			secret `+jwtSecret+`
			header X-User-Id sub
		}
		reverse_proxy `+up.addr()+`
	}
	route /key/* {
		api_key {
			keys_file `+standardStore(t)+`
			header X-User-Id id
		}
		reverse_proxy `+up.addr()+`
	}`)
	_ = tc
	tok := token(t, `"sub":"alice"`)
	spoofs := []string{"X-User-Id: spoof-1", "x_user_id: spoof-2", "X-USER-ID: spoof-3"}
	for _, c := range []struct {
		path, cred, want string
	}{
		{"/jwt/a", "Authorization: Bearer " + tok, "alice"},
		{"/key/a", "X-API-Key: " + ciKey, "ci-bot"},
	} {
		// Announced and unannounced identity trailers, beside a checksum.
		status := rawChunked(t, c.path, []string{c.cred, "Trailer: X-User-Id, X-Checksum"}, append([]string{"X-Checksum: abc"}, spoofs...))
		if status != 200 {
			t.Fatalf("%s: status %d", c.path, status)
		}
		hdr, tr := up.last(t)
		if got := identityHeaders(&http.Request{Header: hdr}, "X-User-Id"); len(got) != 1 || got[0] != "X-User-Id="+c.want {
			t.Errorf("%s h1: upstream identity headers %q", c.path, got)
		}
		if got := identityHeaders(&http.Request{Header: tr}, "X-User-Id"); len(got) != 0 {
			t.Errorf("%s h1: identity trailers reached the upstream: %q", c.path, got)
		}
		if tr.Get("X-Checksum") != "abc" {
			t.Errorf("%s h1: other trailer lost: %v", c.path, tr)
		}
	}

	// HTTP/2 (h2c): trailers announced in the Trailer header.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Protocols:       func() *http.Protocols { p := new(http.Protocols); p.SetUnencryptedHTTP2(true); return p }(),
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12},
	}}
	for _, c := range []struct {
		path, name, value, want string
	}{
		{"/jwt/b", "Authorization", "Bearer " + tok, "alice"},
		{"/key/b", "X-API-Key", ciKey, "ci-bot"},
	} {
		pr, pw := io.Pipe()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, siteURL(c.path), pr)
		req.Header.Set(c.name, c.value)
		req.Trailer = http.Header{"X-User-Id": nil, "X-Checksum": nil}
		go func() {
			_, _ = io.WriteString(pw, "hello")
			req.Trailer.Set("X-User-Id", "spoof-h2")
			req.Trailer.Set("X-Checksum", "abc")
			_ = pw.Close()
		}()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("%s h2: %d %s", c.path, resp.StatusCode, resp.Proto)
		}
		hdr, tr := up.last(t)
		if got := identityHeaders(&http.Request{Header: hdr}, "X-User-Id"); len(got) != 1 || got[0] != "X-User-Id="+c.want {
			t.Errorf("%s h2: upstream identity headers %q", c.path, got)
		}
		if got := identityHeaders(&http.Request{Header: tr}, "X-User-Id"); len(got) != 0 {
			t.Errorf("%s h2: identity trailers reached the upstream: %q", c.path, got)
		}
		if tr.Get("X-Checksum") != "abc" {
			data, _ := json.Marshal(tr)
			t.Errorf("%s h2: other trailer lost: %s", c.path, data)
		}
	}
}

func (u *trailerUpstream) addr() string { return strings.TrimPrefix(u.URL, "http://") }
