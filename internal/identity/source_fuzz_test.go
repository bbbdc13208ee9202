package identity

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzExtract reads a credential from any header value and query: never a
// panic; a credential found is non-empty and is what the request holds;
// stripping a query credential removes every parameter of that name and
// keeps every other parameter byte for byte, in order.
func FuzzExtract(f *testing.F) {
	f.Add("ApiKey cgw_abc", "a=1&api_key=cgw_x&b=%41", "ApiKey")
	f.Add("apikey   k", "api%5Fkey=k&&=&x", "ApiKey")
	f.Add("Bearer t", "api_key=&api_key=", "")
	f.Add("", "a=%zz&api_key=k", "Bearer")
	f.Fuzz(func(t *testing.T, header, rawQuery, prefix string) {
		if strings.ContainsAny(rawQuery, "#") {
			return
		}
		sources := []Source{{Kind: FromHeader, Name: "Authorization", Prefix: prefix}, {Kind: FromQuery, Name: "api_key"}}
		r := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/", nil)
		r.URL.RawQuery = rawQuery
		r.Header = http.Header{"Authorization": {header}}
		for _, emptyIsNone := range []bool{true, false} {
			cred, src, err := Extract(r, sources, emptyIsNone)
			if err != nil {
				if cred != "" || src != nil {
					t.Fatalf("error %v with a credential", err)
				}
				continue
			}
			if (cred == "") != (src == nil) {
				t.Fatalf("credential %q from %v", cred, src)
			}
			if src == nil {
				continue
			}
			if src.Kind == FromHeader && !strings.Contains(header, cred) {
				t.Fatalf("credential %q not in the header %q", cred, header)
			}
			if src.Kind == FromQuery {
				if got := r.URL.Query()["api_key"]; !slices.Contains(got, cred) {
					t.Fatalf("credential %q not in the query %q", cred, rawQuery)
				}
			}
		}
		stripped := RemoveQueryParam(rawQuery, "api_key")
		var kept []string
		for part := range strings.SplitSeq(rawQuery, "&") {
			k, _, _ := strings.Cut(part, "=")
			if key, err := url.QueryUnescape(k); err == nil && key == "api_key" {
				continue
			}
			kept = append(kept, part)
		}
		if want := strings.Join(kept, "&"); stripped != want {
			t.Fatalf("stripped %q, want %q", stripped, want)
		}
		if q, err := url.ParseQuery(stripped); err == nil && len(q["api_key"]) > 0 {
			t.Fatalf("api_key left in %q", stripped)
		}
	})
}
