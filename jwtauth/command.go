package jwtauth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "jwt",
		Usage: "sign|inspect",
		Short: "Signs and inspects JSON Web Tokens for jwt_auth",
		Long: `
Tokens at the command line, for development and tests of jwt_auth.

'caddy jwt sign' mints a token signed with an HMAC secret or a PEM private
key. It refuses what jwt_auth would refuse to verify: secrets shorter than
the hash, RSA keys under 2048 bits, "none", an algorithm that does not fit
the key. It prints the token alone on stdout.

'caddy jwt inspect' decodes a token (an argument, or - for stdin) and prints
its header and claims. It does NOT check the signature.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(signCommand(), inspectCommand())
		},
	})
}

// maxKeyFileSize bounds what --key and --secret-file read (as Caddy's
// {file.*} placeholder does).
const maxKeyFileSize = 1 << 20

func signCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sign (--secret <text> | --secret-file <file> | --key <pem-file>) [flags]",
		Short: "Mints a signed token and prints it alone on stdout",
		Long: `
Mints a compact JWS for jwt_auth and prints it alone on stdout.

Key (exactly one):
  --secret <text>       HMAC secret: the text's raw bytes, as jwt_auth's secret
  --secret-file <file>  HMAC secret read from a file; one trailing newline is
                        removed, as jwt_auth's 'secret {file.<path>}' does
  --key <pem-file>      private key: RSA (PKCS#1 or PKCS#8), EC P-256/384/521
                        (SEC1 or PKCS#8) or Ed25519 (PKCS#8)

--alg defaults from the key: HS256 for secrets, RS256 for RSA, ES256/ES384/
ES512 by curve, EdDSA for Ed25519. Claims: iat is now; exp is now + --ttl
(--ttl 0 leaves exp out: jwt_auth then needs allow_no_exp; a negative --ttl
mints an expired token); --claim name=value takes the value as JSON when it
parses as JSON (numbers, true, {"a":1}, ["x","y"]), else as a string.
--claim may set exp, nbf or iat exactly (JSON numbers).`,
		Example: `  caddy jwt sign --secret "$GATEWAY_JWT_SECRET" --sub alice --claim role=admin
  caddy jwt sign --key ec-private.pem --kid k1 --iss https://issuer.example --aud api --ttl 15m
  caddy jwt sign --key rsa.pem --alg PS256 --sub svc --claim 'roles=["read","write"]'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := signOptionsFromFlags(cmd)
			if err != nil {
				return err
			}
			token, err := signToken(opts, time.Now())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), token)
			return err
		},
	}
	f := cmd.Flags()
	f.String("secret", "", "HMAC secret (its raw bytes)")
	f.String("secret-file", "", "file holding the HMAC secret (one trailing newline removed)")
	f.String("key", "", "PEM file holding a private key (RSA, EC or Ed25519)")
	f.String("alg", "", "signing algorithm (default from the key)")
	f.String("sub", "", "subject (sub claim)")
	f.String("iss", "", "issuer (iss claim)")
	f.StringArray("aud", nil, "audience (aud claim); repeat for several")
	f.String("kid", "", "key ID (kid header)")
	f.Duration("ttl", time.Hour, "lifetime: exp = now + ttl (0: no exp)")
	f.StringArray("claim", nil, "extra claim name=value (repeatable; JSON values taken as JSON)")
	return cmd
}

// signOptions is what `caddy jwt sign` was asked for.
type signOptions struct {
	secret     string
	secretFile string
	keyFile    string
	alg        string
	sub, iss   string
	aud        []string
	kid        string
	ttl        time.Duration
	ttlSet     bool
	claims     []string
}

func signOptionsFromFlags(cmd *cobra.Command) (signOptions, error) {
	f := cmd.Flags()
	var o signOptions
	var errs []error
	get := func(name string) string {
		s, err := f.GetString(name)
		errs = append(errs, err)
		return s
	}
	o.secret, o.secretFile, o.keyFile = get("secret"), get("secret-file"), get("key")
	o.alg, o.sub, o.iss, o.kid = get("alg"), get("sub"), get("iss"), get("kid")
	var err error
	o.aud, err = f.GetStringArray("aud")
	errs = append(errs, err)
	o.claims, err = f.GetStringArray("claim")
	errs = append(errs, err)
	o.ttl, err = f.GetDuration("ttl")
	errs = append(errs, err)
	o.ttlSet = f.Changed("ttl")
	return o, errors.Join(errs...)
}

