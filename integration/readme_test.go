package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestREADMETryIt runs the README's try-it commands as they are written:
// the ```sh block under the "Try the example" heading, against
// Caddyfile.example run by the caddy binary under test (CADDY_BIN), the way
// a newcomer runs them after `make run`.
//
// The block's convention, which the test reads:
//
//   - A command is a line that is not a comment (`#`) nor blank; a line
//     ending in `\` continues on the next. The commands run in order in one
//     bash (so `TOKEN=$(...)` holds for the later ones), in a directory where
//     bin/caddy is the binary under test, with stderr and stdout together.
//     Each must exit 0 (curl does on a 401 without -f).
//   - The comment lines after a command, up to the next command, are what its
//     output must show. Each is cut at `...` into fragments that must all
//     appear in the output, in that order within the line (lines are checked
//     apart, so response headers may be listed in any order). Text after
//     " — " (an em dash between spaces) is a note for the reader and is not
//     checked; a comment line starting with "—" is all note.
//
// For example:
//
//	curl -i localhost:8080/api/users/me
//	# HTTP/1.1 401 Unauthorized
//	# Www-Authenticate: Bearer realm="demo"
//	curl -s localhost:8080/api/dashboard -H "Authorization: Bearer $TOKEN"
//	# {"data":{"user":{...},"orders":[...]}} — two services, one answer
func TestREADMETryIt(t *testing.T) {
	bin := caddyBinary(t)
	cmds, err := readmeTryIt(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	checks := 0
	for _, c := range cmds {
		checks += len(c.want)
	}
	if len(cmds) < 2 || checks == 0 {
		t.Fatalf("README try-it block: %d commands, %d expectations: the block or its comments are gone", len(cmds), checks)
	}

	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	gw := startBinary(t, root, nil, "run", "--config", "Caddyfile.example", "--adapter", "caddyfile")
	waitExample(t, gw)

	// bin/caddy, as `make run` leaves it, is the binary under test
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bin, filepath.Join(dir, "bin", "caddy")); err != nil {
		t.Fatal(err)
	}
	outs, err := runTryIt(t, dir, cmds)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cmds {
		out := outs[i]
		if out.rc != 0 {
			t.Errorf("README.md:%d: %s\nexit status %d, output:\n%s", c.line, c.text, out.rc, out.text)
			continue
		}
		for _, w := range c.want {
			if missing := missingFragment(out.text, w.fragments); missing != "" {
				t.Errorf("README.md:%d: %s\noutput lacks %q (README.md:%d; a # line is fragments cut at ..., "+
					"text after \" — \" is a note, a line starting with — is all note), output:\n%s", c.line, c.text, missing, w.line, out.text)
			}
		}
	}
}

// readmeCmd is one command of the try-it block and the expectations that
// follow it.
type readmeCmd struct {
	line int    // README line of the command
	text string // the command, continuation lines joined
	want []readmeWant
}

type readmeWant struct {
	line      int
	fragments []string
}

// readmeTryIt parses the first ```sh block after the "Try the example"
// heading.
func readmeTryIt(path string) ([]readmeCmd, error) {
	f, err := os.Open(path) //nolint:gosec // G304: the repository's README
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var (
		cmds             []readmeCmd
		heading, inBlock bool
		cont             *readmeCmd
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case !heading:
			heading = strings.HasPrefix(trimmed, "#") && strings.HasSuffix(trimmed, "Try the example")
			continue
		case !inBlock:
			inBlock = trimmed == "```sh"
			continue
		case trimmed == "```":
			if cont != nil {
				return nil, fmt.Errorf("%s:%d: the block ends in a continued line", path, cont.line)
			}
			return cmds, nil
		}
		if cont != nil {
			cont.text += "\n" + line
			if !strings.HasSuffix(line, `\`) {
				cmds = append(cmds, *cont)
				cont = nil
			}
			continue
		}
		switch {
		case trimmed == "":
		case strings.HasPrefix(trimmed, "#"):
			if len(cmds) == 0 {
				return nil, fmt.Errorf("%s:%d: an expectation before any command", path, n)
			}
			if fr := fragments(strings.TrimPrefix(trimmed, "#")); len(fr) > 0 {
				last := &cmds[len(cmds)-1]
				last.want = append(last.want, readmeWant{line: n, fragments: fr})
			}
		case strings.HasSuffix(line, `\`):
			cont = &readmeCmd{line: n, text: line}
		default:
			cmds = append(cmds, readmeCmd{line: n, text: line})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%s: no ```sh block closed under a \"Try the example\" heading", path)
}

// fragments cuts an expectation at "...", after dropping its note (from
// " — " on).
func fragments(s string) []string {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "—") {
		return nil
	}
	if i := strings.Index(s, " — "); i >= 0 {
		s = s[:i]
	}
	var out []string
	for f := range strings.SplitSeq(s, "...") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// missingFragment returns the first fragment not found in out after the
// previous one, or "".
func missingFragment(out string, frs []string) string {
	for _, f := range frs {
		i := strings.Index(out, f)
		if i < 0 {
			return f
		}
		out = out[i+len(f):]
	}
	return ""
}

type tryItOutput struct {
	text string
	rc   int
}

// runTryIt runs the commands in one bash in dir and returns each one's
// output and exit status, cut apart by markers printed between them.
func runTryIt(t *testing.T, dir string, cmds []readmeCmd) ([]tryItOutput, error) {
	t.Helper()
	const mark = "@@readme-try-it@@"
	var script strings.Builder
	script.WriteString("exec 2>&1\n")
	for i, c := range cmds {
		fmt.Fprintf(&script, "printf '\\n%s start %d\\n'\n%s\nprintf '\\n%s end %d %%d\\n' $?\n", mark, i, c.text, mark, i)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", script.String())
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir)
	// a curl left behind by a timeout dies with its shell
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	raw, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("bash: %w\n%s", err, raw)
	}
	text := strings.ReplaceAll(string(raw), "\r\n", "\n")
	outs := make([]tryItOutput, len(cmds))
	for i := range cmds {
		start := fmt.Sprintf("\n%s start %d\n", mark, i)
		endPrefix := fmt.Sprintf("\n%s end %d ", mark, i)
		a := strings.Index(text, start)
		b := strings.Index(text, endPrefix)
		if a < 0 || b < a {
			return nil, fmt.Errorf("README.md:%d: %s: the script stopped before its end (an `exit`?); output:\n%s", cmds[i].line, cmds[i].text, text)
		}
		rest := text[b+len(endPrefix):]
		rcText, _, _ := strings.Cut(rest, "\n")
		rc, err := strconv.Atoi(rcText)
		if err != nil {
			return nil, fmt.Errorf("marker %q: %w", rcText, err)
		}
		outs[i] = tryItOutput{text: text[a+len(start) : b], rc: rc}
	}
	return outs, nil
}

// waitExample waits until Caddyfile.example's gateway answers on
// localhost:8080, failing if the process exits first (the port taken by
// another server, a config error).
func waitExample(t *testing.T, gw *caddyRun) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case <-gw.done:
			t.Fatalf("caddy run --config Caddyfile.example exited: %v\n%s", gw.err, tail(gw.logs.String(), 4<<10))
		default:
		}
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://localhost:8080/", nil)
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(errors.Join(errors.New("the example never answered on localhost:8080"), err))
		}
	}
}
