package aggregate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// depPrefix starts a placeholder that takes a value from another backend's
// response: {backends.<name>.<field.path>}.
const depPrefix = "backends."

// depRef is a compiled {backends.<name>.<field.path>} placeholder.
type depRef struct {
	dep   int      // index of the backend it reads
	field []string // path into that backend's value (after its target); nil: the value itself
}

// isDepKey reports whether a placeholder key names another backend's value.
func isDepKey(key string) bool { return strings.HasPrefix(key, depPrefix) }

// resolveDep finds the backend a {backends.*} key names: the longest
// configured name that the key holds whole, followed by the end or a dot.
// It returns the index and the field path, or -1 and the name as written
// (up to the first dot) when no backend has that name.
func resolveDep(key string, names []string) (int, []string, string) {
	rest := key[len(depPrefix):]
	best, bestLen := -1, -1
	for i, n := range names {
		if (rest == n || strings.HasPrefix(rest, n+".")) && len(n) > bestLen {
			best, bestLen = i, len(n)
		}
	}
	if best < 0 {
		name, _, _ := strings.Cut(rest, ".")
		return -1, nil, name
	}
	var field []string
	if f := rest[len(names[best]):]; f != "" {
		field = strings.Split(f[1:], ".")
	}
	return best, field, names[best]
}

// graphError is a dependency problem of one backend: an unknown name, a
// self-reference, a cycle or a malformed field path. key is the placeholder
// at fault, so that the Caddyfile parser can point at its line.
type graphError struct {
	backend int
	key     string
	msg     string
}

func (e *graphError) Error() string { return e.msg }

// depKeys returns the {backends.*} placeholder keys of a URL template or a
// header value, in order. A header value holding "{backends." that does not
// split into placeholders is an error: its dependency could not be seen.
func depKeys(s string) ([]string, error) {
	if !strings.Contains(s, "{"+depPrefix) {
		return nil, nil
	}
	pieces, err := splitPlaceholders(s)
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, p := range pieces {
		if isDepKey(p.key) {
			keys = append(keys, p.key)
		}
	}
	return keys, nil
}

// backendDepKeys returns every {backends.*} key a backend's URL and header
// values use.
func backendDepKeys(b *Backend) ([]string, error) {
	keys, err := depKeys(b.URL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	for name, vals := range b.Header {
		for _, v := range vals {
			k, err := depKeys(v)
			if err != nil {
				return nil, fmt.Errorf("header %s: %w", name, err)
			}
			keys = append(keys, k...)
		}
	}
	return keys, nil
}

// dependencies builds the dependency graph: for each backend, the indexes
// of the backends it waits for (each once). keys[i] are the {backends.*}
// keys backend i uses. An unknown name, a self-reference, an empty field
// segment or a cycle is a *graphError.
func dependencies(names []string, keys [][]string) ([][]int, error) {
	deps := make([][]int, len(names))
	for i, ks := range keys {
		for _, k := range ks {
			d, field, name := resolveDep(k, names)
			switch {
			case d < 0:
				return nil, &graphError{i, k, fmt.Sprintf("backend %q: {%s}: unknown backend %q", names[i], k, name)}
			case d == i:
				return nil, &graphError{i, k, fmt.Sprintf("backend %q: {%s}: a backend cannot use its own response", names[i], k)}
			}
			if slices.Contains(field, "") {
				return nil, &graphError{i, k, fmt.Sprintf("backend %q: {%s}: empty field segment", names[i], k)}
			}
			if !slices.Contains(deps[i], d) {
				deps[i] = append(deps[i], d)
			}
		}
	}
	// Depth-first search for a cycle; state 1 = on the current path,
	// 2 = done.
	state := make([]int8, len(names))
	var path []int
	var visit func(i int) error
	visit = func(i int) error {
		state[i] = 1
		path = append(path, i)
		for _, d := range deps[i] {
			switch state[d] {
			case 1:
				start := 0
				for path[start] != d {
					start++
				}
				cycle := make([]string, 0, len(path)-start+1)
				for _, j := range path[start:] {
					cycle = append(cycle, fmt.Sprintf("%q", names[j]))
				}
				cycle = append(cycle, fmt.Sprintf("%q", names[d]))
				return &graphError{i, keyFor(keys[i], d, names), fmt.Sprintf("backend %q: dependency cycle %s", names[i], strings.Join(cycle, " -> "))}
			case 0:
				if err := visit(d); err != nil {
					return err
				}
			}
		}
		path = path[:len(path)-1]
		state[i] = 2
		return nil
	}
	for i := range names {
		if state[i] == 0 {
			if err := visit(i); err != nil {
				return nil, err
			}
		}
	}
	return deps, nil
}

// keyFor returns the first key of ks that names backend d.
func keyFor(ks []string, d int, names []string) string {
	for _, k := range ks {
		if i, _, _ := resolveDep(k, names); i == d {
			return k
		}
	}
	return ""
}

// errDependency is wrapped by every error a dependency value gives: the
// backend is not called and gets code `dependency`.
var errDependency = errors.New("dependency value")

// depValue returns the text a {backends.*} placeholder stands for: the
// scalar at field inside value (a backend's JSON after its target). A
// string gives its decoded text, a number its exact literal, a boolean
// true or false; a missing field, null, an object or an array is an error.
func depValue(value []byte, field []string) (string, error) {
	v := value
	if len(field) > 0 {
		var ok bool
		if v, ok = extractTarget(value, field); !ok {
			return "", fmt.Errorf("%w: not JSON", errDependency)
		}
	}
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return "", fmt.Errorf("%w: missing", errDependency)
	}
	switch c := v[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", fmt.Errorf("%w: bad string", errDependency)
		}
		return s, nil
	case c == 't' || c == 'f', c == '-' || '0' <= c && c <= '9':
		return string(v), nil
	case c == 'n':
		return "", fmt.Errorf("%w: missing or null", errDependency)
	default:
		return "", fmt.Errorf("%w: not a scalar", errDependency)
	}
}
