package apikey

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/identity"
	"github.com/caddygateway/caddy-gateway/internal/registry"
)

// Key is one API key entry, in the key store file (`keys_file`) or inline
// (`key` lines). The key itself is never stored: only the SHA-256 digest
// of its exact bytes.
type Key struct {
	// ID names the credential in logs, errors and the admin API; it is
	// never secret. Required, unique within the handler, no control
	// characters. {http.auth.user.key_id}.
	ID string `json:"id"`

	// SHA256 is the SHA-256 digest of the key's exact bytes: 64 hex
	// digits, either case (`caddy apikey hash` prints it). Required,
	// unique within the handler.
	SHA256 string `json:"sha256"`

	// Identity is who the key authenticates: {http.auth.user.id} and the
	// access log's user_id. Required, no control characters. Several keys
	// may share one identity (rotation).
	Identity string `json:"identity,omitempty"`

	// Claims are extra facts about the consumer, any JSON values, served
	// as {http.auth.user.<claim-path>} with jwt_auth's text rules (exact
	// numbers, arrays of scalars joined with ", ", objects as compact
	// JSON; null is absent). The names id and key_id are reserved.
	Claims map[string]json.RawMessage `json:"claims,omitempty"`

	// NotBefore (RFC 3339): the key is refused before this instant.
	// Checked on every request, without leeway. Default: no bound.
	NotBefore string `json:"not_before,omitempty"`

	// Expires (RFC 3339): the key is refused from this instant on.
	// Checked on every request, without leeway. Default: never.
	Expires string `json:"expires,omitempty"`

	// Disabled refuses the key (kept in the store, e.g. while a leak is
	// investigated). Default: false.
	Disabled bool `json:"disabled,omitempty"`
}

// maxStoreSize bounds the key store file.
const maxStoreSize = 32 << 20

// readStore reads and parses a key store file. Errors name the file, and
// the entry when one is at fault; they never hold a digest.
func readStore(name string) ([]Key, error) {
	f, err := os.Open(name) //nolint:gosec // the path is the operator's config
	if err != nil {
		return nil, fmt.Errorf("keys_file %s: %w", name, errors.Unwrap(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStoreSize+1))
	if err != nil {
		return nil, fmt.Errorf("keys_file %s: %w", name, err)
	}
	if len(data) > maxStoreSize {
		return nil, fmt.Errorf("keys_file %s: larger than %d MiB", name, maxStoreSize>>20)
	}
	keys, err := parseStore(data)
	if err != nil {
		return nil, fmt.Errorf("keys_file %s: %w", name, err)
	}
	return keys, nil
}

// parseStore parses a key store: {"keys": [<entry>...]}, strictly. An
// unknown or repeated member, trailing data, or a value of the wrong type
// is an error naming the entry.
func parseStore(data []byte) ([]Key, error) {
	if err := checkJSON(data); err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return nil, errors.New(`not a JSON object {"keys": [...]}`)
	}
	for name := range top {
		if name != "keys" {
			return nil, fmt.Errorf("unknown member %q (the store holds only \"keys\")", name)
		}
	}
	raw, ok := top["keys"]
	if !ok {
		return nil, errors.New(`no "keys" member`)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal(raw, &entries); err != nil || (entries == nil && !bytes.Equal(bytes.TrimSpace(raw), []byte("[]"))) {
		return nil, errors.New(`"keys" is not an array`)
	}
	keys := make([]Key, len(entries))
	for i, e := range entries {
		dec := json.NewDecoder(bytes.NewReader(e))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&keys[i]); err != nil {
			return nil, fmt.Errorf("%s: %w", entryName(i, peekID(e)), describeJSONError(err))
		}
	}
	return keys, nil
}

// peekID returns the id of an entry that may not decode, for its error.
func peekID(e json.RawMessage) string {
	var v struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(e, &v)
	if identity.HasControl(v.ID) {
		return ""
	}
	return v.ID
}

// entryName names entry i (from 1) in errors, with its id when known.
func entryName(i int, id string) string {
	if id == "" {
		return fmt.Sprintf("entry %d", i+1)
	}
	return fmt.Sprintf("entry %d (id %q)", i+1, id)
}

// describeJSONError words a decoding error without quoting values (which
// could be a digest).
func describeJSONError(err error) error {
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		return fmt.Errorf("member %q: %s is not of type %s", te.Field, te.Value, te.Type)
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return fmt.Errorf("unknown member %s", rest)
	}
	return errors.New(strings.TrimPrefix(msg, "json: "))
}

// checkJSON checks that data is one JSON value and that no object in it
// repeats a member name (encoding/json would keep the last silently).
// Syntax errors are reported by line and column, never quoting the text.
func checkJSON(data []byte) error {
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		if se, ok := errors.AsType[*json.SyntaxError](err); ok {
			line, col := position(data, se.Offset)
			return fmt.Errorf("not JSON: syntax error at line %d, column %d", line, col)
		}
		return errors.New("not JSON")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	return checkValue(dec, nil)
}

