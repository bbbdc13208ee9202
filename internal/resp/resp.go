// Package resp encodes commands as Redis reads them, for the tools and
// benchmarks that talk to a redis-server on a bare connection (the
// gateway itself goes through rueidis).
package resp

import "strconv"

// Command encodes args as a RESP array of bulk strings.
func Command(args ...string) []byte {
	b := make([]byte, 0, 16*len(args)+8)
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, "\r\n"...)
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, "\r\n"...)
		b = append(b, a...)
		b = append(b, "\r\n"...)
	}
	return b
}