// signToken builds and signs the token o describes, with now as iat.
func signToken(o signOptions, now time.Time) (string, error) {
	signer, verifyKey, err := loadSigningKey(o)
	if err != nil {
		return "", err
	}
	// The key must be one jwt_auth would accept: the same rules (HMAC
	// length per hash, RSA >= 2048 bits, supported curves) decide.
	implied, err := pinKey(verifyKey, "", allAlgSet)
	if err != nil {
		return "", fmt.Errorf("jwt_auth would refuse this key: %w", err)
	}
	a, err := chooseAlg(o.alg, implied, verifyKey)
	if err != nil {
		return "", err
	}

	claims, err := buildClaims(o, now)
	if err != nil {
		return "", err
	}
	hdr := map[string]string{"alg": a.String(), "typ": "JWT"}
	if o.kid != "" {
		hdr["kid"] = o.kid
	}
	hdrJSON, err := json.Marshal(hdr)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signingString := b64.EncodeToString(hdrJSON) + "." + b64.EncodeToString(payload)
	sig, err := algMethods[a].Sign(signingString, signer)
	if err != nil {
		return "", fmt.Errorf("signing with %s: %w", a, err)
	}
	return signingString + "." + b64.EncodeToString(sig), nil
}

// chooseAlg returns the --alg asked for, checked against the algorithms the
// key allows, or the key's default: the first algorithm it allows (HS256,
// RS256, the ES algorithm of its curve, EdDSA).
func chooseAlg(name string, implied algSet, key any) (alg, error) {
	if name == "" {
		for a := range numAlgs {
			if implied.has(a) {
				return a, nil
			}
		}
		return 0, errors.New("the key allows no algorithm")
	}
	if strings.EqualFold(name, "none") {
		return 0, errors.New(`--alg none: unsigned tokens are never accepted by jwt_auth`)
	}
	a, ok := parseAlg(name)
	if !ok {
		return 0, fmt.Errorf("--alg %q: unsupported algorithm (names are case-sensitive; supported: %s)", name, allAlgSet)
	}
	if !implied.has(a) {
		if b, isSecret := key.([]byte); isSecret && hmacAlgs.has(a) {
			return 0, fmt.Errorf("--alg %s: jwt_auth would refuse this key: the HMAC secret is %d bytes; %s requires at least %d", a, len(b), a, hmacMinLen(a))
		}
		return 0, fmt.Errorf("--alg %s does not fit %s (it allows %s)", a, keyKind(key), implied)
	}
	return a, nil
}

func keyKind(key any) string {
	switch k := key.(type) {
	case []byte:
		return "a secret"
	case *rsa.PublicKey:
		return "an RSA key"
	case *ecdsa.PublicKey:
		return "a " + k.Curve.Params().Name + " EC key"
	case ed25519.PublicKey:
		return "an Ed25519 key"
	}
	return fmt.Sprintf("%T", key)
}

// loadSigningKey returns the key to sign with and its verification
// counterpart ([]byte for both with a secret).
func loadSigningKey(o signOptions) (signer, verifyKey any, err error) {
	n := 0
	for _, s := range []string{o.secret, o.secretFile, o.keyFile} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, nil, errors.New("give exactly one of --secret, --secret-file, --key")
	}
	switch {
	case o.secret != "":
		return []byte(o.secret), []byte(o.secret), nil
	case o.secretFile != "":
		data, err := readBounded(o.secretFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--secret-file: %w", err)
		}
		data = bytes.TrimSuffix(data, []byte("\n"))
		data = bytes.TrimSuffix(data, []byte("\r"))
		if len(data) == 0 {
			return nil, nil, fmt.Errorf("--secret-file %s: empty secret", o.secretFile)
		}
		return data, data, nil
	}
	data, err := readBounded(o.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--key: %w", err)
	}
	priv, err := parsePrivateKeyPEM(data)
	if err != nil {
		return nil, nil, fmt.Errorf("--key %s: %w", o.keyFile, err)
	}
	return priv, priv.Public(), nil
}

func readBounded(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxKeyFileSize)
	}
	return data, nil
}

// parsePrivateKeyPEM reads the first private key in PEM data: PKCS#1 ("RSA
// PRIVATE KEY"), SEC1 ("EC PRIVATE KEY") or PKCS#8 ("PRIVATE KEY": RSA, EC,
// Ed25519). Other blocks before it (such as "EC PARAMETERS") are skipped.
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	sawPublic := false
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var key any
		var err error
		switch block.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("the private key is encrypted; decrypt it first (openssl pkey -in key.pem -out plain.pem)")
		case "PUBLIC KEY", "RSA PUBLIC KEY", "CERTIFICATE":
			sawPublic = true
			continue
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", block.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			return k, nil
		case *ecdsa.PrivateKey:
			return k, nil
		case ed25519.PrivateKey:
			return k, nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T (RSA, EC and Ed25519 are supported)", key)
		}
	}
	if sawPublic {
		return nil, errors.New("holds a public key or certificate, not a private key: sign needs the private key")
	}
	return nil, errors.New("no PEM private key found")
}