// checkValue walks one value, refusing repeated member names. path names
// the entry being walked for the error.
func checkValue(dec *json.Decoder, path []string) error {
	tok, err := dec.Token()
	if err != nil {
		return errors.New("not JSON")
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return errors.New("not JSON")
			}
			name, _ := k.(string)
			if seen[name] {
				return fmt.Errorf("%smember %q appears twice", where(path), name)
			}
			seen[name] = true
			if err := checkValue(dec, append(path, name)); err != nil {
				return err
			}
		}
		_, err = dec.Token()
	case json.Delim('['):
		for i := 0; dec.More(); i++ {
			if err := checkValue(dec, append(path, fmt.Sprint(i))); err != nil {
				return err
			}
		}
		_, err = dec.Token()
	}
	if err != nil {
		return errors.New("not JSON")
	}
	return nil
}

// where names the store entry a path lies in: "entry 3: " for a path
// under keys[2], else "".
func where(path []string) string {
	if len(path) >= 2 && path[0] == "keys" {
		var i int
		if _, err := fmt.Sscan(path[1], &i); err == nil {
			return entryName(i, "") + ": "
		}
	}
	return ""
}

func position(data []byte, offset int64) (line, col int) {
	line, col = 1, 1
	for i := int64(0); i < offset && i < int64(len(data)); i++ {
		if data[i] == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return line, col
}

// entry is a compiled key: what a request needs once its digest matched.
type entry struct {
	id, identity       string
	notBefore, expires time.Time // zero: no bound
	disabled           bool

	// refusal, when set, refuses the key: a value mapped to a header holds
	// a control character.
	refusal error

	headerValues []string                 // parallel to Handler.identity; "" is not set
	placeholder  func(string) (any, bool) // {http.auth.user.*}: identity as id, id as key_id, claims
	admin        registry.APIKeyEntry
}

// digestLen is the length of a SHA-256 digest.
const digestLen = 32

// compileKey checks one entry and compiles it. name names it in errors.
func compileKey(k *Key, headers identity.Headers) (*entry, [digestLen]byte, error) {
	var digest [digestLen]byte
	switch {
	case k.ID == "":
		return nil, digest, errors.New("empty id")
	case identity.HasControl(k.ID):
		return nil, digest, errors.New("id holds a control character")
	}
	if len(k.SHA256) != 2*digestLen {
		return nil, digest, errors.New("sha256 is not 64 hex digits")
	}
	if _, err := hex.Decode(digest[:], []byte(k.SHA256)); err != nil {
		return nil, digest, errors.New("sha256 is not 64 hex digits")
	}
	switch {
	case k.Identity == "":
		return nil, digest, errors.New("empty identity")
	case identity.HasControl(k.Identity):
		return nil, digest, errors.New("identity holds a control character")
	}
	e := &entry{id: k.ID, identity: k.Identity, disabled: k.Disabled}
	fields := identity.Fields{}
	for name, raw := range k.Claims {
		switch name {
		case "":
			return nil, digest, errors.New("claims: empty claim name")
		case "id", "key_id":
			return nil, digest, fmt.Errorf("claims: %q is reserved ({http.auth.user.%s} is the key's %s)", name, name, map[string]string{"id": "identity", "key_id": "id"}[name])
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, digest, fmt.Errorf("claims: %q is not a JSON value", name)
		}
		fields[name] = v
	}
	fields["id"] = k.Identity
	fields["key_id"] = k.ID
	var err error
	if e.notBefore, err = parseTime(k.NotBefore); err != nil {
		return nil, digest, fmt.Errorf("not_before: %w", err)
	}
	if e.expires, err = parseTime(k.Expires); err != nil {
		return nil, digest, fmt.Errorf("expires: %w", err)
	}
	if !e.notBefore.IsZero() && !e.expires.IsZero() && !e.expires.After(e.notBefore) {
		return nil, digest, errors.New("expires is not after not_before")
	}
	if len(headers) > 0 {
		e.headerValues = make([]string, len(headers))
		for i, h := range headers {
			if v, ok := identity.Lookup(fields, h.Path); ok {
				e.headerValues[i], _ = identity.Text(v)
				if identity.HasControl(e.headerValues[i]) {
					e.refusal = errControl
					e.headerValues = nil
					break
				}
			}
		}
	}
	e.placeholder = fields.Placeholder
	e.admin = registry.APIKeyEntry{ID: k.ID, Identity: k.Identity, Disabled: k.Disabled}
	if !e.notBefore.IsZero() {
		t := e.notBefore
		e.admin.NotBefore = &t
	}
	if !e.expires.IsZero() {
		t := e.expires
		e.admin.Expires = &t
	}
	return e, digest, nil
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time", s)
	}
	return t, nil
}
