package caddygateway_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestDocs adapts every ```caddy code block of README.md and docs/*.md with
// Caddy's caddyfile adapter (as TestCaddyfileAdapt does), so the docs cannot
// rot. A failure names the file and line of the block, and the doc line the
// adapter's error points at.
//
// The rule for a block, decided by its first token:
//
//   - a directive name (a bare lower-case word such as log, route,
//     handle_errors, reverse_proxy, cors, throttle, jwt_auth, aggregate) or a
//     named matcher (@name) makes the block a snippet of a site: it is adapted
//     wrapped in a site block "example.com { ... }", so it must be what can
//     stand inside one site (directives in any order, as the directive order
//     sorts them);
//   - anything else (a global options block "{", a site address such as
//     localhost:8080, example.com, :443 or localhost, a snippet definition
//     "(name)") makes the block a whole Caddyfile, adapted as is.
//
// An environment placeholder {$NAME} without a default that is not set is
// given a dummy 40-byte value for the test (as a user sets the variable), so
// {$JWT_SECRET} adapts.
//
// A block showing syntax, with <placeholders>, is not a Caddyfile: it goes in
// a plain ``` fence, never in ```caddy. Other fences (```sh, ```json, ```)
// are not adapted.
func TestDocs(t *testing.T) {
	files, err := filepath.Glob("docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"README.md"}, files...)
	total := 0
	for _, file := range files {
		blocks, err := caddyBlocks(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			total++
			for _, m := range envRE.FindAllStringSubmatch(b.body, -1) {
				if _, ok := os.LookupEnv(m[1]); !ok {
					t.Setenv(m[1], "docs-test-value-0123456789abcdef01234567")
				}
			}
			t.Run(fmt.Sprintf("%s:%d", file, b.line), func(t *testing.T) {
				if err := adaptDocBlock(b); err != nil {
					t.Errorf("%s:%d: ```caddy block does not adapt: %v", b.file, b.line, err)
				}
			})
		}
	}
	if total == 0 {
		t.Fatal("no ```caddy block found in README.md and docs/*.md")
	}
}

// TestDocsRules checks the rule itself: a broken block fails with its doc
// line, a snippet is wrapped, a whole Caddyfile is not, a syntax block with
// placeholders is refused.
func TestDocsRules(t *testing.T) {
	for _, tc := range []struct {
		name, body, wantErr string
	}{
		{"site", "localhost:8080 {\n\trespond ok\n}\n", ""},
		{"global options", "{\n\tadmin off\n}\n\nlocalhost {\n\trespond ok\n}\n", ""},
		{"snippet", "log {\n\toutput stderr\n}\nrespond ok\n", ""},
		{"matcher snippet", "@api path /api/*\nrespond @api ok\n", ""},
		{"gateway snippet", "cors {\n\torigins https://app.example.com\n}\n", ""},
		{"unknown subdirective", "cors {\n\torigins https://app.example.com\n\tbogus\n}\n", "doc.md:13"},
		{"site with bad directive", "localhost {\n\n\tnot_a_directive\n}\n", "doc.md:13"},
		{"placeholders", "cors [<matcher>] {\n\torigins <origin...>\n}\n", "plain ``` fence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := adaptDocBlock(docBlock{file: "doc.md", line: 10, body: tc.body})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("expected an error containing %q, got none", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q does not contain %q", err, tc.wantErr)
			}
		})
	}
}

// docBlock is one ```caddy block: the file, the line of its opening fence and
// its text.
type docBlock struct {
	file string
	line int
	body string
}

// caddyBlocks returns the ```caddy blocks of a Markdown file.
func caddyBlocks(file string) ([]docBlock, error) {
	f, err := os.Open(file) //nolint:gosec // G304: a docs path from a fixed glob
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var (
		blocks []docBlock
		cur    *docBlock
		fence  string
		sb     strings.Builder
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case fence == "" && strings.HasPrefix(trimmed, "```"):
			fence = "```"
			if strings.TrimSpace(strings.TrimPrefix(trimmed, "```")) == "caddy" {
				cur = &docBlock{file: file, line: n}
				sb.Reset()
			}
		case fence != "" && trimmed == fence:
			if cur != nil {
				cur.body = sb.String()
				blocks = append(blocks, *cur)
				cur = nil
			}
			fence = ""
		case cur != nil:
			sb.WriteString(line)
			sb.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cur != nil {
		return nil, fmt.Errorf("%s:%d: ```caddy block is never closed", file, cur.line)
	}
	return blocks, nil
}

var (
	placeholderRE = regexp.MustCompile(`<[A-Za-z][A-Za-z0-9_.…-]*>`)
	adaptLineRE   = regexp.MustCompile(`doc-block:(\d+)`)
	envRE         = regexp.MustCompile(`\{\$([A-Za-z_][A-Za-z0-9_]*)\}`)
	// directiveNameRE is what a directive name looks like; a site address
	// has a dot, colon, slash, star or brace (or is localhost).
	directiveNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

// adaptDocBlock adapts one block by the rule of TestDocs; the error names the
// doc file and line.
func adaptDocBlock(b docBlock) error {
	if m := placeholderRE.FindString(b.body); m != "" {
		return fmt.Errorf("it holds the placeholder %s: a syntax description goes in a plain ``` fence", m)
	}
	body, offset := b.body, 0
	if isSnippet(body) {
		body, offset = "example.com {\n"+body+"}\n", 1
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	_, _, err := adapter.Adapt([]byte(body), map[string]any{"filename": "doc-block"})
	if err == nil {
		return nil
	}
	// Caddyfile line n is line n-offset of the block, whose first line is the
	// one after the fence.
	msg := adaptLineRE.ReplaceAllStringFunc(err.Error(), func(s string) string {
		n, _ := strconv.Atoi(adaptLineRE.FindStringSubmatch(s)[1])
		return fmt.Sprintf("%s:%d", b.file, b.line+n-offset)
	})
	return fmt.Errorf("%s (adapted %s)", msg, map[bool]string{true: "inside example.com { ... }", false: "as a whole Caddyfile"}[offset == 1])
}

// isSnippet reports whether a block starts with a directive or a named
// matcher, so that it stands for the inside of a site block.
func isSnippet(body string) bool {
	tokens, err := caddyfile.Tokenize([]byte(body), "doc-block")
	if err != nil || len(tokens) == 0 {
		return false
	}
	first := tokens[0].Text
	return strings.HasPrefix(first, "@") || (first != "localhost" && directiveNameRE.MatchString(first))
}
