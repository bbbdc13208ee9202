package caddygateway_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/caddygateway/caddy-gateway"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestCaddyfileAdapt runs every testdata/caddyfile_adapt/*.caddyfiletest:
// a Caddyfile, a line of dashes, then either the expected JSON (pretty
// printed with tabs, as `caddy adapt --pretty` prints it) or a text that the
// adapt error must contain. Set UPDATE_GOLDEN=1 to rewrite JSON expectations.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no golden files found")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, expected, ok := splitGolden(string(data))
			if !ok {
				t.Fatalf("%s: no line of dashes separating Caddyfile and expectation", file)
			}
			adapter := caddyconfig.GetAdapter("caddyfile")
			result, _, err := adapter.Adapt([]byte(caddyfile), nil)

			if !strings.HasPrefix(expected, "{") {
				if err == nil {
					t.Fatalf("expected an adapt error containing %q, got none", expected)
				}
				if !strings.Contains(err.Error(), expected) {
					t.Fatalf("adapt error\n  %s\ndoes not contain\n  %s", err, expected)
				}
				return
			}
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, result, "", "\t"); err != nil {
				t.Fatal(err)
			}
			got := pretty.String()
			if got != expected {
				if os.Getenv("UPDATE_GOLDEN") == "1" {
					out := strings.TrimRight(caddyfile, "\n") + "\n----------\n" + got + "\n"
					if err := os.WriteFile(file, []byte(out), 0o600); err != nil { //nolint:gosec // G703: file is a testdata path from Glob
						t.Fatal(err)
					}
					return
				}
				t.Fatalf("adapted JSON differs (UPDATE_GOLDEN=1 rewrites it)\n--- got\n%s\n--- want\n%s", got, expected)
			}
		})
	}
}

// splitGolden splits a golden file at its first line made only of dashes.
func splitGolden(s string) (caddyfile, expected string, ok bool) {
	lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		if len(l) >= 4 && strings.Trim(l, "-") == "" {
			caddyfile = strings.TrimSpace(strings.Join(lines[:i], "\n")) + "\n"
			expected = strings.TrimSpace(strings.Join(lines[i+1:], "\n"))
			return caddyfile, expected, true
		}
	}
	return "", "", false
}