// flagClaims are the claims that have their own flag.
var flagClaims = map[string]string{"sub": "--sub", "iss": "--iss", "aud": "--aud"}

// buildClaims assembles the claims: iat (now), exp (now + ttl), the flag
// claims, then every --claim. A --claim may set iat, and exp when --ttl is
// not given; a claim given twice is an error.
func buildClaims(o signOptions, now time.Time) (map[string]any, error) {
	claims := map[string]any{"iat": now.Unix()}
	if o.ttl != 0 {
		claims["exp"] = now.Add(o.ttl).Unix()
	}
	if o.sub != "" {
		claims["sub"] = o.sub
	}
	if o.iss != "" {
		claims["iss"] = o.iss
	}
	switch len(o.aud) {
	case 0:
	case 1:
		claims["aud"] = o.aud[0]
	default:
		claims["aud"] = o.aud
	}
	seen := make(map[string]bool, len(o.claims))
	for _, c := range o.claims {
		name, raw, ok := strings.Cut(c, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--claim %q: want name=value", c)
		}
		if seen[name] {
			return nil, fmt.Errorf("--claim %s given twice", name)
		}
		seen[name] = true
		if flag, ok := flagClaims[name]; ok && claims[name] != nil {
			return nil, fmt.Errorf("--claim %s and %s both set %s: give one", name, flag, name)
		}
		if name == "exp" && o.ttlSet {
			return nil, errors.New("--claim exp and --ttl both set exp: give one")
		}
		var v any = raw // not JSON: the text itself
		if json.Valid([]byte(raw)) {
			dec := json.NewDecoder(strings.NewReader(raw))
			dec.UseNumber() // keep the literal: 9007199254740993 stays exact
			if err := dec.Decode(&v); err != nil {
				return nil, fmt.Errorf("--claim %s: %w", name, err)
			}
		}
		switch name {
		case "exp", "nbf", "iat":
			if _, isNum := v.(json.Number); !isNum {
				return nil, fmt.Errorf("--claim %s=%s: must be a JSON number (seconds since the epoch); jwt_auth refuses anything else", name, raw)
			}
		}
		claims[name] = v
	}
	return claims, nil
}

func inspectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "inspect <token>|-",
		Short: "Prints a token's header and claims; does NOT check the signature",
		Long: `
Decodes a compact JWS (an argument, or - to read it from stdin; a leading
"Bearer " is ignored) and prints its header and claims as indented JSON,
then exp, nbf and iat as UTC times and relative to now.

The signature is NOT checked: inspect needs no key and says nothing about
whether jwt_auth would accept the token. A malformed token is an error
(exit status 1).`,
		Example: `  caddy jwt inspect eyJhbGciOi...
  echo "$TOKEN" | caddy jwt inspect -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token := args[0]
			if token == "-" {
				data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxTokenLen+64))
				if err != nil {
					return fmt.Errorf("reading stdin: %w", err)
				}
				token = string(data)
			}
			out, err := inspectToken(token, time.Now())
			if err != nil {
				return err
			}
			_, err = io.WriteString(cmd.OutOrStdout(), out)
			return err
		},
	}
}

// inspectToken renders a token's header, claims and time claims. It checks
// the token's form only, never its signature.
func inspectToken(token string, now time.Time) (string, error) {
	token = strings.TrimSpace(token)
	if len(token) > 7 && strings.EqualFold(token[:7], "bearer ") {
		token = strings.TrimSpace(token[7:])
	}
	if token == "" {
		return "", errors.New("malformed token: empty input")
	}
	hdrB64, payloadB64, _, err := splitCompact(token)
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, explainShape(token))
	}
	hdrJSON, err := decodeJSONSegment("header", hdrB64)
	if err != nil {
		return "", err
	}
	payload, err := decodeJSONSegment("claims set", payloadB64)
	if err != nil {
		return "", err
	}
	claims, err := decodeClaims(payload)
	if err != nil {
		return "", errors.New("malformed token: the claims set is not a JSON object")
	}

	var b strings.Builder
	b.WriteString("Header:\n")
	writeIndented(&b, hdrJSON)
	b.WriteString("Claims:\n")
	writeIndented(&b, payload)
	var times []string
	for _, name := range [...]string{"exp", "nbf", "iat"} {
		v, ok := claims[name]
		if !ok {
			continue
		}
		times = append(times, fmt.Sprintf("  %s  %s", name, timeLine(name, v, now)))
	}
	if len(times) > 0 {
		b.WriteString("Times:\n")
		b.WriteString(strings.Join(times, "\n"))
		b.WriteString("\n")
	}
	b.WriteString("Signature: NOT checked (inspect only decodes the token; jwt_auth verifies it with the key).\n")
	return b.String(), nil
}

// explainShape says what is wrong with a token that is not a compact JWS.
func explainShape(token string) string {
	if len(token) > maxTokenLen {
		return fmt.Sprintf("%d bytes, jwt_auth reads at most %d", len(token), maxTokenLen)
	}
	segs := strings.Count(token, ".") + 1
	switch {
	case strings.HasPrefix(token, "{"):
		return "JSON serialisation is not supported; a compact JWS is three base64url segments separated by dots"
	case segs == 5:
		return "5 segments: an encrypted token (JWE), not a signed one"
	case segs != 3:
		return fmt.Sprintf("%d segment(s); a compact JWS has three base64url segments separated by dots", segs)
	case strings.ContainsAny(token, "=+/ \t\r\n"):
		return "a compact JWS uses base64url without padding or whitespace ('=', '+', '/' and spaces are not allowed)"
	}
	return "a compact JWS has three non-empty base64url segments separated by dots"
}

func decodeJSONSegment(what, seg string) ([]byte, error) {
	data, err := b64.DecodeString(seg)
	if err != nil {
		return nil, fmt.Errorf("malformed token: the %s is not valid base64url", what)
	}
	trimmed := bytes.TrimSpace(data)
	if !json.Valid(data) || len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("malformed token: the %s is not a JSON object", what)
	}
	return data, nil
}

// writeIndented writes JSON indented, member order and number literals as
// in the token, with any character that a terminal could act on (controls,
// invalid UTF-8) escaped.
func writeIndented(b *strings.Builder, data []byte) {
	var buf bytes.Buffer
	if err := json.Indent(&buf, data, "", "  "); err != nil {
		buf.Reset()
		buf.Write(data)
	}
	s := buf.String()
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\ufffd`)
		case r == '\n' || unicode.IsPrint(r):
			b.WriteString(s[i : i+size])
		case r > 0xffff:
			r1, r2 := utf16Pair(r)
			fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(b, `\u%04x`, r)
		}
		i += size
	}
	b.WriteString("\n")
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// timeLine renders a time claim as an RFC 3339 UTC time and relative to now.
func timeLine(name string, v any, now time.Time) string {
	num, ok := v.(json.Number)
	if !ok {
		return "not a JSON number: jwt_auth refuses this token"
	}
	f, err := strconv.ParseFloat(num.String(), 64)
	if err != nil || f > 1<<52 || f < -(1<<52) {
		return num.String() + " (out of range)"
	}
	sec := int64(f)
	t := time.Unix(sec, int64((f-float64(sec))*1e9)).UTC()
	d := t.Sub(now)
	var rel string
	switch name {
	case "exp":
		if d > 0 {
			rel = "expires in " + humanDuration(d)
		} else {
			rel = "expired " + humanDuration(-d) + " ago"
		}
	case "nbf":
		if d > 0 {
			rel = "not valid for another " + humanDuration(d)
		} else {
			rel = "valid since " + humanDuration(-d) + " ago"
		}
	default:
		if d > 0 {
			rel = "issued " + humanDuration(d) + " in the future"
		} else {
			rel = "issued " + humanDuration(-d) + " ago"
		}
	}
	return t.Format(time.RFC3339) + "  (" + rel + ")"
}

// humanDuration renders d by its two largest units, dropping a zero second
// unit: 9m58s, 2h, 2h5m, 3d4h, 0s.
func humanDuration(d time.Duration) string {
	d = d.Round(time.Second)
	units := [...]time.Duration{24 * time.Hour, time.Hour, time.Minute, time.Second}
	const names = "dhms"
	for i, u := range units[:len(units)-1] {
		if d < u {
			continue
		}
		s := strconv.FormatInt(int64(d/u), 10) + names[i:i+1]
		if n := (d % u) / units[i+1]; n > 0 {
			s += strconv.FormatInt(int64(n), 10) + names[i+1:i+2]
		}
		return s
	}
	return strconv.FormatInt(int64(d/time.Second), 10) + "s"
}
