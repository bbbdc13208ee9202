package identity

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHeadersDeleteEveryVariant(t *testing.T) {
	hs := NewHeaders(map[string]string{"x-user-id": "sub", "X-Role": "role"})
	if hs[0].Name != "X-Role" || hs[1].Name != "X-User-Id" {
		t.Fatalf("headers not canonical and sorted: %+v", hs)
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
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
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("body"))
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
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("body"))
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
