package identity

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// Header is one `header` line: a request header set from a verified value.
type Header struct {
	Name string // canonical form, e.g. X-User-Id for x-user-id
	Path string // dot-path of the value (a claim, a key entry's field)
}

// Headers is a handler's identity headers, sorted by name. Values for
// them are kept in slices parallel to it.
type Headers []Header

// NewHeaders compiles `header` lines (any casing) for use per request.
func NewHeaders(lines map[string]string) Headers {
	if len(lines) == 0 {
		return nil
	}
	hs := make(Headers, 0, len(lines))
	for name, path := range lines {
		hs = append(hs, Header{Name: http.CanonicalHeaderKey(name), Path: path})
	}
	slices.SortFunc(hs, func(a, b Header) int { return strings.Compare(a.Name, b.Name) })
	return hs
}

// CheckHeaders checks `header` lines: valid header names, a path for each
// (pathNoun names it in errors, e.g. "claim path"), and no two names that
// denote the same header (in any casing, `_` for `-`).
func CheckHeaders(lines map[string]string, pathNoun string) error {
	names := slices.Sorted(maps.Keys(lines))
	for i, name := range names {
		if !httpguts.ValidHeaderFieldName(name) {
			return fmt.Errorf("header: invalid header name %q", name)
		}
		if lines[name] == "" {
			return fmt.Errorf("header %s: empty %s", name, pathNoun)
		}
		for _, other := range names[:i] {
			if SameHeaderName(name, other) {
				return fmt.Errorf("header %s: duplicate mapping (same header as %s)", name, other)
			}
		}
	}
	return nil
}

// Delete removes every client-sent copy of the identity headers from r, in
// any casing and with `_` in place of `-` (which some servers behind the
// gateway treat as the same header): from the header and from the
// trailers. Trailers arrive only when the body has been read to its end, so
// when the client announced any, the body is wrapped to delete them again
// at that moment, before a proxy handler copies them on (net/http merges
// every trailer it reads into the announced map, announced or not).
func (hs Headers) Delete(r *http.Request) {
	if len(hs) == 0 {
		return
	}
	hs.deleteFrom(r.Header)
	if r.Trailer != nil {
		hs.deleteFrom(r.Trailer)
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &trailerGuard{ReadCloser: r.Body, trailer: r.Trailer, headers: hs}
		}
	}
}

func (hs Headers) deleteFrom(hdr http.Header) {
	for key := range hdr {
		for _, ih := range hs {
			if SameHeaderName(key, ih.Name) {
				delete(hdr, key)
				break
			}
		}
	}
}

// trailerGuard deletes the identity headers from the request's trailers
// once net/http has filled them in, at the end of the body.
type trailerGuard struct {
	io.ReadCloser
	trailer http.Header
	headers Headers
}

func (g *trailerGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		g.headers.deleteFrom(g.trailer)
	}
	return n, err
}

// Set sets the identity headers from values (parallel to hs; "" is not
// set). Every header gets its own slice of capacity one, of strings no
// other request was given (freshStrings), so nothing downstream can write
// into values or into another request's headers.
func (hs Headers) Set(hdr http.Header, values []string) {
	if len(values) == 0 {
		return
	}
	own := freshStrings(len(values))
	copy(own, values)
	for i, ih := range hs {
		if own[i] != "" {
			hdr[ih.Name] = own[i : i+1 : i+1]
		}
	}
}

// valueBlockLen is how many header values one allocation holds: the
// values of 32 requests with two identity headers.
const valueBlockLen = 64

// valueBlock is a run of header values handed out in order, each once.
type valueBlock struct {
	v    [valueBlockLen]string
	used int
}

// valueBlocks holds, per P, the block requests take their values from.
var valueBlocks sync.Pool

// freshStrings returns n strings that were never handed out before, of
// capacity n: out of a shared block for a few values (one allocation per
// block, not per request), else allocated. A block lives on while any
// request holds a value of it.
func freshStrings(n int) []string {
	if n > valueBlockLen/4 {
		return make([]string, n)
	}
	b, _ := valueBlocks.Get().(*valueBlock)
	if b == nil || b.used+n > valueBlockLen {
		b = new(valueBlock)
	}
	out := b.v[b.used : b.used+n : b.used+n]
	b.used += n
	valueBlocks.Put(b)
	return out
}

// SameHeaderName compares header names case-insensitively, treating `_`
// and `-` as equal.
func SameHeaderName(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
