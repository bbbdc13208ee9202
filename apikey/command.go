package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/caddygateway/caddy-gateway/internal/identity"
	"github.com/spf13/cobra"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "apikey",
		Usage: "new|hash",
		Short: "Makes API keys and their digests for api_key",
		Long: `
API keys for api_key at the command line.

'caddy apikey new' makes a new random key and prints it on its first line,
and its key store entry (JSON, holding only the key's SHA-256 digest) on its
second. Give the key to the client; put the entry in the keys_file.

'caddy apikey hash' reads a key made elsewhere from stdin and prints its
SHA-256 digest (hex), for a keys_file entry or a 'key' line.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(newCommand(), hashCommand())
		},
	})
}

const (
	defaultPrefix = "cgw_"
	keyBytes      = 32
	// minKeyLen and maxKeyLen bound what `caddy apikey hash` accepts.
	minKeyLen = 16
	maxKeyLen = 4096
)

func newCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "new [--prefix <p>] [--id <id>] [--identity <name>] [--claim <k>=<v>]... [--expires <t>]",
		Short: "Makes a new key: the key on line 1, its key store entry on line 2",
		Long: `
Makes a new API key: 32 random bytes (crypto/rand), base64url without
padding, after --prefix (default cgw_; --prefix '' for none). Prints the key
alone on the first line and its key store entry, one line of JSON holding
the key's SHA-256 digest and never the key, on the second.

--id names the entry (default: key-<date>-<random>, never derived from the
key); --identity is the consumer it authenticates (default: the id);
--claim name=value (repeatable) takes the value as JSON when it parses as
JSON (numbers, true, {"a":1}, ["x","y"]), else as a string; the names id
and key_id are reserved. --expires is an RFC 3339 time or a duration from
now (720h, 90d).`,
		Example: `  caddy apikey new --id ci-2026-11 --identity ci-bot --claim plan=gold --expires 90d
  caddy apikey new --prefix acme_live_ --identity acme | tail -n 1 >> entries.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := cmd.Flags()
			prefix, err1 := f.GetString("prefix")
			id, err2 := f.GetString("id")
			ident, err3 := f.GetString("identity")
			claims, err4 := f.GetStringArray("claim")
			expires, err5 := f.GetString("expires")
			if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
				return err
			}
			key, line, err := newKey(rand.Reader, time.Now(), prefix, id, ident, claims, expires)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n%s\n", key, line)
			return err
		},
	}
	f := cmd.Flags()
	f.String("prefix", defaultPrefix, "text before the random part of the key")
	f.String("id", "", "entry id (default key-<date>-<random>)")
	f.String("identity", "", "identity the key authenticates (default: the id)")
	f.StringArray("claim", nil, "claim name=value (repeatable; JSON values taken as JSON)")
	f.String("expires", "", "expiry: RFC 3339 time, or a duration from now (720h, 90d)")
	return cmd
}

// newKey makes a key from random and its store entry as one line of JSON.
func newKey(random io.Reader, now time.Time, prefix, id, ident string, claims []string, expires string) (string, string, error) {
	if identity.HasControl(prefix) || strings.ContainsAny(prefix, " \t") {
		return "", "", errors.New("--prefix: must not hold spaces or control characters")
	}
	var b [keyBytes]byte
	if _, err := io.ReadFull(random, b[:]); err != nil {
		return "", "", fmt.Errorf("reading random bytes: %w", err)
	}
	key := prefix + base64.RawURLEncoding.EncodeToString(b[:])
	if id == "" {
		var r [4]byte
		if _, err := io.ReadFull(random, r[:]); err != nil {
			return "", "", fmt.Errorf("reading random bytes: %w", err)
		}
		id = "key-" + now.UTC().Format("20060102") + "-" + hex.EncodeToString(r[:])
	}
	if ident == "" {
		ident = id
	}
	sum := sha256.Sum256([]byte(key))
	k := Key{ID: id, SHA256: hex.EncodeToString(sum[:]), Identity: ident}
	for _, c := range claims {
		name, value, ok := strings.Cut(c, "=")
		if !ok || name == "" {
			return "", "", fmt.Errorf("--claim %q: want name=value", c)
		}
		if k.Claims == nil {
			k.Claims = map[string]json.RawMessage{}
		}
		if _, dup := k.Claims[name]; dup {
			return "", "", fmt.Errorf("--claim %s given twice", name)
		}
		k.Claims[name] = claimValue(value)
	}
	if expires != "" {
		t, err := time.Parse(time.RFC3339, expires)
		if err != nil {
			d, derr := caddy.ParseDuration(expires)
			if derr != nil || d <= 0 {
				return "", "", fmt.Errorf("--expires %q: not an RFC 3339 time nor a positive duration", expires)
			}
			t = now.Add(d)
		}
		k.Expires = t.UTC().Format(time.RFC3339)
	}
	// The entry must be one api_key accepts.
	if _, _, err := compileKey(&k, nil); err != nil {
		return "", "", err
	}
	line, err := json.Marshal(k)
	if err != nil {
		return "", "", err
	}
	return key, string(line), nil
}

func hashCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hash",
		Short: "Reads a key from stdin and prints its SHA-256 digest (hex)",
		Long: `
Reads one API key from stdin (surrounding whitespace, such as echo's newline,
is not part of it: a header can never carry it) and prints the SHA-256
digest of its bytes in hex, for the sha256 member of a key store entry or a
'key' line. It refuses keys shorter than 16 bytes: api_key is meant for
random machine secrets, not passwords (see 'caddy apikey new').`,
		Example: `  printf %s "$PARTNER_KEY" | caddy apikey hash`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxKeyLen+64))
			if err != nil {
				return fmt.Errorf("reading stdin: %w", err)
			}
			sum, err := hashKey(data)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), sum)
			return err
		},
	}
}

// hashKey returns the hex digest of a key read from stdin.
func hashKey(data []byte) (string, error) {
	key := strings.TrimSpace(string(data))
	switch {
	case len(key) < minKeyLen:
		return "", fmt.Errorf("key too short: %d bytes, at least %d (use a random key: caddy apikey new)", len(key), minKeyLen)
	case len(key) > maxKeyLen:
		return "", fmt.Errorf("key too long: more than %d bytes", maxKeyLen)
	case identity.HasControl(key):
		return "", errors.New("key holds a control character: no header can carry it")
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:]), nil
}
