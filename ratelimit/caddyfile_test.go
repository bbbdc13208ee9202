package ratelimit

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`throttle {
		rate 10/1s burst 20
		rate 1000/1h
		rate 5/m
		key {http.request.header.X-API-Key}
		zone api
		ipv4_prefix 24
		ipv6_prefix 48
		exempt 10.0.0.0/8 ::1
		exempt private_ranges
		max_keys 5000
		dry_run
		headers legacy
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	v4, v6 := 24, 48
	want := Handler{
		Rate: []Rate{
			{Events: 10, Period: caddy.Duration(time.Second), Burst: 20},
			{Events: 1000, Period: caddy.Duration(time.Hour)},
			{Events: 5, Period: caddy.Duration(time.Minute)},
		},
		Key:        "{http.request.header.X-API-Key}",
		Zone:       "api",
		IPv4Prefix: &v4,
		IPv6Prefix: &v6,
		Exempt:     []string{"10.0.0.0/8", "::1", "private_ranges"},
		MaxKeys:    5000,
		DryRun:     true,
		Headers:    "legacy",
	}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", h, want)
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, input, want string
	}{
		{"no rate", `throttle`, "at least one rate"},
		{"empty block", "throttle {\n}", "at least one rate"},
		{"argument", "throttle foo {\n rate 1/1s\n}", "wrong argument count"},
		{"unknown", "throttle {\n rate 1/1s\n bogus 1\n}", `unrecognized subdirective "bogus"`},
		{"rate no slash", "throttle {\n rate 10\n}", `want <events>/<duration>`},
		{"rate zero", "throttle {\n rate 0/1s\n}", "events must be"},
		{"rate bad duration", "throttle {\n rate 10/xyz\n}", "duration must be positive"},
		{"rate negative duration", "throttle {\n rate 10/-1s\n}", "duration must be positive"},
		{"rate no args", "throttle {\n rate\n}", "wrong argument count"},
		{"rate two args", "throttle {\n rate 1/1s burst\n}", "wrong argument count"},
		{"rate not burst", "throttle {\n rate 1/1s bursts 3\n}", "want burst <n>"},
		{"rate too long", "throttle {\n rate 1/876000h burst 2\n}", "too long"},
		{"burst zero", "throttle {\n rate 1/1s burst 0\n}", "burst must be"},
		{"burst text", "throttle {\n rate 1/1s burst many\n}", "burst must be"},
		{"ipv4 out of range", "throttle {\n rate 1/1s\n ipv4_prefix 33\n}", "between 0 and 32"},
		{"ipv6 out of range", "throttle {\n rate 1/1s\n ipv6_prefix 129\n}", "between 0 and 128"},
		{"ipv6 negative", "throttle {\n rate 1/1s\n ipv6_prefix -1\n}", "between 0 and 128"},
		{"prefix text", "throttle {\n rate 1/1s\n ipv4_prefix x\n}", "not a number"},
		{"bad cidr", "throttle {\n rate 1/1s\n exempt 10.0.0.0/33\n}", "invalid CIDR"},
		{"bad address", "throttle {\n rate 1/1s\n exempt nope\n}", "invalid CIDR"},
		{"exempt empty", "throttle {\n rate 1/1s\n exempt\n}", "wrong argument count"},
		{"headers unknown", "throttle {\n rate 1/1s\n headers draft\n}", `unknown headers mode "draft"`},
		{"headers two", "throttle {\n rate 1/1s\n headers ietf off\n}", "wrong argument count"},
		{"max_keys zero", "throttle {\n rate 1/1s\n max_keys 0\n}", "max_keys must be"},
		{"dry_run arg", "throttle {\n rate 1/1s\n dry_run yes\n}", "wrong argument count"},
		{"zone two", "throttle {\n rate 1/1s\n zone a b\n}", "wrong argument count"},
		{"zone space", "throttle {\n rate 1/1s\n zone \"a b\"\n}", "printable ASCII"},
		{"key none", "throttle {\n rate 1/1s\n key\n}", "wrong argument count"},
		{"duplicate zone", "throttle {\n rate 1/1s\n zone a\n zone b\n}", `duplicate subdirective "zone"`},
		{"duplicate key", "throttle {\n rate 1/1s\n key a\n key b\n}", `duplicate subdirective "key"`},
		{"duplicate headers", "throttle {\n rate 1/1s\n headers off\n headers ietf\n}", "duplicate"},
		{"redis policy", "throttle {\n rate 1/1s\n redis redis://localhost {\n on_error retry\n }\n}", `unknown on_error policy "retry"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// A key that is not UTF-8 (the lexer never makes one, other token sources
// might) is refused: JSON would carry it changed.
func TestUnmarshalCaddyfileKeyNotUTF8(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens("throttle {\nrate 1/1s\nkey \x81\n}")))
	if err == nil || !strings.Contains(err.Error(), "not valid UTF-8") {
		t.Fatalf("error %v, want not valid UTF-8", err)
	}
}

// Errors name the line of the offending token.
func TestUnmarshalCaddyfileErrorLine(t *testing.T) {
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("throttle {\n\trate 1/1s\n\tburst 3\n\tipv4_prefix 40\n}"))
	if err == nil || !strings.Contains(err.Error(), ":3") {
		t.Fatalf("error %v does not name line 3", err)
	}
	err = (&Handler{}).UnmarshalCaddyfile(caddyfile.NewTestDispenser("throttle {\n\trate 1/1s\n\tipv4_prefix 40\n}"))
	if err == nil || !strings.Contains(err.Error(), ":3") {
		t.Fatalf("error %v does not name line 3", err)
	}
}

func TestValidate(t *testing.T) {
	one := func(h Handler) *Handler {
		if h.Rate == nil {
			h.Rate = []Rate{{Events: 1, Period: caddy.Duration(time.Second)}}
		}
		return &h
	}
	neg, big := -1, 129
	for _, tc := range []struct {
		name string
		h    *Handler
		want string
	}{
		{"no rate", &Handler{Rate: []Rate{}}, "at least one rate"},
		{"events", one(Handler{Rate: []Rate{{Events: 0, Period: caddy.Duration(time.Second)}}}), "events must be"},
		{"period", one(Handler{Rate: []Rate{{Events: 1}}}), "period must be"},
		{"burst", one(Handler{Rate: []Rate{{Events: 1, Period: caddy.Duration(time.Second), Burst: -2}}}), "burst must be"},
		{"overflow", one(Handler{Rate: []Rate{{Events: 1, Period: caddy.Duration(100 * 365 * 24 * time.Hour), Burst: 2}}}), "too long"},
		{"ipv4", one(Handler{IPv4Prefix: &neg}), "ipv4_prefix"},
		{"ipv6", one(Handler{IPv6Prefix: &big}), "ipv6_prefix"},
		{"max_keys", one(Handler{MaxKeys: -5}), "max_keys"},
		{"headers", one(Handler{Headers: "x"}), "unknown headers mode"},
		{"zone", one(Handler{Zone: "a\nb"}), "printable ASCII"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
			defer cancel()
			err := tc.h.Provision(ctx)
			if err == nil {
				err = tc.h.Validate()
			}
			tc.h.Cleanup()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	// A bad exempt range fails at load.
	h := one(Handler{Exempt: []string{"300.1.1.1"}})
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), "invalid CIDR") {
		t.Fatalf("bad exempt: %v", err)
	}
	h.Cleanup()
}
