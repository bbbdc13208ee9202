package ratelimit

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalRedis(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(`throttle {
		rate 1/1s
		redis redis://a:7000 {env.REDIS_SEEDS} {
			on_error deny
			timeout 250ms
			prefix app:
		}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	rc := h.Redis
	if rc == nil || len(rc.URLs) != 2 || rc.OnError != OnErrorDeny || time.Duration(rc.Timeout) != 250*time.Millisecond || rc.Prefix != "app:" {
		t.Fatalf("parsed %+v", rc)
	}
	for _, bad := range []struct{ in, want string }{
		{"redis", "at least one URL"},
		{"redis ftp://x", "scheme must be"},
		{"redis redis://:hunter22@h:1/x", "invalid database number"},
		{"redis redis://h {\n on_error maybe\n }", "unknown on_error policy"},
		{"redis redis://h {\n timeout -1s\n }", "timeout must be a positive duration"},
		{"redis redis://h {\n timeout\n }", "wrong argument count"},
		{"redis redis://h {\n prefix a b\n }", "wrong argument count"},
		{"redis redis://h {\n prefix {x}\n }", "must not contain braces"},
		{"redis redis://h {\n tls on\n }", "unrecognized subdirective"},
		// Literal arguments are split at commas as at load: each piece
		// is checked, and the pieces must agree.
		{"redis redis://,", "no host"},
		{"redis ,", "at least one URL"},
		{"redis redis://a:1,redis://:hunter22@b:2", "must share"},
		{"redis redis://a:1 redis://b:2/1", "must share"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("throttle {\n rate 1/1s\n " + bad.in + "\n}"))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: error %v, want %q", bad.in, err, bad.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter22") {
			t.Errorf("%q: password in error %q", bad.in, err)
		}
	}
	// JSON would change invalid UTF-8, so it is refused, as in key and
	// cost. The lexer turns it into U+FFFD: tokens are built directly.
	for _, in := range []string{
		"redis redis://\x9b",
		"redis redis://:hunter22@h\x9b:1",
		"redis {env.X}\x9b",
		"redis redis://h {\nprefix a\x9b\n}",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens("throttle {\nrate 1/1s\n" + in + "\n}")))
		if err == nil || !strings.Contains(err.Error(), "not valid UTF-8") {
			t.Errorf("%q: error %v, want not valid UTF-8", in, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter22") {
			t.Errorf("%q: password in error %q", in, err)
		}
	}
}

// FuzzRedisCaddyfile: the redis block parser never panics, and its errors
// never carry the password of the URL.
func FuzzRedisCaddyfile(f *testing.F) {
	f.Add("pw", "h:6379/0", "on_error local")
	f.Add("s3cret", "h:6379/x", "timeout 1s")
	f.Add("p@ss:word", "[::1]:6379?db=2", "prefix a:")
	f.Add("x%zz", "h", "on_error")
	f.Add("pass", "sentinel:26379?addr=b:26379&master_set=m", "")
	f.Fuzz(func(t *testing.T, pw, rest, sub string) {
		if strings.ContainsAny(pw+rest+sub, "\"`\\{}\n\r\t #") {
			return // not a single Caddyfile token
		}
		url := "redis://user:" + pw + "@" + rest
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("throttle {\n rate 1/1s\n redis " + url + " {\n " + sub + "\n }\n}"))
		if err == nil || len(pw) < 4 || strings.Contains("redis://user:@"+rest+sub, pw) {
			return
		}
		if strings.Contains(err.Error(), pw) {
			t.Fatalf("password %q in error %q", pw, err)
		}
	})
}
