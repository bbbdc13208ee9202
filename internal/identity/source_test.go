package identity

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestExtract(t *testing.T) {
	bearer := []Source{{Kind: FromHeader, Name: "Authorization", Prefix: "Bearer"}}
	key := []Source{{Kind: FromHeader, Name: "X-Api-Key"}, {Kind: FromQuery, Name: "api_key"}, {Kind: FromCookie, Name: "k"}}
	for _, c := range []struct {
		name        string
		sources     []Source
		emptyIsNone bool
		target      string
		header      http.Header
		want        string
		err         error
	}{
		{"bearer", bearer, false, "/", http.Header{"Authorization": {"bEaReR  tok"}}, "tok", nil},
		{"other scheme", bearer, false, "/", http.Header{"Authorization": {"Basic abc"}}, "", nil},
		{"no space", bearer, false, "/", http.Header{"Authorization": {"Bearertok"}}, "", nil},
		{"empty after scheme", bearer, false, "/", http.Header{"Authorization": {"Bearer"}}, "", ErrEmpty},
		{"empty after scheme, none", bearer, true, "/", http.Header{"Authorization": {"Bearer "}}, "", nil},
		{"twice in one header", bearer, false, "/", http.Header{"Authorization": {"Bearer a", "Bearer b"}}, "", ErrMany},
		{"header", key, true, "/", http.Header{"X-Api-Key": {" k1 "}}, "k1", nil},
		{"empty header is none", key, true, "/?api_key=q", http.Header{"X-Api-Key": {""}}, "q", nil},
		{"header and query", key, true, "/?api_key=q", http.Header{"X-Api-Key": {"k"}}, "", ErrMany},
		{"query twice", key, true, "/?api_key=a&api_key=b", nil, "", ErrMany},
		{"empty query is none", key, true, "/?api_key=", nil, "", nil},
		{"cookie", key, true, "/", http.Header{"Cookie": {"a=1; k=c"}}, "c", nil},
		{"cookie and header", key, true, "/", http.Header{"Cookie": {"k=c"}, "X-Api-Key": {"k"}}, "", ErrMany},
	} {
		r := httptest.NewRequestWithContext(t.Context(), http.MethodGet, c.target, nil)
		r.Header = c.header
		got, src, err := Extract(r, c.sources, c.emptyIsNone)
		if !errors.Is(err, c.err) || got != c.want || (got != "") != (src != nil) {
			t.Errorf("%s: %q %v %v, want %q %v", c.name, got, src, err, c.want, c.err)
		}
	}
}

func TestStripKeepsTheRestByteForByte(t *testing.T) {
	r := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/p?a=%41%2b&api%5Fkey=s&b=x+y&api_key=t&c&=z", nil)
	Strip(r, &Source{Kind: FromQuery, Name: "api_key"})
	if want := "a=%41%2b&b=x+y&c&=z"; r.URL.RawQuery != want {
		t.Fatalf("query %q, want %q", r.URL.RawQuery, want)
	}
	if r.RequestURI != "/p?a=%41%2b&b=x+y&c&=z" {
		t.Fatalf("RequestURI %q", r.RequestURI)
	}
	r = httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/p?api_key=s", nil)
	Strip(r, &Source{Kind: FromQuery, Name: "api_key"})
	if r.URL.RawQuery != "" || r.RequestURI != "/p" {
		t.Fatalf("only parameter: %q %q", r.URL.RawQuery, r.RequestURI)
	}
	r.Header = http.Header{"Cookie": {"a=1;k=secret; b=\"x y\"", "k=2"}, "X-Api-Key": {"s"}}
	Strip(r, &Source{Kind: FromCookie, Name: "k"})
	if got := r.Header["Cookie"]; len(got) != 1 || got[0] != "a=1; b=\"x y\"" {
		t.Fatalf("cookies %q", got)
	}
	Strip(r, &Source{Kind: FromHeader, Name: "X-Api-Key"})
	if _, ok := r.Header["X-Api-Key"]; ok {
		t.Fatal("header kept")
	}
}

func TestSourceHeader(t *testing.T) {
	s := []Source{{Kind: FromHeader, Name: "X-Api-Key"}, {Kind: FromCookie, Name: "k"}, {Kind: FromQuery, Name: "q"}}
	for name, want := range map[string]string{"x_api_key": "X-Api-Key", "COOKIE": "Cookie", "q": "", "X-Other": ""} {
		if got := SourceHeader(s, name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
}
