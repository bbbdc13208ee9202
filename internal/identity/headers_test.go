package identity

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestHeadersDeleteEveryVariant(t *testing.T) {
	hs := NewHeaders(map[string]string{"x-user-id": "sub", "X-Role": "role"})
	if hs[0].Name != "X-Role" || hs[1].Name != "X-User-Id" {
		t.Fatalf("headers not canonical and sorted: %+v", hs)
	}
	r := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
	r.Header = http.Header{
		"X-User-Id": {"a"}, "x-user-id": {"b"}, "X_User_Id": {"c"}, "x_USER-id": {"d"},
		"X-Role": {"e"}, "X-User-Ids": {"keep"}, "Authorization": {"keep"},
	}
	hs.Delete(r)
	if len(r.Header) != 2 || r.Header.Get("X-User-Ids") != "keep" || r.Header.Get("Authorization") != "keep" {
		t.Fatalf("left %v", r.Header)
	}
}

// TestHeadersDeleteTrailers: identity headers sent as trailers are deleted
// when announced and again when net/http fills the trailers in at the end
// of the body (it merges every trailer it reads into the announced map).
func TestHeadersDeleteTrailers(t *testing.T) {
	hs := NewHeaders(map[string]string{"X-User-Id": "sub"})
	r := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/", strings.NewReader("body"))
	r.Trailer = http.Header{"X-User-Id": nil, "X-Checksum": nil}
	hs.Delete(r)
	if _, ok := r.Trailer["X-User-Id"]; ok {
		t.Fatal("announced identity trailer kept")
	}
	// What net/http does at EOF, announced or not.
	inner := r.Body
	r.Body = io.NopCloser(readerFunc(func(p []byte) (int, error) {
		n, err := inner.Read(p)
		if err == io.EOF {
			r.Trailer["X-Checksum"] = []string{"ok"}
			r.Trailer["X_user_id"] = []string{"spoof"}
		}
		return n, err
	}))
	hs.Delete(r) // the wrapper sits outside whatever body it finds
	if _, err := io.ReadAll(r.Body); err != nil {
		t.Fatal(err)
	}
	if len(r.Trailer) != 1 || r.Trailer.Get("X-Checksum") != "ok" {
		t.Fatalf("trailers after EOF: %v", r.Trailer)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func TestHeadersDeleteNoTrailerNoWrap(t *testing.T) {
	hs := NewHeaders(map[string]string{"X-User-Id": "sub"})
	r := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/", strings.NewReader("body"))
	body := r.Body
	hs.Delete(r)
	if r.Body != body {
		t.Fatal("body wrapped without trailers")
	}
}

func TestHeadersSet(t *testing.T) {
	hs := NewHeaders(map[string]string{"X-A": "a", "X-B": "b"})
	values := []string{"1", ""}
	hdr := http.Header{}
	hs.Set(hdr, values)
	if hdr.Get("X-A") != "1" || len(hdr) != 1 {
		t.Fatalf("set %v", hdr)
	}
	hdr["X-A"] = append(hdr["X-A"], "more")
	hdr["X-A"][0] = "changed"
	if values[0] != "1" {
		t.Fatal("a header change wrote into the values")
	}
}

// TestHeadersSetOwnValues checks that requests never share a header value
// slot: what one request's handlers write into its identity headers (in
// place, or by appending) reaches neither the values nor another request,
// across many requests (values come out of shared blocks).
func TestHeadersSetOwnValues(t *testing.T) {
	hs := NewHeaders(map[string]string{"X-A": "a", "X-B": "b"})
	values := []string{"alice", "admin"}
	hdrs := make([]http.Header, 3*valueBlockLen)
	for i := range hdrs {
		hdrs[i] = http.Header{}
		hs.Set(hdrs[i], values)
	}
	for i, hdr := range hdrs {
		hdr["X-A"][0] = "changed-" + strconv.Itoa(i)
		hdr["X-B"] = append(hdr["X-B"], "more-"+strconv.Itoa(i))
	}
	if values[0] != "alice" || values[1] != "admin" {
		t.Fatalf("values changed: %q", values)
	}
	for i, hdr := range hdrs {
		if got, want := hdr["X-A"], []string{"changed-" + strconv.Itoa(i)}; !slices.Equal(got, want) {
			t.Fatalf("request %d: X-A %q, want %q", i, got, want)
		}
		if got, want := hdr["X-B"], []string{"admin", "more-" + strconv.Itoa(i)}; !slices.Equal(got, want) {
			t.Fatalf("request %d: X-B %q, want %q", i, got, want)
		}
	}
	// More values than a block shares are allocated on their own.
	many := map[string]string{}
	manyValues := make([]string, 0, valueBlockLen/4+1)
	for i := range valueBlockLen/4 + 1 {
		many["X-H"+strconv.Itoa(i)] = "p"
		manyValues = append(manyValues, strconv.Itoa(i))
	}
	hdr := http.Header{}
	NewHeaders(many).Set(hdr, manyValues)
	if len(hdr) != len(many) {
		t.Fatalf("%d headers set, want %d", len(hdr), len(many))
	}
}

// BenchmarkHeadersSet: two identity headers cost a fraction of an
// allocation per request (one block per 32 requests).
func BenchmarkHeadersSet(b *testing.B) {
	hs := NewHeaders(map[string]string{"X-User-Id": "sub", "X-User-Role": "role"})
	values := []string{"alice", "admin"}
	hdr := http.Header{}
	b.ReportAllocs()
	for b.Loop() {
		hs.Set(hdr, values)
	}
}

func TestCheckHeaders(t *testing.T) {
	for _, c := range []struct {
		lines map[string]string
		want  string
	}{
		{map[string]string{"X-A": "a"}, ""},
		{map[string]string{"Bad:Name": "a"}, `header: invalid header name "Bad:Name"`},
		{map[string]string{"X-A": ""}, "header X-A: empty field path"},
		{map[string]string{"X-User-Id": "a", "x_user_id": "b"}, "duplicate mapping"},
	} {
		err := CheckHeaders(c.lines, "field path")
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%v: %v, want %q", c.lines, err, c.want)
		}
	}
}
