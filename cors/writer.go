package cors

import (
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// responseWriter puts the handler's CORS answer on the response when its
// header is written, replacing whatever later handlers set under those
// names.
type responseWriter struct {
	caddyhttp.ResponseWriterWrapper
	h           *Handler
	origin      string // the Access-Control-Allow-Origin value; empty: origin not allowed
	wroteHeader bool

	// backing for the header values set, so a response costs one allocation
	// (this struct) rather than one per header; per response, so a later
	// handler that edits a value in place edits only its own response
	vals [4]string
}

// answer writes the handler's CORS answer into the response header.
func (cw *responseWriter) answer() {
	hdr := cw.ResponseWriter.Header()
	removeAnswer(hdr)
	h := cw.h
	if !h.origins.any {
		addVary(hdr, cw.vals[3:4:4], hdrOrigin)
	}
	if cw.origin == "" {
		return
	}
	cw.vals[0] = cw.origin
	hdr[hdrAllowOrigin] = cw.vals[0:1:1]
	if h.Credentials {
		cw.vals[1] = "true"
		hdr[hdrAllowCredentials] = cw.vals[1:2:2]
	}
	if h.expose != "" {
		cw.vals[2] = h.expose
		hdr[hdrExposeHeaders] = cw.vals[2:3:3]
	}
}

// WriteHeader puts the CORS answer on the header, then writes it.
func (cw *responseWriter) WriteHeader(status int) {
	if cw.wroteHeader {
		cw.ResponseWriter.WriteHeader(status)
		return
	}
	// a 1xx is informational: the final header comes later
	if status >= 200 {
		cw.wroteHeader = true
	}
	cw.answer()
	cw.ResponseWriter.WriteHeader(status)
}

// Write writes the header first if needed.
func (cw *responseWriter) Write(b []byte) (int, error) {
	if !cw.wroteHeader {
		cw.WriteHeader(http.StatusOK)
	}
	return cw.ResponseWriter.Write(b)
}

// ReadFrom writes the header first if needed (the wrapper's ReadFrom would
// go straight to the underlying writer).
func (cw *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if !cw.wroteHeader {
		cw.WriteHeader(http.StatusOK)
	}
	return cw.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError writes the header first if needed (http.ResponseController
// would otherwise flush the underlying writer, header and all, past cw).
func (cw *responseWriter) FlushError() error {
	if !cw.wroteHeader {
		cw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(cw.ResponseWriter).Flush()
}

// addVary merges tokens into the Vary header: each is added unless Vary
// already lists it (case-insensitively) or is `*`, and tokens listed more
// than once (an upstream's Vary: Origin added to ours) are listed once.
// slot, a slice of length 1 or nil, backs a Vary created from one token,
// saving an allocation.
func addVary(hdr http.Header, slot []string, tokens ...string) {
	vary := hdr[hdrVary]
	if len(vary) == 0 {
		if len(tokens) == 1 && slot != nil {
			slot[0] = tokens[0]
			hdr[hdrVary] = slot
			return
		}
		hdr[hdrVary] = []string{strings.Join(tokens, ", ")}
		return
	}
	missing, dup := varyState(vary, tokens)
	if !missing && !dup {
		return
	}
	if !dup {
		for _, t := range tokens {
			if !varyHas(vary, t) {
				vary = append(vary, t)
			}
		}
		hdr[hdrVary] = vary
		return
	}
	// rebuild as one field, each token once, in first-seen order
	var list []string
	for _, v := range vary {
		for t := range strings.SplitSeq(v, ",") {
			t = strings.TrimSpace(t)
			if t != "" && !containsFold(list, t) {
				list = append(list, t)
			}
		}
	}
	for _, t := range tokens {
		if !containsFold(list, t) {
			list = append(list, t)
		}
	}
	hdr[hdrVary] = []string{strings.Join(list, ", ")}
}

// removeAnswer deletes the response headers that make up a CORS answer,
// in any spelling of their names. The gateway's answer is the only one:
// whatever a later handler or an upstream sets under these names goes.
func removeAnswer(hdr http.Header) {
	// one pass over the (small) map is cheaper than a lookup per name
	for k := range hdr {
		if len(k) > len(acPrefix) && strings.EqualFold(k[:len(acPrefix)], acPrefix) && isAnswerName(k[len(acPrefix):]) {
			delete(hdr, k)
		}
	}
}

const acPrefix = "Access-Control-"

func isAnswerName(rest string) bool {
	for _, n := range [...]string{
		"Allow-Origin", "Allow-Credentials", "Allow-Methods", "Allow-Headers",
		"Allow-Private-Network", "Expose-Headers", "Max-Age",
	} {
		if strings.EqualFold(rest, n) {
			return true
		}
	}
	return false
}

// varyState reports whether a token is missing from the Vary values (a
// `*` covers every token) and whether one is listed more than once.
func varyState(vary, tokens []string) (missing, dup bool) {
	for _, t := range tokens {
		n, star := 0, false
		for _, v := range vary {
			for v != "" {
				var item string
				item, v, _ = strings.Cut(v, ",")
				item = strings.TrimSpace(item)
				if item == "*" {
					star = true
				} else if strings.EqualFold(item, t) {
					n++
				}
			}
		}
		if n == 0 && !star {
			missing = true
		}
		if n > 1 {
			dup = true
		}
	}
	return missing, dup
}

// varyHas reports whether the Vary values list token (or `*`).
func varyHas(vary []string, token string) bool {
	missing, _ := varyState(vary, []string{token})
	return !missing
}

func containsFold(list []string, s string) bool {
	for _, l := range list {
		if strings.EqualFold(l, s) {
			return true
		}
	}
	return false
}

// Interface guards
var (
	_ http.ResponseWriter = (*responseWriter)(nil)
	_ io.ReaderFrom       = (*responseWriter)(nil)
)
