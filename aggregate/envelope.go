package aggregate

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"unicode/utf8"
)

// Error codes of the envelope's "errors" entries.
const (
	codeTimeout     = "timeout"      // the backend's timeout or the total budget ran out
	codeStatus      = "status"       // the backend answered with a non-2xx status (3xx included)
	codeUnreachable = "unreachable"  // no response: connection refused, reset, DNS, TLS...
	codeInvalidJSON = "invalid_json" // the 2xx body is not one valid JSON value
	codeTooLarge    = "too_large"    // the body is longer than max_body
	codeDependency  = "dependency"   // not called: a {backends.*} value it needs is missing, not a scalar, refused, or its backend failed
	codeCircuitOpen = "circuit_open" // not called: its circuit breaker is open
	codeCanceled    = "canceled"     // internal: the client went away; never written
)

var jsonNull = []byte("null")

// result is the outcome of one backend call.
type result struct {
	status int    // upstream HTTP status, 0 when there was no response
	code   string // error code; "" on success
	value  []byte // JSON value to splice into data on success
	buf    *bytes.Buffer
}

// summary says how the envelope's status is chosen.
type summary struct {
	failed, timeouts int
	requiredFailed   bool
}

// status returns the response status and whether the data is complete.
func (s summary) status(n int) (int, bool) {
	switch {
	case s.failed == 0:
		return http.StatusOK, true
	case s.requiredFailed || s.failed == n:
		if s.timeouts == s.failed {
			return http.StatusGatewayTimeout, false
		}
		return http.StatusBadGateway, false
	default:
		return http.StatusOK, false
	}
}

// writeEnvelope writes {"data":{...},"errors":[...]} to buf, splicing the
// raw JSON of every successful backend, in config order.
func writeEnvelope(buf *bytes.Buffer, backends []*Backend, results []result) summary {
	var s summary
	buf.WriteString(`{"data":{`)
	for i := range results {
		b, r := backends[i], &results[i]
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(b.nameJSON)
		buf.WriteByte(':')
		switch {
		case r.code == "":
			buf.Write(r.value)
		case len(b.Fallback) > 0:
			buf.Write(b.fallback)
		default:
			buf.Write(jsonNull)
		}
		if r.code != "" {
			s.failed++
			if r.code == codeTimeout {
				s.timeouts++
			}
			if b.Required {
				s.requiredFailed = true
			}
		}
	}
	buf.WriteByte('}')
	if s.failed > 0 {
		buf.WriteString(`,"errors":[`)
		first := true
		for i := range results {
			b, r := backends[i], &results[i]
			if r.code == "" {
				continue
			}
			if !first {
				buf.WriteByte(',')
			}
			first = false
			buf.WriteString(`{"backend":`)
			buf.Write(b.nameJSON)
			buf.WriteString(`,"code":"`)
			buf.WriteString(r.code)
			buf.WriteByte('"')
			if r.status != 0 {
				buf.WriteString(`,"status":`)
				buf.WriteString(strconv.Itoa(r.status))
			}
			buf.WriteByte('}')
		}
		buf.WriteByte(']')
	}
	buf.WriteByte('}')
	return s
}

// backendValue returns the JSON value a 2xx backend body puts into data: the
// whole document, or the part at target. An empty body (only white space)
// gives null. It reports false when body is not one valid JSON value in
// UTF-8 (RFC 8259): json.Valid lets invalid UTF-8 inside strings through,
// and one such byte would make the whole envelope invalid.
func backendValue(body []byte, target []string) ([]byte, bool) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return jsonNull, true
	}
	if !utf8.Valid(body) {
		return nil, false
	}
	if target == nil {
		if !json.Valid(body) {
			return nil, false
		}
		return body, true
	}
	return extractTarget(body, target)
}

// extractTarget returns the JSON value at path (object keys, or decimal
// indexes into arrays) inside doc, or null when the path does not exist.
// It reports false when doc is not valid JSON.
func extractTarget(doc []byte, path []string) ([]byte, bool) {
	if !json.Valid(doc) {
		return nil, false
	}
	cur := doc
	for _, seg := range path {
		cur = bytes.TrimSpace(cur)
		if len(cur) == 0 {
			return jsonNull, true
		}
		switch cur[0] {
		case '{':
			var m map[string]json.RawMessage
			if err := json.Unmarshal(cur, &m); err != nil {
				return nil, false
			}
			v, ok := m[seg]
			if !ok {
				return jsonNull, true
			}
			cur = v
		case '[':
			idx, err := strconv.Atoi(seg)
			if err != nil || idx < 0 {
				return jsonNull, true
			}
			var a []json.RawMessage
			if err := json.Unmarshal(cur, &a); err != nil {
				return nil, false
			}
			if idx >= len(a) {
				return jsonNull, true
			}
			cur = a[idx]
		default:
			return jsonNull, true
		}
	}
	return bytes.TrimSpace(cur), true
}
